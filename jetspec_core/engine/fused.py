"""Two small fused kernels for the engine's hot path: RMSNorm and SiLU·mul.

A graphed decode step of a small model is bound by the number of kernels, not by bytes: the
plain-PyTorch RMSNorm is seven kernels and SiLU·mul two. These Triton kernels do each in one,
with the same rounding as the reference (`jetspec_core.model.rms_norm`: fp32 statistics, cast
to the activation dtype, then times the weight; SiLU in fp32, rounded, then times `up`).

`Fused` picks the implementation once: Triton on CUDA when it compiles and matches the
reference on a probe, plain PyTorch otherwise (always on CPU). `Fused(force="torch")` lets
tests and benchmarks switch it off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import rms_norm as rms_norm_ref

try:  # triton is optional on CPU machines
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the CPU reference path needs no triton
    triton = None


def silu_mul_ref(gu: torch.Tensor) -> torch.Tensor:
    """gu (R, 2I) = [gate | up] → silu(gate) * up (R, I)."""
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


if triton is not None:
    @triton.jit
    def _rms_kernel(X, W, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
        xf = x.to(tl.float32)
        var = tl.sum(xf * xf, axis=0) / n_cols
        xn = (xf * (1.0 / tl.sqrt(var + eps))).to(X.dtype.element_ty)  # cast as the reference does
        w = tl.load(W + cols, mask=m, other=0.0)
        y = xn.to(tl.float32) * w.to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _silu_mul_kernel(GU, Y, n_cols, stride_gu, stride_y, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        start = tl.program_id(1) * BLOCK
        cols = start + tl.arange(0, BLOCK)
        m = cols < n_cols
        g = tl.load(GU + row * stride_gu + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(GU + row * stride_gu + n_cols + cols, mask=m, other=0.0).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(Y.dtype.element_ty).to(tl.float32)
        tl.store(Y + row * stride_y + cols, (s * u).to(Y.dtype.element_ty), mask=m)


def rms_norm_triton(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x (R, H) with unit stride in H; w (H,) → (R, H) in the reference's result dtype."""
    assert x.dim() == 2 and x.stride(-1) == 1 and w.is_contiguous() and w.shape[0] == x.shape[1]
    out_dtype = torch.promote_types(x.dtype, w.dtype)
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    block = triton.next_power_of_2(x.shape[1])
    _rms_kernel[(x.shape[0],)](x, w, y, x.shape[1], x.stride(0), y.stride(0), eps,
                               BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return y


def silu_mul_triton(gu: torch.Tensor) -> torch.Tensor:
    """gu (R, 2I) contiguous → (R, I)."""
    assert gu.dim() == 2 and gu.is_contiguous() and gu.shape[1] % 2 == 0
    r, i = gu.shape[0], gu.shape[1] // 2
    y = torch.empty(r, i, device=gu.device, dtype=gu.dtype)
    block = 1024
    _silu_mul_kernel[(r, triton.cdiv(i, block))](gu, y, i, gu.stride(0), y.stride(0), BLOCK=block,
                                                 num_warps=4)
    return y


class Fused:
    """The RMSNorm / SiLU·mul pair the engine calls; Triton where it works, PyTorch elsewhere."""

    def __init__(self, device: torch.device, dtype: torch.dtype, force: str | None = None):
        self.kind = "torch"
        self.note = "cpu" if device.type != "cuda" else ""
        if force == "torch" or device.type != "cuda" or triton is None:
            return
        try:
            self._probe(device, dtype)
            self.kind = "triton"
        except Exception as e:  # noqa: BLE001 - any failure means: use the reference ops
            self.note = f"triton fused ops disabled: {type(e).__name__}: {e}"[:300]

    @staticmethod
    def _probe(device, dtype) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        for h in (64, 576, 4096):
            x = torch.randn(5, h, device=device, generator=g).to(dtype)
            w = torch.randn(h, device=device, generator=g).to(dtype)
            ref, got = rms_norm_ref(x, w, 1e-6), rms_norm_triton(x, w, 1e-6)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            if not torch.allclose(ref.float(), got.float(), atol=tol, rtol=tol):
                raise RuntimeError(f"rms_norm probe mismatch at H={h}")
            gu = torch.randn(5, 2 * h, device=device, generator=g).to(dtype)
            if not torch.allclose(silu_mul_ref(gu).float(), silu_mul_triton(gu).float(), atol=tol, rtol=tol):
                raise RuntimeError(f"silu_mul probe mismatch at I={h}")

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        """x (..., H): RMSNorm over the last dim."""
        if self.kind == "triton":
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            return rms_norm_triton(x2, w, eps).view(*shape[:-1], shape[-1])
        return rms_norm_ref(x, w, eps)

    def silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        if self.kind == "triton":
            return silu_mul_triton(gu.contiguous())
        return silu_mul_ref(gu)
