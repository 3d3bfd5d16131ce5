"""KV compaction: after a round, move the accepted path's K/V rows into contiguous slots.

The caches hold every layer in one tensor, (L, Hkv, S, D). Rows src_rows[:n] move to rows
dst_start .. dst_start + n - 1, for every layer and head, in ONE launch (one program per
(layer, head)); the other rows are left as they are. dst_start and n may be ints or 1-element
int32 / int64 device tensors, read in place (no host sync and no cast launch, so the move can sit
inside a CUDA graph); with a tensor n, only the first n of the src_rows.numel() listed rows move.
With `relative`, src_rows count from dst_start (the engine's accepted path: tree rows past the
prefix), and the kernel adds it.

In place, and safe for the overlaps that compaction makes: the kernel moves rows in chunks of
up to CHUNK rows, each chunk read completely before it is written. Within one chunk any
permutation is fine. Across chunks it needs what an accepted path gives: src_rows strictly
increasing and src_rows[i] >= dst_start + i (a later row is never a row already written).
`kv_compact_reference` (gather, then scatter) is exact for any rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kv_compact_reference(k_cache: torch.Tensor, v_cache: torch.Tensor, src_rows: torch.Tensor,
                         dst_start, n=None, relative: bool = False) -> None:
    """Plain PyTorch: gather the rows, then scatter them (rows >= n copy onto themselves)."""
    _check(k_cache, v_cache, src_rows, dst_start, n)
    m = src_rows.numel()
    r = torch.arange(m, device=k_cache.device)
    start = dst_start.reshape(()).long() if isinstance(dst_start, torch.Tensor) else int(dst_start)
    dst = r + start
    live = r < (n.reshape(()).long() if isinstance(n, torch.Tensor) else (m if n is None else int(n)))
    src = torch.where(live, src_rows.long() + (start if relative else 0), dst)
    for cache in (k_cache, v_cache):
        cache[:, :, dst] = cache[:, :, src]


@triton.jit(do_not_specialize=["dst_arg", "n_arg", "M", "H"])
def _kv_compact_kernel(K, V, Src, Dst, Num, dst_arg, n_arg, M, H,
                       skl, skh, sks, svl, svh, svs,
                       D: tl.constexpr, BLOCK_R: tl.constexpr, RELATIVE: tl.constexpr):
    pid = tl.program_id(0)
    layer = pid // H
    head = pid - layer * H
    kb = K + layer.to(tl.int64) * skl + head.to(tl.int64) * skh
    vb = V + layer.to(tl.int64) * svl + head.to(tl.int64) * svh
    dst0 = dst_arg + tl.load(Dst).to(tl.int32)    # int argument + device scalar (one is 0)
    n = tl.minimum(n_arg + tl.load(Num).to(tl.int32), M)
    d = tl.arange(0, D)
    for c in range(0, n, BLOCK_R):
        r = c + tl.arange(0, BLOCK_R)
        live = r < n
        src = tl.load(Src + r, mask=live, other=0).to(tl.int64)
        if RELATIVE:
            src += dst0
        kt = tl.load(kb + src[:, None] * sks + d[None, :], mask=live[:, None])
        vt = tl.load(vb + src[:, None] * svs + d[None, :], mask=live[:, None])
        tl.debug_barrier()  # the whole chunk is read before any of it is written
        dst = (dst0 + r).to(tl.int64)
        tl.store(kb + dst[:, None] * sks + d[None, :], kt, mask=live[:, None])
        tl.store(vb + dst[:, None] * svs + d[None, :], vt, mask=live[:, None])
        tl.debug_barrier()


def _check(k_cache, v_cache, src_rows, dst_start, n) -> None:
    if k_cache.dim() != 4 or tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"k_cache and v_cache must both be (L, Hkv, S, D); got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    if k_cache.dtype not in DTYPES or v_cache.dtype != k_cache.dtype:
        raise TypeError(f"caches must share one dtype of {DTYPES}; got {k_cache.dtype}, {v_cache.dtype}")
    if src_rows.dim() != 1 or src_rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"src_rows must be a 1-D int32/int64 tensor, got {src_rows.dtype} {tuple(src_rows.shape)}")
    dev = k_cache.device
    for name, t in (("v_cache", v_cache), ("src_rows", src_rows), ("dst_start", dst_start), ("n", n)):
        if isinstance(t, torch.Tensor):
            if t.device != dev:
                raise ValueError(f"{name} is on {t.device}, k_cache on {dev}")
            if name in ("dst_start", "n") and (t.numel() != 1 or t.dtype not in (torch.int32, torch.int64)):
                raise ValueError(f"a tensor {name} must hold one int32/int64 value")
    s = k_cache.shape[2]
    m = src_rows.numel()
    if not isinstance(n, torch.Tensor) and n is not None and not 0 <= int(n) <= m:
        raise ValueError(f"n = {n} must lie in [0, {m}] (the number of src_rows)")
    if not isinstance(dst_start, torch.Tensor):
        count = m if n is None or isinstance(n, torch.Tensor) else int(n)
        if int(dst_start) < 0 or int(dst_start) + count > s:
            raise ValueError(f"destination rows [{dst_start}, {int(dst_start) + count}) exceed the cache's {s} rows")


def kv_compact_triton(k_cache: torch.Tensor, v_cache: torch.Tensor, src_rows: torch.Tensor,
                      dst_start, n=None, relative: bool = False) -> None:
    """In-place move of rows src_rows[:n] (+ dst_start when `relative`) to dst_start.. in every layer
    and head (one launch)."""
    _check(k_cache, v_cache, src_rows, dst_start, n)
    d = k_cache.shape[-1]
    if d & (d - 1) or d > 512:
        raise ValueError(f"head_dim must be a power of two <= 512, got {d}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or src_rows.stride(0) != 1:
        raise ValueError("k_cache, v_cache (last dim) and src_rows must be contiguous")
    m = src_rows.numel()
    if m == 0 or (n is not None and not isinstance(n, torch.Tensor) and int(n) == 0):
        return
    layers, heads = k_cache.shape[:2]
    dst_t = isinstance(dst_start, torch.Tensor)
    n_t = isinstance(n, torch.Tensor)
    zero = _zero(k_cache.device)
    _kv_compact_kernel[(layers * heads,)](
        k_cache, v_cache, src_rows, dst_start if dst_t else zero, n if n_t else zero,
        0 if dst_t else int(dst_start), 0 if n_t else (m if n is None else int(n)), m, heads,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), **launch_meta(m, d, relative))


def launch_meta(m: int, d: int, relative: bool) -> dict:
    """`_kv_compact_kernel`'s compile-time launch arguments for m listed rows of head size d (also
    `tests/sm90_compile.py`'s)."""
    return dict(D=d, BLOCK_R=min(CHUNK, max(2, triton.next_power_of_2(m))), RELATIVE=relative, num_warps=4,
                num_stages=1)


_ZEROS: dict[torch.device, torch.Tensor] = {}


def _zero(device: torch.device) -> torch.Tensor:
    """A device int32 0, read by the kernel in place of a scalar given as a host int."""
    if device not in _ZEROS:
        _ZEROS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _ZEROS[device]
