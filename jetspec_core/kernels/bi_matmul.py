"""Batch-invariant matmul: y = x @ W.T (+ bias) (+ residual), each row computed the same way for any M.

cuBLAS picks its GEMM algorithm (tile shape, split-K, reduction order) from the problem size, so
the same row of x gives results that differ in the last bits when it is multiplied alone (M = 1,
a plain decoding step) or with 255 others (M = 256, a tree verify). In bf16 those bits compound
over the layers and flip the argmax at near-ties, and greedy JetSpec stops equalling plain
greedy decoding. This kernel makes the row's result independent of M and of the other rows:

- one tile config per weight (`BLOCK_M`, then `tile_for(N, K)`: BLOCK_N, BLOCK_K, warps) whatever
  M is — no autotune, no choice by M, no split-K; BLOCK_M is small because plain decoding has M = 1.
  What M may choose (`sub_for`) is how many BLOCK_M-row tiles one program holds: each tile is still
  its own dot with its own accumulator, so no row's instructions change;
- each output element is one fp32 accumulator that walks K from 0 in `BLOCK_K` steps, always in
  the same order, with the same dot instruction; rows past M are masked loads of zeros and never
  enter another row's sum. M is not a specialised kernel argument (no recompile for M = 1);
- the epilogue adds bias and residual in fp32 and rounds once (like cuBLAS `addmm`).

Inputs are fp32, fp16 or bf16 (x and W of one dtype), fp32 accumulation; the output is x's
dtype or fp32 (`out_dtype`, for logits). Under the Triton interpreter (CPU tests) the operands
are cast to fp32 before `tl.dot` (16-bit dots are not exact there); on a GPU fp32 operands use
exact fp32 products (`ieee`), 16-bit ones the tensor cores.

`bi_matmul_reference` is the same function in plain PyTorch (fp32 products, one rounding).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import is_interpreted

BLOCK_M, NUM_STAGES = 16, 3


def tile_for(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for a weight of n rows and k columns. It depends on the
    weight's shape only, never on M: every row of x meets the same tiles in the same order.

    From a sweep on an H200 (bf16, SmolLM2-135M's five weight shapes, BLOCK_N 16-128 × BLOCK_K
    32-128 × 2/4 warps, least time at M = 1 plus M = 64; `docs/measured/h200-bi-matmul-sweep.json`):
    narrow weights want many programs (BLOCK_N 32) and few K steps (BLOCK_K 128) — the M = 1 call
    of the 576-wide projections fell from 4.8-10.4 µs (64 × 64 tiles) to 3.5-6.2 µs, cuBLAS 3.2-4.5;
    the lm_head (49,152 rows) wants wide tiles (M = 64: 41 → 35 µs). The plain step went from 2.14
    to 1.71 ms (cuBLAS, not batch-invariant: 1.54 ms)."""
    if n >= 16384:
        return 128, 64, 4
    if n >= 2048:
        return 32, 128, 2
    return 32, 128, 4


SUBS = (1, 2)


def sub_for(m: int, n: int) -> int:
    """Row tiles per program for M rows of a weight of N rows: two for the lm_head-wide weights
    of tree verifies (each program loads its W tile once for both), one elsewhere. On an H200,
    bf16, SmolLM2's lm_head (49,152 × 576): 36.1 → 31.8 µs at M = 64, 127.4 → 100.8 at M = 256;
    the narrow weights got slower with 2 (and with 4, a variant since removed; `docs/measured/
    h200-bi-matmul-rows-per-program.json`)."""
    return 2 if m > BLOCK_M and n >= 16384 else 1


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def bi_matmul_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                        residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (M, K) @ w (N, K).T + bias (N,) + residual (M, N) in fp32, rounded once to out_dtype."""
    y = x.float() @ w.float().t()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype or x.dtype)


@triton.jit
def _row_tile(Y, Bias, Res, rm, rn, acc, M, N, srm, sym, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    """Epilogue of one BM-row tile: + bias, + residual in fp32, one rounding, masked store."""
    mmask = rm < M
    nmask = rn < N
    if HAS_BIAS:
        acc += tl.load(Bias + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if HAS_RES:
        acc += tl.load(Res + rm.to(tl.int64)[:, None] * srm + rn[None, :], mask=omask, other=0.0).to(tl.float32)
    tl.store(Y + rm.to(tl.int64)[:, None] * sym + rn[None, :], acc.to(Y.dtype.element_ty), mask=omask)


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    return tl.dot(a, b, acc)


@triton.jit(do_not_specialize=["M", "sxm", "srm", "sym"])
def _bi_matmul_kernel(X, W, Bias, Res, Y, M, N, K, sxm, swn, srm, sym,
                      HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, DOT_FP32: tl.constexpr,
                      PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      SUB: tl.constexpr):
    # SUB row tiles of BM rows per program share each loaded W tile; every tile is its own
    # (BM, BK) x (BK, BN) dot into its own accumulator, so a row meets the same instructions in
    # the same K order whatever SUB is (SUB only changes how many tiles one program holds)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    r0 = pid_m * (SUB * BM) + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    nmask = rn < N
    wp = W + rn.to(tl.int64)[None, :] * swn + rk[:, None]                  # (BK, BN): W.T's tile
    xp = X + r0.to(tl.int64)[:, None] * sxm + rk[None, :]                  # (BM, BK), tile 0
    step = BM * sxm                                                        # to the next row tile
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):                                            # always from 0, in order
        kmask = (k0 + rk < K)[None, :]
        b = tl.load(wp + k0, mask=(k0 + rk < K)[:, None] & nmask[None, :], other=0.0)
        a = tl.load(xp + k0, mask=(r0 < M)[:, None] & kmask, other=0.0)
        acc0 = _dot(a, b, acc0, DOT_FP32, PREC)
        if SUB > 1:
            a = tl.load(xp + step + k0, mask=(r0 + BM < M)[:, None] & kmask, other=0.0)
            acc1 = _dot(a, b, acc1, DOT_FP32, PREC)
    _row_tile(Y, Bias, Res, r0, rn, acc0, M, N, srm, sym, HAS_BIAS, HAS_RES)
    if SUB > 1:
        _row_tile(Y, Bias, Res, r0 + BM, rn, acc1, M, N, srm, sym, HAS_BIAS, HAS_RES)


def _check(x, w, bias, residual, out_dtype) -> None:
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(f"x (M, K) and w (N, K) expected; got x {tuple(x.shape)}, w {tuple(w.shape)}")
    m, k = x.shape
    n, kw = w.shape
    if kw != k:
        raise ValueError(f"x has K = {k} columns, w has {kw}")
    if x.dtype not in DTYPES or w.dtype != x.dtype:
        raise TypeError(f"x and w must share one dtype of {DTYPES}; got {x.dtype}, {w.dtype}")
    if out_dtype not in (None, x.dtype, torch.float32):
        raise TypeError(f"out_dtype must be x's dtype ({x.dtype}) or float32, got {out_dtype}")
    named = [("x", x), ("w", w)] + [(nm, t) for nm, t in (("bias", bias), ("residual", residual)) if t is not None]
    for name, t in named:
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride(-1)})")
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"bias must be a {x.dtype} ({n},) tensor; got {bias.dtype} {tuple(bias.shape)}")
    if residual is not None and (tuple(residual.shape) != (m, n) or residual.dtype not in DTYPES):
        raise ValueError(f"residual must be ({m}, {n}) of one of {DTYPES}; got {residual.dtype} "
                         f"{tuple(residual.shape)}")


def bi_matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
              residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
              tile: tuple[int, int, int] | None = None, sub: int | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ w (N, K).T (+ bias (N,)) (+ residual (M, N)) → (M, N) in out_dtype (default
    x's dtype; float32 allowed). Row i of the result is bit-identical for every M and whatever
    the other rows are (see the module doc). Last dims must have unit stride. `tile` (BLOCK_N,
    BLOCK_K, warps) overrides `tile_for` — for the tile sweep of `bench kernels --only gemm`; rows
    are invariant only among calls with the same tile. `sub` (row tiles per program, 1 or 2)
    overrides `sub_for(M, N)`; it never changes a row's result. `out`: an (M, N) tensor of that
    dtype with unit stride in N (any row stride, e.g. a column slice of a wider buffer) to write
    the result into, instead of a new one; it must not overlap x or the residual."""
    _check(x, w, bias, residual, out_dtype)
    m, k = x.shape
    n = w.shape[0]
    if out is not None and (tuple(out.shape) != (m, n) or out.dtype != (out_dtype or x.dtype)
                            or out.device != x.device or (out.numel() and out.stride(-1) != 1)):
        raise ValueError(f"out must be a ({m}, {n}) {out_dtype or x.dtype} tensor on {x.device} with unit "
                         f"stride in its last dim; got {out.dtype} {tuple(out.shape)} on {out.device}")
    y = torch.empty(m, n, device=x.device, dtype=out_dtype or x.dtype) if out is None else out
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.copy_(bi_matmul_reference(x, w, bias, residual, y.dtype))
    dot_fp32 = is_interpreted(_bi_matmul_kernel) or x.dtype == torch.float32
    bn, bk, warps = tile or tile_for(n, k)
    sub = sub or sub_for(m, n)
    if sub not in SUBS:
        raise ValueError(f"sub must be one of {SUBS}, got {sub}")
    grid = (triton.cdiv(m, sub * BLOCK_M), triton.cdiv(n, bn))
    args = (x, w, bias if bias is not None else y, residual if residual is not None else y, y, m, n, k,
            x.stride(0), w.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0))
    meta = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, DOT_FP32=dot_fp32,
                PREC="ieee", BM=BLOCK_M, BN=bn, BK=bk, SUB=sub, num_warps=warps,
                num_stages=NUM_STAGES)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        _bi_matmul_kernel[grid](*args, **meta)  # on x's GPU (a layer of a device_map model)
    return y
