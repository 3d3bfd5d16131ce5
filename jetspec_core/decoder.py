"""The JetSpec decoding loop: one round = draft → build tree → verify → accept → commit.

`Decoder.stream` is the one streaming generator: it yields a `RoundRecord` per round, which the
CLI, the benchmark and the app all consume; `summarize` turns records into the closing figures.
Plain decoding is the same loop with a root-only tree (budget 1, no draft), so comparisons are
fair. Invariant after every round: target cache length = committed − 1 = draft context rows.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch

from . import backend
from .accept import accept_greedy, accept_sampled, expected_tau
from .config import DecodeConfig
from .drafter import Drafter
from .errors import JetSpecError
from .model import column_major_on_cpu
from .sampling import make_generator, warp
from .target import Target
from .tree import Tree, build_tree


@dataclass
class RoundRecord:
    """What one round did, as plain lists (JSON-ready; the app draws exactly these arrays)."""

    index: int
    past_len: int                 # target cache rows before the round (root position)
    tokens: list[int]             # tree arrays, node 0 = root (anchor)
    parents: list[int]
    depth: list[int]
    rank: list[int]
    draft_logp: list[float]       # node's own draft log-prob (root 0)
    cum_logp: list[float]         # cumulative draft log-prob along the path
    target_prob: list[float]      # target softmax prob of the node's token at its parent (root 1)
    accept_prob: list[float]      # prob. the acceptance rule takes the node at its parent
    target_top: list[int]         # target argmax at each node (its own choice)
    accepted: list[int]           # node indices root..deepest accepted node
    bonus: int                    # the target's token after the accepted path
    new_tokens: list[int]         # committed this round (after EOS / max_new_tokens cuts)
    expected_tau: float
    timings: dict[str, float]     # seconds: draft, tree, verify, accept
    elapsed_s: float              # since the start of the generation (prefill included)
    finished: str | None = None   # "eos" | "length" on the last round

    @property
    def accept_len(self) -> int:
        """τ of the round: accepted draft tokens + 1."""
        return len(self.accepted)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Summary:
    """The closing figures of a generation (metric names as in DESIGN §3)."""

    mode: str
    token_ids: list[int]
    rounds: int
    tau: float                    # mean over rounds of accepted + 1
    expected_tau: float
    tpf: float                    # generated tokens / target forwards (prefill excluded)
    tokens_per_s: float           # generated tokens / wall time including prefill
    decode_tokens_per_s: float    # generated tokens / wall time after prefill
    elapsed_s: float
    prefill_s: float
    time_split: dict[str, float] = field(default_factory=dict)
    finished: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(mode: str, records: list[RoundRecord], prefill_s: float) -> Summary:
    toks = [t for r in records for t in r.new_tokens]
    n = max(len(records), 1)
    elapsed = records[-1].elapsed_s if records else prefill_s
    split = {k: sum(r.timings[k] for r in records) for k in ("draft", "tree", "verify", "accept")}
    decode = max(elapsed - prefill_s, 1e-9)
    return Summary(
        mode=mode, token_ids=toks, rounds=len(records),
        tau=sum(r.accept_len for r in records) / n,
        expected_tau=sum(r.expected_tau for r in records) / n,
        tpf=len(toks) / n, tokens_per_s=len(toks) / max(elapsed, 1e-9),
        decode_tokens_per_s=len(toks) / decode, elapsed_s=elapsed, prefill_s=prefill_s,
        time_split=split, finished=records[-1].finished if records else None)


def cut_new_tokens(new: list[int], eos: frozenset[int], room: int) -> tuple[list[int], str | None]:
    """Cut a round's tokens after the first EOS and to the `room` left under max_new_tokens;
    returns the tokens to commit and why generation finished ("eos", "length" or None)."""
    finished = None
    for j, t in enumerate(new):
        if t in eos:
            new, finished = new[: j + 1], "eos"
            break
    if len(new) >= room:
        new, finished = new[:room], finished or "length"
    return new, finished


class Decoder:
    """Drives one target (and optionally a drafter) through rounds. Holds no per-request state
    between calls of `stream`, so one Decoder may serve requests one after another."""

    def __init__(self, target: Target, drafter: Drafter | None = None):
        self.target = target
        self.drafter = drafter
        backend.configure(target.model)  # Triton tree attention on CUDA; SDPA as before on CPU
        if target.device.type == "cpu":  # faster CPU GEMMs at a few rows (values unchanged)
            column_major_on_cpu(target.model.linear_weights())
            head = getattr(drafter, "head", None)
            if head is not None:
                column_major_on_cpu(p for p in head.layers.parameters() if p.dim() == 2)

    def _sync(self) -> None:
        if self.target.device.type == "cuda":
            torch.cuda.synchronize(self.target.device)

    def check(self, prompt_ids: list[int], cfg: DecodeConfig) -> None:
        if not prompt_ids:
            raise JetSpecError("the prompt is empty; type some text")
        need = len(prompt_ids) + cfg.max_new_tokens + cfg.budget
        if need > self.target.max_context:
            raise JetSpecError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({cfg.max_new_tokens}) + budget "
                f"({cfg.budget}) exceed the model's context of {self.target.max_context} tokens; "
                "shorten the prompt or lower max_new_tokens")
        if cfg.mode == "jetspec" and self.drafter is None and cfg.budget > 1:
            raise JetSpecError("JetSpec mode needs a draft head (--head); or use mode plain")

    def stream(self, prompt_ids: list[int], cfg: DecodeConfig) -> Iterator[RoundRecord]:
        """Yield one RoundRecord per round until EOS or max_new_tokens. The first record's
        `elapsed_s - sum(timings)` is the prefill time."""
        self.check(prompt_ids, cfg)
        model, dev = self.target.model, self.target.device
        speculative = cfg.mode == "jetspec" and cfg.budget > 1 and self.drafter is not None
        drafter = self.drafter if speculative else None
        taps = drafter.taps if drafter else ()
        eos = self.target.eos_ids if cfg.stop_at_eos else frozenset()
        gen = None if cfg.greedy else make_generator(cfg.seed, dev)
        budget = cfg.budget if speculative else 1
        depth = min(cfg.depth, drafter.max_depth, budget - 1) if drafter else 0  # b nodes: depth <= b − 1

        start = time.perf_counter()
        cache = model.new_cache(len(prompt_ids) + cfg.max_new_tokens + budget + 1)
        committed = list(prompt_ids)
        p = len(prompt_ids) - 1
        hidden = None
        if p > 0:  # prefill all but the last prompt token, which becomes the first root
            ids = torch.tensor(committed[:-1], device=dev)
            causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
            _, hidden = model(ids, torch.arange(p, device=dev), cache, causal, taps)
            backend.compact(cache, torch.arange(p, device=dev))
        if drafter:
            drafter.start(hidden, committed)
        generated = 0
        index = 0
        while True:
            t0 = time.perf_counter()
            root, past = committed[-1], cache.length
            # -- draft: one head forward gives log-probs for every depth
            lp = drafter.propose(root, committed, depth) if drafter else None
            self._sync()
            t1 = time.perf_counter()
            # -- build the tree under the budget
            tree = build_tree(cfg.builder, root, lp, cfg.width, depth, budget,
                              getattr(drafter, "calibration", None) if cfg.calibrate else None) if drafter \
                else build_tree(cfg.builder, root, torch.zeros(0, 1), 1, 0, 1)
            anc = tree.ancestor_mask().to(dev)
            t2 = time.perf_counter()
            # -- verify: the whole tree in one target forward over the cached prefix
            mask = torch.cat([torch.ones(len(tree), past, dtype=torch.bool, device=dev), anc], dim=1)
            logits, hid = model(tree.tokens.to(dev), tree.positions(past).to(dev), cache, mask, taps)
            self._sync()
            t3 = time.perf_counter()
            # -- accept
            if cfg.greedy:
                acc = accept_greedy(tree, logits, anc)
            else:
                acc = accept_sampled(tree, warp(logits, cfg.temperature, cfg.top_k, cfg.top_p), gen)
            target_prob = torch.softmax(logits, -1)[tree.parents.clamp(min=0).to(dev), tree.tokens.to(dev)]
            target_prob[0] = 1.0
            new, finished = cut_new_tokens([int(tree.tokens[i]) for i in acc.path[1:]] + [acc.bonus],
                                           eos, cfg.max_new_tokens - generated)
            # -- commit: root + accepted nodes whose tokens are now committed move into the cache
            keep = torch.tensor(acc.path[: len(new)], device=dev)
            backend.compact(cache, keep)
            committed += new
            generated += len(new)
            if drafter and not finished:
                drafter.extend(hid[keep] if hid is not None else None, committed)
            self._sync()
            t4 = time.perf_counter()
            assert cache.length == len(committed) - 1, "cache/committed invariant broken"
            yield RoundRecord(
                index=index, past_len=past, tokens=tree.tokens.tolist(), parents=tree.parents.tolist(),
                depth=tree.depth.tolist(), rank=tree.rank.tolist(), draft_logp=tree.draft_logp.tolist(),
                cum_logp=tree.cum_logp.tolist(), target_prob=target_prob.tolist(),
                accept_prob=acc.accept_prob, target_top=acc.target_top, accepted=acc.path,
                bonus=acc.bonus, new_tokens=new, expected_tau=expected_tau(tree, acc.accept_prob, anc),
                timings={"draft": t1 - t0, "tree": t2 - t1, "verify": t3 - t2, "accept": t4 - t3},
                elapsed_s=t4 - start, finished=finished)
            index += 1
            if finished:
                return

    def generate(self, prompt_ids: list[int], cfg: DecodeConfig) -> tuple[Summary, list[RoundRecord]]:
        """Run `stream` to the end; return the summary and all records."""
        records = list(self.stream(prompt_ids, cfg))
        first = records[0]
        prefill = first.elapsed_s - sum(first.timings.values())
        return summarize(cfg.mode, records, prefill), records
