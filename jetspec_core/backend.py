"""The one place that decides how the verification kernels run: Triton or plain PyTorch.

Setting (read at call time): `force(name)` if a test set one, else $JETSPEC_BACKEND, else auto.
- auto: the Triton kernels when the tensors are on CUDA (and triton imports), the PyTorch
  references otherwise (CPU);
- triton: always the kernels; CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1,
  tests), else an error;
- reference: always the PyTorch references.

Batch-invariant mode (the target's forward computes every row the same way whatever the number
of rows, so greedy JetSpec equals plain greedy decoding in bf16 too; see
`kernels/bi_matmul.py`, `kernels/bi_attention.py`): `force_batch_invariant(on)` if a test set
it, else $JETSPEC_BATCH_INVARIANT (1 / 0 / unset = auto). `batch_invariant(device, requested)`
says whether it applies: on explicitly, only where the Triton kernels run (CUDA; CPU only under
the interpreter with backend 'triton', for tests), else an error; auto (the default), wherever
the Triton kernels run on CUDA, and the engine turns it off again where it cannot apply (see
`FastDecoder`). On CPU the fp32 reference path is exact anyway.

Everything else calls the functions below with one signature each and never asks which
backend runs. `configure(model)` installs the matching `TargetModel.attend` (our forward's
attention hook) and `compact(cache, rows)` moves accepted K/V rows, so the decoder uses the
kernels on CUDA without knowing about them; on CPU both keep the previous code path exactly.
The kernel modules import triton, so they are imported here lazily, on first use.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from .errors import JetSpecError
from .model import KVCache, sdpa_attend

BACKENDS = ("auto", "triton", "reference")
ENV = "JETSPEC_BACKEND"
BI_ENV = "JETSPEC_BATCH_INVARIANT"
TREE_ENV = "JETSPEC_TREE_KERNEL"
_forced: str | None = None
_forced_bi: bool | None = None


def force(name: str | None) -> None:
    """Force a backend for this process (tests); None goes back to $JETSPEC_BACKEND / auto."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise JetSpecError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    _forced = name


@contextmanager
def forced(name: str | None):
    """`with forced("reference"): ...` — force a backend inside a block."""
    before = _forced
    force(name)
    try:
        yield
    finally:
        force(before)


def setting() -> str:
    name = _forced or os.environ.get(ENV, "auto") or "auto"
    if name not in BACKENDS:
        raise JetSpecError(f"{ENV}={name!r} is not a backend; use one of {', '.join(BACKENDS)}")
    return name


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """Whether the kernels run for tensors on t's device under the current setting."""
    name = setting()
    if name == "reference":
        return False
    on_cuda = t.device.type == "cuda"
    if name == "auto":
        return on_cuda and _triton_available()
    if not _triton_available():
        raise JetSpecError("backend 'triton' asked for, but triton is not installed")
    if not on_cuda and not _interpreting():
        raise JetSpecError(f"backend 'triton' needs CUDA tensors (got {t.device}); set {ENV}=auto or "
                           "reference, or TRITON_INTERPRET=1 to interpret the kernels on CPU")
    return True


def _env_switch(name: str, auto: tuple[str, ...] = ("",)) -> bool | None:
    """An on/off environment variable: True / False, or None for the values in `auto` (unset)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in auto:
        return None
    if raw in ("0", "false", "off", "no"):
        return False
    if raw in ("1", "true", "on", "yes"):
        return True
    raise JetSpecError(f"{name}={raw!r}: use " + ("1, 0 or auto" if "auto" in auto else "1 or 0"))


def tree_kernel(t: torch.Tensor) -> bool:
    """Whether the engine builds its trees with the single-launch Triton kernel
    (`kernels/tree_build.py`) instead of the graphed tensor ops: wherever the kernels run (CUDA under
    'auto', always under 'triton'), unless $JETSPEC_TREE_KERNEL=0. Measured on an H200 (2026-11-30):
    the tree phase of a round 0.39-0.57 ms with the tensor ops, 0.11-0.34 ms with the kernel."""
    return _env_switch(TREE_ENV) is not False and use_triton(t)


# ---------------------------------------------------------------- batch-invariant mode

def force_batch_invariant(on: bool | None) -> None:
    """Force batch-invariant mode on or off for this process (tests); None: back to $JETSPEC_BATCH_INVARIANT."""
    global _forced_bi
    _forced_bi = None if on is None else bool(on)


@contextmanager
def forced_batch_invariant(on: bool | None):
    """`with forced_batch_invariant(True): ...` — force the mode inside a block."""
    before = _forced_bi
    force_batch_invariant(on)
    try:
        yield
    finally:
        force_batch_invariant(before)


def batch_invariant_setting() -> bool | None:
    """Batch-invariant mode as asked for: True / False, or None for auto (forced, else
    $JETSPEC_BATCH_INVARIANT; unset or 'auto' is auto)."""
    if _forced_bi is not None:
        return _forced_bi
    return _env_switch(BI_ENV, auto=("", "auto"))


def batch_invariant(device: torch.device | str, requested: bool | None = None) -> bool:
    """Whether the target forward on `device` runs batch-invariant. `requested` True / False
    decides; None takes the setting, and auto means on wherever the Triton kernels run (CUDA with
    triton installed, backend not 'reference'). Asked for explicitly on CUDA with the kernels
    off (backend 'reference', no triton) is an error; on CPU (without the interpreter) it is off."""
    on = batch_invariant_setting() if requested is None else bool(requested)
    device = torch.device(device)
    if on is None:
        return device.type == "cuda" and setting() != "reference" and _triton_available()
    if not on:
        return False
    if device.type == "cuda" and (setting() == "reference" or not _triton_available()):
        raise JetSpecError(f"batch-invariant mode needs the Triton kernels on CUDA; {ENV}="
                           f"{setting()!r} and triton {'is' if _triton_available() else 'is not'} installed")
    return use_triton(torch.empty(0, device=device))


# ---------------------------------------------------------------- the kernels, one signature each

def supports_tree_attention(q: torch.Tensor) -> bool:
    from .kernels.tree_attention import DTYPES

    d = q.shape[-1]
    return q.dtype in DTYPES and 16 <= d <= 256 and d & (d - 1) == 0


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len,
                   tree_mask_bits: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """q (Hq, N, D); k, v (Hkv, S, D) = prefix rows [0, prefix_len) + tree rows; tree_mask_bits
    (N, ceil(N/32)) int32 ancestor-or-self rows → (Hq, N, D). See kernels/tree_attention.py."""
    from .kernels import tree_attention as ta

    if use_triton(q) and supports_tree_attention(q):
        return ta.tree_attention_triton(q, k, v, prefix_len, tree_mask_bits, scale)
    return ta.tree_attention_reference(q, k, v, prefix_len, tree_mask_bits, scale)


def pack_ancestor_bits(anc: torch.Tensor) -> torch.Tensor:
    """(N, N) bool ancestor-or-self mask → (N, ceil(N/32)) int32 bit rows (tensor ops, any device)."""
    from .kernels.tree_attention import pack_ancestor_bits as pack

    return pack(anc)


def greedy_accept(tokens: torch.Tensor, parents: torch.Tensor, target_argmax: torch.Tensor,
                  max_depth: int | None = None):
    """Greedy accept walk → (path_idx, path_len, bonus) device tensors. See kernels/accept_walk.py."""
    from .kernels import accept_walk as aw

    fn = aw.greedy_accept_triton if use_triton(tokens) else aw.greedy_accept_reference
    return fn(tokens, parents, target_argmax, max_depth)


def sampled_accept(tokens: torch.Tensor, parents: torch.Tensor, samples: torch.Tensor,
                   max_depth: int | None = None):
    """Sample-then-walk with one pre-drawn target sample per node → (path_idx, path_len, bonus)."""
    from .kernels import accept_walk as aw

    fn = aw.sampled_accept_triton if use_triton(tokens) else aw.sampled_accept_reference
    return fn(tokens, parents, samples, max_depth)


def kv_compact(k_cache: torch.Tensor, v_cache: torch.Tensor, src_rows: torch.Tensor, dst_start,
               n=None, relative: bool = False) -> None:
    """Move rows src_rows[:n] (counted from dst_start when `relative`) to dst_start.. in every layer
    and head of (L, Hkv, S, D) caches."""
    from .kernels import kv_compact as kc

    fn = kc.kv_compact_triton if use_triton(k_cache) else kc.kv_compact_reference
    fn(k_cache, v_cache, src_rows, dst_start, n, relative)


def depth_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of log_softmax(x) per row of the draft's (D, V) logits → lp (D, k) fp32 descending,
    tok (D, k) int64 (kernels/depth_topk.py: three small launches instead of a log-softmax and torch.topk)."""
    from .kernels import depth_topk as dt

    fn = dt.depth_topk_triton if use_triton(x) and k <= 64 else dt.depth_topk_reference
    return fn(x, k)


def greedy_record(tokens, parents, depth, rank, valid, n_valid, anc, draft_logp, cum_logp, top, logits, lse,
                  ints: torch.Tensor, floats: torch.Tensor) -> None:
    """The engine's greedy accept + round record into its staging buffers. See kernels/greedy_record.py."""
    from .kernels import greedy_record as gr

    fn = gr.greedy_record_triton if use_triton(tokens) else gr.greedy_record_reference
    fn(tokens, parents, depth, rank, valid, n_valid, anc, draft_logp, cum_logp, top, logits, lse, ints, floats)


# ---------------------------------------------------------------- hooks for our target forward

class _TreeMaskCache:
    """The attention mask of one forward is the same object for every layer: split it into
    (prefix length, bit-packed tree rows) once. One host sync per forward checks that it has
    that shape (prefix all visible, tree part lower-triangular); otherwise None (use SDPA)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.split: tuple[int, torch.Tensor] | None = None

    def get(self, mask: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        if mask is not self.mask:
            from .kernels.tree_attention import pack_ancestor_bits as pack

            n, s = mask.shape
            p = s - n
            tree = mask[:, p:]
            ok = bool(mask[:, :p].all() & ~tree.triu(1).any()) if mask.dtype == torch.bool else False
            self.mask, self.split = mask, ((p, pack(tree)) if ok else None)
        return self.split


class TritonAttend:
    """`TargetModel.attend` with the Triton tree-attention kernel; same signature as
    `model.sdpa_attend`: q (Hq, N, D), k/v (Hkv, S, D), mask (N, S) bool → (Hq, N, D)."""

    def __init__(self) -> None:
        self._masks = _TreeMaskCache()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not supports_tree_attention(q):
            return sdpa_attend(q, k, v, mask)
        split = self._masks.get(mask)
        if split is None:
            return sdpa_attend(q, k, v, mask)
        from .kernels.tree_attention import tree_attention_triton

        return tree_attention_triton(q, k, v, split[0], split[1])


def configure(model) -> str:
    """Install the attention hook that the backend picks for this model's device; returns
    'triton' or 'reference'. On CPU (auto) this is `sdpa_attend`, as before."""
    if use_triton(torch.empty(0, device=model.device)):
        model.attend = TritonAttend()
        return "triton"
    model.attend = sdpa_attend
    return "reference"


def compact(cache: KVCache, rows: torch.Tensor) -> None:
    """`cache.compact(rows)` through the one-launch kernel when the backend picks Triton. rows
    must be ascending with rows[i] >= i (an accepted path: root first, parents before children)."""
    if not use_triton(cache.k):
        cache.compact(rows)
        return
    n = int(rows.numel())
    if n:
        src = rows.to(device=cache.k.device, dtype=torch.int64) + cache.length
        kv_compact(cache.k, cache.v, src, cache.length, n)
    cache.length += n
