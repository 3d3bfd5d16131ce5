"""`FastDecoder`: JetSpec rounds and plain decoding on the static engine, graphed on a GPU.

Same interface as `jetspec_core.decoder.Decoder` (`stream(prompt_ids, cfg)` yields one
`RoundRecord` per round; `generate` and `summarize` work unchanged). A round is four captured
steps on the device — draft (head forward) → tree (GPU builder) → verify (target forward over
the tree bucket) → accept (greedy rule + commit: KV compaction, draft-context append, next
root) — and plain decoding is one captured step (verify of the root + accept). Nothing in a
round needs the host, so round r+1 is queued before the host waits for round r: one host sync
per round, and the record of round r (tree arrays, target choices, accepted path, timings from
CUDA events) arrives through pinned memory while round r+1 runs. The host cuts at EOS and at
max_new_tokens; the extra round queued past the end is discarded.

Greedy decoding runs here; sampling (temperature > 0) goes through the reference loop of
`Decoder`, which is lossless but not graphed. A host drafter (any `Drafter` that is not a
`HeadDrafter`, e.g. the tests' oracle) runs too: its proposal is copied in each round, so that
round is not queued ahead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .. import backend
from ..config import DecodeConfig
from ..decoder import Decoder, RoundRecord, cut_new_tokens
from ..drafter import Drafter, HeadDrafter
from ..errors import JetSpecError
from ..target import Target
from .fused import Fused
from .gpu_tree import StaticTree, build_static, tree_outputs, tree_views
from .graphs import Clock, Step
from .static_model import Attention, StaticHead, StaticTarget, pick_tree_attention, spans_devices

BUCKETS = (1, 16, 32, 64, 128, 256)
CAPACITY_STEP = 256


def bucket_for(budget: int) -> int:
    """The verify bucket (static tree size) that holds a tree of `budget` nodes."""
    for b in BUCKETS:
        if b >= budget:
            return b
    raise JetSpecError(f"budget {budget} exceeds the largest bucket {BUCKETS[-1]}")


@dataclass
class _Slot:
    """Host side of one in-flight round: pinned staging buffers, phase clock, done event."""

    clock: Clock
    done: torch.cuda.Event | None
    ints: dict = field(default_factory=dict)     # bucket -> pinned int64 buffer
    floats: dict = field(default_factory=dict)   # bucket -> pinned float32 buffer
    bucket: int = 1
    speculative: bool = False


class _State:
    """Device state for one cache capacity: static models, buffers and captured steps."""

    def __init__(self, dec: "FastDecoder", capacity: int):
        t = dec.target
        self.capacity = capacity
        self.st = StaticTarget(t.model, capacity, dec.taps, dec.fused, Attention(dec.kernel),
                               per_layer=dec.per_layer, batch_invariant=dec.batch_invariant)
        self.sh = StaticHead(dec.head, self.st, dec.head_kernel) if dec.head is not None else None
        dev = t.device
        self.prefix = torch.zeros((), dtype=torch.long, device=dev)
        self.root = torch.zeros((), dtype=torch.long, device=dev)
        self.d_logp = torch.zeros(max(dec.max_depth, 1), t.shape.vocab_size, device=dev)
        self.d1 = dec.d1
        self.trees: dict[int, StaticTree] = {}
        self.packed: dict[int, tuple] = {}   # n -> the tree kernel's output buffers behind trees[n]
        self.vout: dict[int, tuple] = {}
        self.stage: dict[int, tuple] = {}
        self.steps: dict[tuple, Step] = {}

    def tree_buffers(self, n: int) -> StaticTree:
        if n not in self.trees:
            # laid out as the tree kernel's outputs, so that it writes the round's tree in place
            self.packed[n] = tuple(b.zero_() for b in tree_outputs(n, self.prefix.device))
            tb = tree_views(*self.packed[n], n)
            from ..kernels.greedy_record import layout

            ni, nf = layout(n, self.d1)                 # the round record's staging buffers
            self.stage[n] = (torch.zeros(ni, dtype=torch.long, device=self.prefix.device),
                             torch.zeros(nf, dtype=torch.float32, device=self.prefix.device))
            if n == 1:  # the plain step's tree: the root alone
                tb.parents.fill_(-1)
                tb.rank.fill_(-1)
                tb.valid.fill_(True)
                tb.n_valid.fill_(1)
                tb.anc.fill_(True)
            self.trees[n] = tb
        return self.trees[n]


# Auto batch-invariant mode only up to this hidden size: measured on an H200 (docs/measured/
# h200-speed-stage8-*), SmolLM2 (576) pays 11 % per plain step for exact bf16 agreement, a Qwen3-8B shape
# (4096) 60 % per plain step and 290 % per budget-256 round (its matmul has no split-K for long K).
BI_AUTO_MAX_HIDDEN = 1024


class FastDecoder(Decoder):
    """The graphed engine behind the same streaming interface as `Decoder`.

    graphs: capture CUDA graphs (default: on CUDA); capacity: initial KV-cache rows (grown on
    demand, which re-captures); attention: 'auto' (Triton tree attention when it works) or
    'sdpa'; fused: 'auto' (Triton RMSNorm/SiLU on CUDA) or 'torch'; batch_invariant: the target
    forward computes every row the same way for any tree size (greedy JetSpec = plain greedy in
    bf16 too; None: $JETSPEC_BATCH_INVARIANT, default auto = on CUDA wherever its kernels apply,
    see `jetspec_core.backend`; CUDA only)."""

    def __init__(self, target: Target, drafter: Drafter | None = None, *, graphs: bool | None = None,
                 capacity: int = 1024, attention: str = "auto", fused: str = "auto", per_layer: bool = False,
                 batch_invariant: bool | None = None):
        super().__init__(target, drafter)
        dev = target.device
        self.head = drafter.head if isinstance(drafter, HeadDrafter) else None
        self.host_drafter = drafter if drafter is not None and self.head is None else None
        self.taps = tuple(drafter.taps) if drafter is not None else ()
        self.max_depth = drafter.max_depth if drafter is not None else 0
        self.d1 = self.max_depth + 1                     # path slots: root + one per depth
        self.spread = spans_devices(target.model)       # an HF device_map over several GPUs
        self.graphs = (dev.type == "cuda" and not self.spread) if graphs is None else bool(graphs)
        if self.graphs and (dev.type != "cuda" or self.spread):
            raise JetSpecError("CUDA graphs need the whole target on one CUDA device")
        self.fused = Fused(dev, target.model.dtype, force="torch" if fused == "torch" else None)
        explicit = batch_invariant if batch_invariant is not None else backend.batch_invariant_setting()
        self.batch_invariant = backend.batch_invariant(dev, explicit)
        self.bi_note = None
        why = self._why_not_invariant(target, attention, auto=explicit is None) if self.batch_invariant else None
        if why and explicit:
            raise JetSpecError(f"batch-invariant mode cannot apply: {why}")
        if why:                                          # auto: off where it cannot apply, and said why
            self.bi_note, self.batch_invariant = f"off: {why}", False
        force = "sdpa" if attention == "sdpa" else None
        if self.batch_invariant:
            self.kernel, self.attention_note = None, "batch-invariant (position-ordered Triton kernel)"
        else:
            self.kernel, self.attention_note = pick_tree_attention(dev, force=force)
        # the draft head only proposes: it takes the tree-attention kernel in either mode
        self.head_kernel = (self.kernel if not self.batch_invariant or self.head is None
                            else pick_tree_attention(dev, force=force)[0])
        self.min_capacity = capacity
        self.per_layer = per_layer            # per-layer caches (forced: tests of the device_map path)
        self.capture_error: str | None = None
        self.state: _State | None = None
        self.syncs = 0           # host waits on the device during rounds (one per round)
        self.rounds = 0
        self._slots = [_Slot(Clock(dev), torch.cuda.Event() if dev.type == "cuda" else None) for _ in range(2)]

    def _why_not_invariant(self, target: Target, attention: str, auto: bool) -> str | None:
        """Why batch-invariant mode cannot apply to this target, or None. Asked for explicitly,
        a spread target and an untested dtype / head size are the caller's call."""
        from ..kernels.bi_matmul import DTYPES

        d = target.model.shape.head_dim
        if auto and self.spread:
            return "the target is spread over several devices"
        if target.device.type == "cuda" and self.fused.kind != "triton":  # torch's row reductions vary with N
            return f"it needs the Triton RMSNorm kernel ({self.fused.note or 'fused=torch was asked for'})"
        if attention == "sdpa":
            return "attention='sdpa' was asked for, and the mode has its own attention kernel"
        if auto and (target.model.dtype not in DTYPES or d < 16 or d & (d - 1)):
            return f"{target.model.dtype} with head_dim {d} is not supported by its kernels"
        h = target.model.shape.hidden_size
        if auto and h > BI_AUTO_MAX_HIDDEN:
            return (f"hidden size {h} > {BI_AUTO_MAX_HIDDEN}: its kernels are tuned for small targets only (at a "
                    "Qwen3-8B shape the plain step took 1.6x and a budget-256 round 3.9x the cuBLAS time on an "
                    "H200); JETSPEC_BATCH_INVARIANT=1 forces it")
        return None

    # -- facts ------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"engine": "fast", "graphs": self.graphs, "capture_error": self.capture_error,
                "attention": self.attention_note, "batch_invariant": self.batch_invariant,
                "batch_invariant_note": self.bi_note,
                "fp32_logits": bool(self.state.st.fp32_logits) if self.state else None,
                "fused": self.fused.kind + (f" ({self.fused.note})" if self.fused.note else ""),
                "capacity": self.state.capacity if self.state else self.min_capacity}

    def supports(self, cfg: DecodeConfig) -> bool:
        """Greedy decoding runs on the engine; sampling uses the reference loop."""
        return cfg.greedy

    # -- state and captured steps -------------------------------------------------------------
    @torch.no_grad()
    def reserve(self, capacity: int) -> None:
        """Make the KV caches hold at least `capacity` rows (drops captured graphs if it grows)."""
        if self.state is None or self.state.capacity < capacity:
            cap = -(-max(capacity, self.min_capacity) // CAPACITY_STEP) * CAPACITY_STEP
            self.state = None
            if self.target.device.type == "cuda":
                torch.cuda.empty_cache()
            self.state = _State(self, cap)

    def _reset(self) -> None:
        s = self.state
        s.prefix.fill_(0)
        s.root.fill_(0)

    @torch.no_grad()
    def _step(self, key: tuple, fn) -> Step:
        s = self.state
        if key not in s.steps:
            step = Step(fn, "/".join(map(str, key)), self.graphs, reset=self._reset)
            s.steps[key] = step
            if step.error:  # steps hand tensors to each other: all graphed or none
                self.graphs = False
                self.capture_error = f"{step.name}: {step.error}"
                for k, st in s.steps.items():
                    s.steps[k] = Step(st.fn, st.name, False)
        return s.steps[key]

    def _shape(self, prompt_len: int, cfg: DecodeConfig) -> tuple[bool, int, int]:
        """(speculative, tree bucket n, KV rows needed) of a greedy request."""
        speculative = cfg.mode == "jetspec" and cfg.budget > 1 and self.drafter is not None
        n = bucket_for(cfg.budget) if speculative else 1
        # room for the prompt, the output, and two rounds of scratch rows (one queued ahead)
        return speculative, n, prompt_len + cfg.max_new_tokens + 2 * (n + self.d1) + 8

    def _plan(self, cfg: DecodeConfig, speculative: bool, n: int) -> list[tuple | None]:
        """(step key, function) of each phase of one round for this config (None: a host drafter)."""
        if not speculative:
            return [(("plain",), self._plain_step)]
        depth = min(cfg.depth, self.max_depth)
        cal = self._calibrated(cfg)
        return [(("draft",), self._draft) if self.head is not None else None,
                (("tree", n, cfg.builder, cfg.width, depth, cfg.budget, cal),
                 lambda: self._tree(n, cfg.builder, cfg.width, depth, cfg.budget, cal)),
                (("verify", n), lambda: self._verify(n)),
                (("accept", n), lambda: self._accept(n, True))]

    def _calibrated(self, cfg: DecodeConfig) -> bool:
        """Whether the tree takes the head's calibrated scores (its `calibration.json`)."""
        return bool(cfg.calibrate and self.head is not None and self.head.calibration is not None)

    def ready(self, prompt_len: int, cfg: DecodeConfig) -> bool:
        """Whether a request starts at once: its steps are built (on CUDA: kernels compiled, graphs
        captured) and the KV cache is big enough. False means the first round waits for that
        (seconds to a minute on a GPU, once per setting); sampling runs the reference loop: True."""
        if not self.supports(cfg):
            return True
        speculative, n, rows = self._shape(prompt_len, cfg)
        if self.state is None or self.state.capacity < rows:
            return False
        return all(item is None or item[0] in self.state.steps for item in self._plan(cfg, speculative, n))

    def _prepare(self, cfg: DecodeConfig, speculative: bool, n: int) -> list[Step | None]:
        """The steps of one round for this config, captured now (before the prefill) if new."""
        self.state.tree_buffers(n)
        plan = self._plan(cfg, speculative, n)
        if speculative and self._calibrated(cfg):  # the score tables on the device before any capture
            self.head.calibration.prepare(self.state.root.device)
        for item in plan:  # in phase order: a step's capture reads the outputs of the one before
            if item is not None:
                self._step(*item)
        return [None if item is None else self.state.steps[item[0]] for item in plan]

    # -- the phases (static shapes; device tensors in, device tensors out) ---------------------
    def _draft(self) -> None:
        s = self.state
        s.d_logp = s.sh.draft(s.root, s.prefix)                        # (D, V) logits

    def _tree(self, n: int, builder: str, width: int, depth: int, budget: int, calibrated: bool) -> None:
        s = self.state
        t = build_static(builder, s.d_logp, s.root, width, depth, budget, n,
                         self.head.calibration if calibrated else None, out=s.packed[n],
                         logits=self.head is not None)   # a host drafter hands log-probs
        buf = s.trees[n]
        for f in StaticTree.FIELDS:  # the fields the kernel did not write in place
            dst, src = getattr(buf, f), getattr(t, f)
            if src.data_ptr() != dst.data_ptr():
                dst.copy_(src)

    def _verify(self, n: int) -> None:
        s = self.state
        tb = s.trees[n]
        logits, hidden = s.st.forward(tb.tokens, tb.depth, tb.anc, s.prefix)   # (N, V), (N, n·H)
        top, lse = self.fused.row_stats(logits)                                 # (N,), (N,)
        s.vout[n] = (top, logits, hidden, lse)

    def _accept(self, n: int, speculative: bool) -> None:
        """Greedy rule (paper notation): child c of u matches when x_c = argmax p_u; accept the
        deepest node whose whole path matches (first sibling wins); bonus = argmax p there — and
        the round record, into the staging buffers (`kernels/greedy_record.py`, one launch on
        CUDA). Then commit: move the K/V rows of root + accepted nodes to [prefix, prefix + τ),
        append their hidden states to the draft context, advance prefix, make the bonus the root."""
        s = self.state
        tb = s.trees[n]
        top, logits, hidden, lse = s.vout[n]
        ints, floats = s.stage[n]
        backend.greedy_record(tb.tokens, tb.parents, tb.depth, tb.rank, tb.valid, tb.n_valid, tb.anc,
                              tb.draft_logp, tb.cum_logp, top, logits, lse, ints, floats)
        plen, bonus, path = ints[1], ints[2], ints[4:4 + self.d1]           # τ, bonus, (D+1,) node indices
        if speculative:
            s.st.move_rows(path, s.prefix, plen)
            if s.sh is not None:
                s.sh.append(hidden[path], s.prefix)
        s.prefix.add_(plen)
        s.root.copy_(bonus)

    def _plain_step(self) -> None:
        s = self.state
        s.trees[1].tokens.copy_(s.root.reshape(1))
        self._verify(1)
        self._accept(1, False)

    # -- prefill and the host loop --------------------------------------------------------------
    @torch.no_grad()
    def _prefill(self, prompt_ids: list[int], speculative: bool) -> None:
        s, dev = self.state, self.target.device
        s.prefix.fill_(0)
        p = len(prompt_ids) - 1
        hidden = None
        if p > 0:
            ids = torch.tensor(prompt_ids[:-1], device=dev)
            causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
            _, hidden = s.st.forward(ids, torch.arange(p, device=dev), causal, s.prefix, logits=False,
                                     attention=Attention())
            if speculative and s.sh is not None:
                s.sh.append(hidden, s.prefix)
        if speculative and self.host_drafter is not None:
            self.host_drafter.start(hidden if self.taps else None, list(prompt_ids))
        s.prefix.fill_(p)
        s.root.fill_(prompt_ids[-1])

    @torch.no_grad()
    def _launch(self, r: int, steps: list, speculative: bool, n: int, committed: list[int]) -> None:
        slot = self._slots[r % 2]
        c = slot.clock
        c.reset()
        c.mark(0)
        if speculative:
            draft, tree, verify, accept = steps
            if draft is None:  # a host drafter: its proposal for this root
                lp = self.host_drafter.propose(committed[-1], committed)
                self.state.d_logp[:lp.shape[0]].copy_(lp.to(self.state.d_logp.device))
            else:
                draft()
            c.mark(1)
            tree()
            c.mark(2)
            verify()
            c.mark(3)
            accept()
        else:
            steps[0]()
        c.mark(4)
        ints, floats = self.state.stage[n]
        if slot.done is None:
            slot.ints[n], slot.floats[n] = ints.clone(), floats.clone()
        else:
            if n not in slot.ints:
                slot.ints[n] = torch.empty(ints.shape, dtype=ints.dtype, pin_memory=True)
                slot.floats[n] = torch.empty(floats.shape, dtype=floats.dtype, pin_memory=True)
            slot.ints[n].copy_(ints, non_blocking=True)
            slot.floats[n].copy_(floats, non_blocking=True)
            slot.done.record()
        slot.bucket, slot.speculative = n, speculative

    def _collect(self, r: int):
        slot = self._slots[r % 2]
        if slot.done is not None:
            slot.done.synchronize()
            self.syncs += 1
        self.rounds += 1
        c = slot.clock
        if slot.speculative:
            timings = {"draft": c.seconds(0, 1), "tree": c.seconds(1, 2), "verify": c.seconds(2, 3),
                       "accept": c.seconds(3, 4)}
        else:
            timings = {"draft": 0.0, "tree": 0.0, "verify": c.seconds(0, 4), "accept": 0.0}
        return slot.ints[slot.bucket].tolist(), slot.floats[slot.bucket].tolist(), slot.bucket, timings

    def stream(self, prompt_ids: list[int], cfg: DecodeConfig) -> Iterator[RoundRecord]:
        """Yield one RoundRecord per round until EOS or max_new_tokens (see `Decoder.stream`)."""
        if not self.supports(cfg):
            if self.spread:
                raise JetSpecError("sampling (temperature > 0) is not supported for a target spread over "
                                   "several devices yet; use temperature 0")
            yield from super().stream(prompt_ids, cfg)
            return
        self.check(prompt_ids, cfg)
        from ..kernels.greedy_record import unpack  # the staging buffers' layout lives with their writer
        speculative, n, rows = self._shape(len(prompt_ids), cfg)
        self.reserve(rows)
        steps = self._prepare(cfg, speculative, n)
        eos = self.target.eos_ids if cfg.stop_at_eos else frozenset()
        if self.target.device.type == "cuda":
            torch.cuda.synchronize(self.target.device)   # a round left queued by the last request
        start = time.perf_counter()
        self._prefill(prompt_ids, speculative)
        committed = list(prompt_ids)
        past, generated, d1 = len(prompt_ids) - 1, 0, self.d1
        ahead = not (speculative and self.host_drafter is not None)
        self._launch(0, steps, speculative, n, committed)
        r = 0
        while True:
            if ahead:
                self._launch(r + 1, steps, speculative, n, committed)
            ints, fl, nb, timings = self._collect(r)
            fields = unpack(ints, fl, nb, d1)
            path, tokens = fields["accepted"], fields["tokens"]
            new, finished = cut_new_tokens([tokens[i] for i in path[1:]] + [fields["bonus"]], eos,
                                           cfg.max_new_tokens - generated)
            committed += new
            generated += len(new)
            rec = RoundRecord(index=r, past_len=past, new_tokens=new, timings=timings,
                              elapsed_s=time.perf_counter() - start, finished=finished, **fields)
            past += len(new)
            if not ahead and not finished:
                if self.taps:
                    hidden = self.state.vout[n][2]
                    keep = torch.tensor(path[: len(new)], device=hidden.device)
                    self.host_drafter.extend(hidden[keep], committed)
                else:
                    self.host_drafter.extend(None, committed)
            yield rec
            if finished:
                return
            if not ahead:
                self._launch(r + 1, steps, speculative, n, committed)
            r += 1

    # -- helpers for benchmarks ----------------------------------------------------------------
    @torch.no_grad()
    def next_logits(self, ids: list[int]) -> torch.Tensor:
        """The target's logits (V,) fp32 after `ids`, by one eager forward (for divergence reports)."""
        self.reserve(len(ids) + 8)
        s, dev = self.state, self.target.device
        s.prefix.fill_(0)
        n = len(ids)
        causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
        logits, _ = s.st.forward(torch.tensor(ids, device=dev), torch.arange(n, device=dev), causal, s.prefix,
                                 attention=Attention())
        return logits[-1]
