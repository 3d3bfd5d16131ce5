"""`python -m jetspec_core train calibrate`: fit a head's tree-score calibration on held-out prompts.

The target answers prompts of the offline generator greedily; the head proposes at every position of
each answer (`bench.replay.collect`); each depth's top-K candidates, counted while the target's own
path so far is in the top-K tree, fit `calibration.fit`. Prompts found in `--exclude` files (the
training sets) are skipped, so the fit is on prompts the head never trained on. Writes
`calibration.json` into the head folder (or `--out`), which the decoders then use by default
(`--no-calibration` turns it off). The benchmark prompts (HumanEval, MT-Bench) are never used.

    python -m jetspec_core train calibrate --count 3000 --seed 77 --limit 72 --exclude p8.jsonl p9.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from ..calibration import FILE, count_pairs, fit, weights_sha256
from ..errors import JetSpecError

FIT_WIDTH = 32  # candidates per depth counted (as many as the widest tree the app builds)


def answer_targets(d) -> torch.Tensor:
    """(A, D): the target's own token at each depth after each anchor of a `Drafts` (-1 past the end)."""
    A, D = d.logp.shape[0], d.logp.shape[1]
    n = len(d.ids) - 1
    ids = torch.tensor(list(d.ids) + [-1] * (D + 1))
    pos = torch.arange(d.p, d.p + A)[:, None] + torch.arange(1, D + 1)[None, :]
    return torch.where(pos <= n, ids[pos], torch.full_like(pos, -1))


def fit_drafts(drafts: list, width: int = FIT_WIDTH, meta: dict | None = None):
    """A Calibration from collected `Drafts` (their top-`width` candidates per depth)."""
    total = None
    for d in drafts:
        if d.logp.shape[0] == 0:
            continue
        st = count_pairs(d.logp[..., :width], d.tokens[..., :width], answer_targets(d))
        total = st if total is None else tuple(x + y for x, y in zip(total, st))
    if total is None:
        raise JetSpecError("calibration: no anchors collected (every answer was empty)")
    return fit(*total, meta=meta)


def _pick_prompts(a: argparse.Namespace) -> tuple[list, dict]:
    from .prompts import build_prompts, load_prompts

    if a.prompts:
        prompts, digest = load_prompts(a.prompts)
        source = {"prompts_file": str(a.prompts), "prompts_sha256": digest}
    else:
        prompts = build_prompts(a.count, a.seed)
        source = {"generator": f"train prompts --count {a.count} --seed {a.seed}"}
    seen: set[str] = set()
    for path in a.exclude or []:
        seen |= {p.text for p in load_prompts(path)[0]}
    fresh = [p for p in prompts if p.text not in seen]
    random.Random(a.seed).shuffle(fresh)
    if not fresh[: a.limit]:
        raise JetSpecError("train calibrate: no prompts left after --exclude")
    source.update(offered=len(prompts), excluded=len(prompts) - len(fresh), used=min(a.limit, len(fresh)))
    return fresh[: a.limit], source


def cmd_calibrate(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..bench.replay import collect, replay
    from ..drafter import HeadDrafter
    from ..loading import DEFAULT_HEAD, load_head
    from ..target import load_target

    folder = Path(a.head or DEFAULT_HEAD)
    if a.limit < 1 or a.max_new_tokens < 1:
        raise JetSpecError("--limit and --max-new-tokens must be positive")
    prompts, source = _pick_prompts(a)                       # before the slow loads
    target = load_target(a.target, device=a.device, dtype=a.dtype)
    head, _ = load_head(str(folder), target)
    head.calibration = None                                  # fit on the raw log-probs
    drafter = HeadDrafter(head, target.model)
    t0 = time.perf_counter()
    drafts = []
    bar = tqdm(prompts, desc="calibrate", unit="prompt", disable=a.no_progress)
    for p in bar:
        drafts.append(collect(target, drafter, target.encode_prompt(p.text), a.max_new_tokens, p.kind))
        bar.set_postfix(anchors=sum(d.logp.shape[0] for d in drafts))
    meta = {"head_sha256": weights_sha256(folder), "width": FIT_WIDTH, "max_new_tokens": a.max_new_tokens,
            "anchors": sum(d.logp.shape[0] for d in drafts), "device": str(target.device),
            "dtype": str(target.model.dtype).replace("torch.", ""), "seconds": 0.0, **source,
            "args": {k: v for k, v in vars(a).items() if k not in ("func", "command", "train_command")}}
    cal = fit_drafts(drafts, meta=meta)
    # in-sample check: τ of greedy replays over the same answers, raw against calibrated scores
    vocab = target.shape.vocab_size
    check = {}
    for builder, width, budget in (("topb", 16, 64), ("topb", 32, 256)):
        taus = []
        for c in (None, cal):
            gains = [g for d in drafts for g in replay(d, builder, width, budget, vocab=vocab, calibration=c)]
            taus.append(round(sum(gains) / max(1, len(gains)), 3))
        check[f"{builder}:{width} budget {budget}"] = {"raw": taus[0], "calibrated": taus[1]}
    cal.meta["in_sample_tau"] = check
    cal.meta["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out) if a.out else folder
    out.mkdir(parents=True, exist_ok=True)
    path = cal.save(out)
    print(json.dumps({"out": str(path), "prompts": len(drafts), "anchors": meta["anchors"],
                      "seconds": cal.meta["seconds"], "in_sample_tau": check}))
    return 0


def register(ts) -> None:
    c = ts.add_parser("calibrate", help=f"fit the head's tree-score calibration ({FILE}) on held-out prompts")
    c.add_argument("--head", default=None, help="head folder (default: the shipped assets/head)")
    c.add_argument("--out", default=None, help=f"folder for {FILE} (default: the head folder)")
    c.add_argument("--prompts", default=None, help="prompt JSONL (default: build --count prompts with --seed)")
    c.add_argument("--count", type=int, default=3000, help="prompts to build when --prompts is not given")
    c.add_argument("--seed", type=int, default=77, help="prompt set seed and shuffle")
    c.add_argument("--exclude", nargs="*", default=[], help="prompt JSONL files to skip (the training sets)")
    c.add_argument("--limit", type=int, default=72, help="prompts answered")
    c.add_argument("--max-new-tokens", type=int, default=160)
    c.add_argument("--target", default=None, help="HF model folder (default: embedded SmolLM2-135M-Instruct)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    c.add_argument("--dtype", default="float32", help="float32 (default: the fp32 reference) or bfloat16")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_calibrate)
