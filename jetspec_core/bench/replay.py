"""`python -m jetspec_core bench replay`: compare tree builders, widths and budgets offline.

Greedy decoding is lossless, so the committed text is the target's plain greedy output whatever
the tree was, and the draft head's proposal at a position depends only on that text. So one
plain decoding per prompt plus one head proposal at every position of it (`collect`) is enough
to replay any greedy JetSpec configuration (`replay`): build the round's tree from the recorded
drafts, walk it along the target's own next tokens, advance by the accepted length plus the
bonus token. Hundreds of configurations cost seconds instead of a decoding run each; τ equals
what the decoder gets up to float noise in the hidden states (a test checks it round for round
in fp32). It measures acceptance only: a round's cost depends on the device (`bench speed`).

    python -m jetspec_core bench replay --data-dir .benchdata --limit 8 --max-new-tokens 192 \\
        --budgets 16,32,64,256 --configs accum_logp:7,topb:7,topb:16 [--cache drafts.pt]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from ..config import BUILDERS, DecodeConfig
from ..errors import JetSpecError
from ..tree import build_tree

TOP = 32  # log-probs kept per depth and position (builders use at most `width` of them)


@dataclass
class Drafts:
    """One prompt: ids = prompt + plain greedy answer; `p` = the first anchor (the last prompt
    token); top-TOP log-probs and tokens of the head's proposal at anchors p .. len(ids) − 2."""
    dataset: str
    ids: list[int]
    p: int
    logp: torch.Tensor    # (A, D, TOP) float32
    tokens: torch.Tensor  # (A, D, TOP) int64


def collect(target, drafter, prompt_ids: list[int], max_new_tokens: int, dataset: str = "") -> Drafts:
    """Plain greedy answer, then one forward over prompt + answer for the tapped hidden states, then
    the head's proposal at every anchor, feeding the context one row at a time as decoding does."""
    from ..decoder import Decoder

    s, _ = Decoder(target, None).generate(prompt_ids, DecodeConfig(mode="plain", max_new_tokens=max_new_tokens))
    ids = list(prompt_ids) + s.token_ids
    n, p = len(ids) - 1, len(prompt_ids) - 1
    dev, m = target.device, target.model
    cache = m.new_cache(n + 1)
    causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
    _, hidden = m(torch.tensor(ids[:-1], device=dev), torch.arange(n, device=dev), cache, causal, drafter.taps)
    drafter.start(hidden[:p] if p else None, ids[:p + 1])
    logp, tokens = [], []
    for a in range(p, n):                       # anchor ids[a] at position a, context rows 0 .. a − 1
        lp = drafter.propose(ids[a], ids[:a + 1])
        v, i = torch.topk(lp.float(), min(TOP, lp.shape[-1]), dim=-1)
        logp.append(v.cpu())
        tokens.append(i.cpu())
        drafter.extend(hidden[a:a + 1], ids[:a + 2])
    empty = torch.zeros(0, drafter.max_depth, TOP)
    return Drafts(dataset, ids, p, torch.stack(logp) if logp else empty,
                  torch.stack(tokens) if tokens else empty.long())


def replay(d: Drafts, builder: str, width: int, budget: int, depth: int = 15,
           vocab: int | None = None, calibration=None) -> list[int]:
    """Tokens gained per round (accepted + bonus) of greedy JetSpec with this tree configuration
    (nodes ranked by `calibration`'s scores when one is given)."""
    n = len(d.ids) - 1
    if vocab is None:
        vocab = int(d.tokens.max()) + 1 if d.tokens.numel() else 1
    depth = min(depth, d.logp.shape[1], budget - 1)
    gains, a = [], d.p
    while a < n:
        lp = torch.full((d.logp.shape[1], vocab), float("-inf"))
        lp.scatter_(1, d.tokens[a - d.p], d.logp[a - d.p])
        tree = build_tree(builder, d.ids[a], lp, width, depth, budget, calibration)
        kids, toks = tree.children(), tree.tokens.tolist()
        node, k = 0, 0                                  # the greedy walk, along the target's own tokens
        while a + k < n:
            node = next((c for c in kids[node] if toks[c] == d.ids[a + k + 1]), None)
            if node is None:
                break
            k += 1
        gain = min(k + 1, n - a)
        gains.append(gain)
        a += gain
    return gains


def _parse_configs(text: str) -> list[tuple[str, int, bool]]:
    """builder[:width[:cal]] items → (builder, width, calibrated)."""
    out = []
    for part in [x.strip() for x in text.split(",") if x.strip()]:
        name, _, rest = part.partition(":")
        width, _, cal = rest.partition(":")
        if name not in BUILDERS:
            raise JetSpecError(f"--configs: unknown builder {name!r}; use one of {', '.join(BUILDERS)}")
        if cal not in ("", "cal"):
            raise JetSpecError(f"--configs: {part!r}: the third part can only be 'cal' (builder:width:cal)")
        try:
            out.append((name, int(width) if width else DecodeConfig().width, cal == "cal"))
        except ValueError:
            raise JetSpecError(f"--configs: width of {part!r} is not a number (use builder:width)") from None
    if not out:
        raise JetSpecError("--configs is empty")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jetspec_core bench replay", description=__doc__.split("\n")[0])
    p.add_argument("--target", default=None, help="HF model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--head", default=None, help="draft head folder (default: the shipped assets/head)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--dataset", default="humaneval,mtbench", help="comma list")
    p.add_argument("--data-dir", default=None, help="folder holding HumanEval.jsonl.gz / question.jsonl")
    p.add_argument("--limit", type=int, default=8, help="prompts per dataset, spread over the file")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--budgets", default="16,32,64,256", help="comma list of tree budgets")
    p.add_argument("--configs", default="accum_logp:7,topb:7,topb:16",
                   help="comma list of builder:width, or builder:width:cal to rank nodes by the head's calibration.json")
    p.add_argument("--cache", default=None, help="drafts file: read if it exists, else written after collecting")
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    from ..bench.datasets import check_name, load_dataset, spread
    from ..calibration import Calibration
    from ..drafter import HeadDrafter
    from ..loading import DEFAULT_HEAD, load_head
    from ..target import load_target

    a = build_parser().parse_args(argv)
    configs = _parse_configs(a.configs)
    calibration = None
    if any(c for _, _, c in configs):
        head_dir = a.head or DEFAULT_HEAD
        calibration = Calibration.load(head_dir)
        if calibration is None:
            raise JetSpecError(f"--configs asks for ':cal' but {head_dir} has no calibration.json "
                               "(fit one with `python -m jetspec_core train calibrate`)")
    try:
        budgets = [int(x) for x in a.budgets.split(",") if x.strip()]
    except ValueError:
        raise JetSpecError(f"--budgets must be a comma list of integers, got {a.budgets!r}") from None
    if not budgets or min(budgets) < 2:
        raise JetSpecError("--budgets must be integers of at least 2 (budget 1 is plain decoding)")
    names = [x.strip() for x in a.dataset.split(",") if x.strip()]
    for name in names:
        check_name(name)
    if a.cache and os.path.exists(a.cache):
        drafts = [Drafts(**x) for x in torch.load(a.cache)]
        print(f"[replay] {len(drafts)} prompts from {a.cache}", file=sys.stderr)
    else:
        target = load_target(a.target, device=a.device, dtype=a.dtype)
        head, desc = load_head(a.head, target)
        if head is None:
            raise JetSpecError("bench replay needs a draft head (--head FOLDER)")
        drafter = HeadDrafter(head, target.model)
        drafts = []
        for name in names:
            for bp in spread(load_dataset(name, a.data_dir), a.limit):
                t0 = time.perf_counter()
                drafts.append(collect(target, drafter, target.encode_prompt(bp.text), a.max_new_tokens, name))
                print(f"[replay] {bp.id}: {len(drafts[-1].ids) - drafts[-1].p - 1} tokens, "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if a.cache:
            torch.save([vars(d) for d in drafts], a.cache)
    vocab = max(int(d.tokens.max()) for d in drafts if d.tokens.numel()) + 1
    head = f"{'config':18s}" + "".join(f"{'b' + str(b):>16s}" for b in budgets)
    print(f"τ by budget (greedy, offline replay; {', '.join(names)}; one column per budget, datasets split by /)")
    print(head)
    for builder, width, cal in configs:
        cells = []
        for b in budgets:
            taus = []
            for name in names:
                gains = [g for d in drafts if d.dataset == name
                         for g in replay(d, builder, width, b, vocab=vocab, calibration=calibration if cal else None)]
                taus.append(sum(gains) / max(1, len(gains)))
            cells.append(" / ".join(f"{t:.3f}" for t in taus))
        print(f"{builder + ':' + str(width) + (':cal' if cal else ''):18s}" + "".join(f"{c:>16s}" for c in cells))
    return 0


if __name__ == "__main__":
    from . import run_as_script

    run_as_script(main)
