"""Forward KL of the draft head against the target, per row, with its gradient, in two passes.

Training compares the head's logits s with the target's logits t on every labelled draft slot:
KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), p = softmax(t / T), q = softmax(s / T), scaled by T². The
logits are (rows, vocab) — about 15,000 × 49,152 per GPU and step, 1.5 GB in bf16 — and the
PyTorch form (upcast, two log-softmaxes, kl_div, their backward) sweeps tensors of that size through
memory a dozen times per step. Here one program per row reads s and t twice: pass 1 keeps running
maxima and sums for both log-sum-exps, pass 2 adds up the row's KL and writes its gradient
d(T²·KL)/ds = T·(q − p) in s's dtype, so the backward is one scaling of that tensor. fp32
arithmetic throughout; nothing is kept for the backward but the gradient.

`kl_rows_reference` is the same function in plain PyTorch; `kl_rows` picks the kernel (CUDA, or the
Triton interpreter in tests) and is differentiable with respect to s (t is the frozen teacher's).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import is_interpreted

MAX_BLOCK = 4096


@triton.jit
def _online(d, m, x):
    """One step of a per-lane running sum d of exp(x − m) under the running max m. A lane that has
    seen only −inf keeps d = 0 (its max is replaced by 0 in the exponents: no −inf − (−inf))."""
    m_new = tl.maximum(m, x)
    ref = tl.where(m_new > float("-inf"), m_new, 0.0)
    return d * tl.exp(m - ref) + tl.exp(x - ref), m_new


@triton.jit
def _lse(d, m):
    """log Σ exp over the lanes of a per-lane (sum, max) pair."""
    top = tl.max(m, 0)
    return top + tl.log(tl.sum(d * tl.exp(m - top), 0))


@triton.jit
def _kl_rows_kernel(S, T_, G, L, V, ss, st, sg, inv_t, t_scale, t_sq,
                    BLOCK: tl.constexpr, WRITE_GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    s_row = S + row * ss
    t_row = T_ + row * st
    m_s = tl.full((BLOCK,), float("-inf"), tl.float32)   # per lane: running max and sum of exp
    m_t = tl.full((BLOCK,), float("-inf"), tl.float32)
    d_s = tl.zeros((BLOCK,), tl.float32)
    d_t = tl.zeros((BLOCK,), tl.float32)
    for v0 in range(0, V, BLOCK):                      # pass 1: both log-sum-exps, online
        mask = v0 + offs < V
        s = tl.load(s_row + v0 + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        t = tl.load(t_row + v0 + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        d_s, m_s = _online(d_s, m_s, s)
        d_t, m_t = _online(d_t, m_t, t)
    lse_s = _lse(d_s, m_s)
    lse_t = _lse(d_t, m_t)
    acc = tl.zeros((BLOCK,), tl.float32)
    for v0 in range(0, V, BLOCK):                      # pass 2: the row's KL and its gradient
        mask = v0 + offs < V
        ls = tl.load(s_row + v0 + offs, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_s
        lt = tl.load(t_row + v0 + offs, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_t
        p = tl.exp(lt)
        acc += tl.where(mask, p * (lt - ls), 0.0)
        if WRITE_GRAD:
            g = (tl.exp(ls) - p) * t_scale
            tl.store(G + row * sg + v0 + offs, g.to(G.dtype.element_ty), mask=mask)
    tl.store(L + row, tl.sum(acc, 0) * t_sq)


def kl_rows_reference(s: torch.Tensor, t: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(R,) fp32: T² · KL(softmax(t / T) ‖ softmax(s / T)) per row, in plain PyTorch."""
    logq = torch.log_softmax(s.float() / temperature, dim=-1)
    logp = torch.log_softmax(t.float() / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1) * temperature ** 2


def usable(device: torch.device) -> bool:
    """Whether the kernel can run for tensors on `device` (a GPU, or any device under the interpreter)."""
    return torch.device(device).type == "cuda" or is_interpreted(_kl_rows_kernel)


def _launch(s: torch.Tensor, t: torch.Tensor, temperature: float, grad: bool):
    if s.dim() != 2 or s.shape != t.shape:
        raise ValueError(f"s and t must be (rows, vocab) of one shape, got {tuple(s.shape)} and {tuple(t.shape)}")
    if s.device != t.device or not usable(s.device):
        raise ValueError(f"s on {s.device}, t on {t.device}: the kernel needs both on one CUDA device")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = s.contiguous(), t.contiguous()
    r, v = s.shape
    loss = torch.empty(r, device=s.device, dtype=torch.float32)
    g = torch.empty_like(s) if grad else loss                    # (a placeholder when not written)
    if r == 0:
        return loss, g
    block = min(MAX_BLOCK, triton.next_power_of_2(max(v, 16)))
    _kl_rows_kernel[(r,)](s, t, g, loss, v, s.stride(0), t.stride(0), g.stride(0) if grad else 0,
                          1.0 / temperature, float(temperature), float(temperature) ** 2,
                          BLOCK=block, WRITE_GRAD=grad, num_warps=8 if block >= 2048 else 4)
    return loss, g


class _KLRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, temperature):
        loss, g = _launch(s, t, temperature, grad=s.requires_grad)
        ctx.save_for_backward(g if s.requires_grad else None)
        return loss

    @staticmethod
    def backward(ctx, grad_rows):
        g, = ctx.saved_tensors
        return g * grad_rows[:, None].to(g.dtype), None, None


def kl_rows(s: torch.Tensor, t: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(R,) fp32 per-row T² · KL(softmax(t / T) ‖ softmax(s / T)), differentiable in s (not in t)."""
    if t.requires_grad:
        raise ValueError("kl_rows does not differentiate the target's logits t")
    return _KLRows.apply(s, t, float(temperature))
