"""Small fused kernels for the engine's hot path: RMSNorm, SiLU·mul and RoPE + K/V cache write.

A graphed decode step of a small model is bound by the number of kernels, not by bytes: the
plain-PyTorch RMSNorm is seven kernels, SiLU·mul two, and the rotate-half RoPE of q and k plus
the two K/V cache writes (with Qwen3's per-head q/k RMSNorm in front) nine to eleven per layer.
These Triton kernels do each in one, with the same rounding as the reference
(`jetspec_core.model.rms_norm`: fp32 statistics, cast to the activation dtype, then times the
weight; SiLU in fp32, rounded, then times `up`; RoPE as `x·cos + rot(x)·sin` with each product
and the sum rounded to the activation dtype, as PyTorch's elementwise ops do).

`row_stats` reads each row of the verify logits once for both things a round needs from them: the
argmax (the target's greedy choice, the first index among equal maxima like `torch.argmax`) and
the log-sum-exp (for the record's target probabilities); PyTorch needs five passes for these.

`rope_kv` works in place on one layer's packed projection output qkv (N, Hq + 2·Hkv, D): the
q heads and k heads are (optionally normed and) rotated where they lie, and the k and v heads
are written to the cache rows [start, start + N); the rotary position of row i is pos[i] (a
tree row's position is prefix + its depth, not its cache row), or start + i when pos is None (a
chain of rows: the draft block, the draft context).

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


    @triton.jit
    def _rope_kv_kernel(QKV, stride_row, stride_layer, POS, START, COS, SIN, NW, stride_nl, K, V, stride_kl,
                        stride_kh, stride_ks, n_q, n_kv, eps, D: tl.constexpr, HB: tl.constexpr, NORM: tl.constexpr,
                        POS_ROWS: tl.constexpr):
        # one program per row, block of HB heads of one kind (q blocks, then k blocks, then v) and layer
        row = tl.program_id(0)
        blk = tl.program_id(1)
        lay = tl.program_id(2).to(tl.int64)
        NW += lay * stride_nl
        K += lay * stride_kl
        V += lay * stride_kl
        nqb = tl.cdiv(n_q, HB)
        nkb = tl.cdiv(n_kv, HB)
        cols = tl.arange(0, D)
        hb = tl.arange(0, HB)
        base = QKV + row.to(tl.int64) * stride_row + lay * stride_layer
        dst = (tl.load(START) + row).to(tl.int64) * stride_ks
        if blk >= nqb + nkb:          # v heads: a copy into the cache
            local = (blk - nqb - nkb) * HB + hb
            m = (local < n_kv)[:, None]
            vals = tl.load(base + (n_q + n_kv + local)[:, None] * D + cols[None, :], mask=m)
            tl.store(V + local[:, None] * stride_kh + dst + cols[None, :], vals, mask=m)
        else:                         # q or k heads: (norm,) rotate in place (k: also into the cache)
            is_k = blk >= nqb
            local = tl.where(is_k, blk - nqb, blk) * HB + hb
            m = (local < tl.where(is_k, n_kv, n_q))[:, None]
            src = base + (tl.where(is_k, n_q, 0) + local)[:, None] * D
            dt = QKV.dtype.element_ty
            half: tl.constexpr = D // 2
            partner = (cols + half) % D                  # rotate-half: rot(x)[j] = ±x[partner[j]]
            x = tl.load(src + cols[None, :], mask=m, other=0.0).to(tl.float32)      # (HB, D)
            xp = tl.load(src + partner[None, :], mask=m, other=0.0).to(tl.float32)
            if NORM:                                     # per-head RMSNorm (q_norm / k_norm)
                wo = is_k.to(tl.int32) * D
                inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)                 # (HB,)
                w = tl.load(NW + wo + cols).to(tl.float32)[None, :]
                wp = tl.load(NW + wo + partner).to(tl.float32)[None, :]
                x = ((x * inv[:, None]).to(dt).to(tl.float32) * w).to(dt).to(tl.float32)
                xp = ((xp * inv[:, None]).to(dt).to(tl.float32) * wp).to(dt).to(tl.float32)
            xp = tl.where(cols[None, :] < half, -xp, xp)
            if POS_ROWS:                                 # a chain: the position is the cache row
                pos = (tl.load(START) + row).to(tl.int64) * D
            else:
                pos = tl.load(POS + row).to(tl.int64) * D
            c = tl.load(COS + pos + cols).to(tl.float32)[None, :]
            s = tl.load(SIN + pos + cols).to(tl.float32)[None, :]
            y = ((x * c).to(dt).to(tl.float32) + (xp * s).to(dt).to(tl.float32)).to(dt)
            tl.store(src + cols[None, :], y, mask=m)
            if is_k:
                tl.store(K + local[:, None] * stride_kh + dst + cols[None, :], y, mask=m)

    @triton.jit
    def _row_stats_kernel(X, stride, n_cols, ARG, LSE, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = X + row.to(tl.int64) * stride
        cols = tl.arange(0, BLOCK)
        m = tl.full((), float("-inf"), tl.float32)
        acc = tl.zeros((), tl.float32)
        best = tl.zeros((), tl.int32)
        for start in range(0, n_cols, BLOCK):
            x = tl.load(base + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(tl.float32)
            bm = tl.max(x, axis=0)
            bi = tl.argmax(x, axis=0)                     # first index of the block's maximum
            best = tl.where(bm > m, start + bi, best)     # strictly greater: the earlier block keeps ties
            m_new = tl.maximum(m, bm)
            acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        tl.store(ARG + row, best.to(tl.int64))
        tl.store(LSE + row, m + tl.log(acc))


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


def row_stats_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (R, V) → argmax (R,) int64, log-sum-exp (R,) float32."""
    return x.argmax(-1), torch.logsumexp(x.float(), dim=-1)


def row_stats_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass per row of `_row_stats_kernel` (x (R, V) with unit stride in V)."""
    assert x.dim() == 2 and x.stride(1) == 1
    r, v = x.shape
    arg = torch.empty(r, dtype=torch.int64, device=x.device)
    lse = torch.empty(r, dtype=torch.float32, device=x.device)
    if r:
        _row_stats_kernel[(r,)](x, x.stride(0), v, arg, lse, BLOCK=4096, num_warps=8)
    return arg, lse


def rope_kv_reference(qkv: torch.Tensor, n_q: int, pos: torch.Tensor | None, start: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      norm_w: torch.Tensor | None, eps: float, rms=rms_norm_ref) -> None:
    """Plain PyTorch `rope_kv`: qkv (N, Hq+2Hkv, D) in place; cos/sin (S, D) tables; pos (N,) rotary
    positions (None: start + row); rows [start, start + N) of k_cache / v_cache (Hkv, S, D) get the k and v heads;
    norm_w (2·D,) = [q_norm | k_norm] or None.

    Several layers at once: qkv (N, L, Hq+2Hkv, D), caches (L, Hkv, S, D), norm_w (L, 2·D) or None;
    layer l's heads go to its caches, normed with its weights."""
    if qkv.dim() == 4:
        for li in range(qkv.shape[1]):
            rope_kv_reference(qkv[:, li], n_q, pos, start, cos, sin, k_cache[li], v_cache[li],
                              None if norm_w is None else norm_w[li], eps, rms)
        return
    n, h, d = qkv.shape
    n_kv = (h - n_q) // 2
    qk = qkv[:, :n_q + n_kv]
    if norm_w is not None:
        k = rms(qk[:, n_q:], norm_w[d:], eps)
        qk = torch.cat([rms(qk[:, :n_q], norm_w[:d], eps), k], dim=1) if n_q else k
    if pos is None:
        pos = start.reshape(()) + torch.arange(n, device=qkv.device)
    c, s = cos[pos][:, None], sin[pos][:, None]
    rot = torch.cat([-qk[..., d // 2:], qk[..., :d // 2]], dim=-1)
    qkv[:, :n_q + n_kv] = qk * c + rot * s
    rows = start.reshape(()) + torch.arange(n, device=qkv.device)
    k_cache.index_copy_(1, rows, qkv[:, n_q:n_q + n_kv].transpose(0, 1))
    v_cache.index_copy_(1, rows, qkv[:, n_q + n_kv:].transpose(0, 1))


ROPE_TILE = 1024  # elements per rope_kv program: 16 heads of 64, 8 of 128 (one program per head was
                  # 8 µs a call for 256 rows of a Qwen3-8B layer on an H200, mostly launch-bound)


def rope_kv_triton(qkv: torch.Tensor, n_q: int, pos: torch.Tensor | None, start: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   norm_w: torch.Tensor | None, eps: float) -> None:
    """One launch of `_rope_kv_kernel` (arguments as `rope_kv_reference`; several layers in the one launch
    when qkv has a layer axis)."""
    if qkv.dim() == 3:  # one layer: a layer axis of length 1
        qkv, k_cache, v_cache = qkv[:, None], k_cache[None], v_cache[None]
        norm_w = None if norm_w is None else norm_w.reshape(1, -1)
    n, n_l, h, d = qkv.shape
    n_kv = (h - n_q) // 2
    assert h == n_q + 2 * n_kv and d & (d - 1) == 0 and qkv.stride(3) == 1 and qkv.stride(2) == d
    assert cos.is_contiguous() and sin.is_contiguous() and cos.shape[1] == d and (pos is None or pos.shape == (n,))
    assert k_cache.shape == v_cache.shape and k_cache.shape[:2] == (n_l, n_kv) and k_cache.shape[3] == d
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1 and start.numel() == 1
    assert norm_w is None or (norm_w.shape == (n_l, 2 * d) and norm_w.stride(1) == 1)
    if n == 0:
        return
    meta = rope_launch_meta(d, norm_w is not None, pos is None)
    hb = meta["HB"]
    blocks = triton.cdiv(n_q, hb) + 2 * triton.cdiv(n_kv, hb)
    nw = norm_w if norm_w is not None else cos
    _rope_kv_kernel[(n, blocks, n_l)](qkv, qkv.stride(0), qkv.stride(1), start if pos is None else pos, start,
                                      cos, sin, nw,
                                      nw.stride(0) if norm_w is not None else 0, k_cache, v_cache,
                                      k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), n_q, n_kv, eps,
                                      **meta)


def rope_launch_meta(d: int, norm: bool, pos_rows: bool = False) -> dict:
    """`_rope_kv_kernel`'s compile-time launch arguments for head size d (also `tests/sm90_compile.py`'s)."""
    return dict(D=d, HB=max(1, ROPE_TILE // d), NORM=norm, POS_ROWS=pos_rows, num_warps=4, enable_fp_fusion=False)


class Fused:
    """The RMSNorm / SiLU·mul / RoPE + K/V write the engine calls; Triton where it works, PyTorch elsewhere."""

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
        for n_q, n_kv, d, norm, layers in ((9, 3, 64, False, None), (8, 2, 128, True, None), (0, 1, 64, True, None),
                                           (0, 3, 64, True, 3)):
            got, ref = (rope_case(device, dtype, n_q, n_kv, d, norm, layers=layers) for _ in range(2))
            rope_kv_reference(*ref)
            rope_kv_triton(*got)
            for i in (0, 6, 7):  # qkv, k_cache, v_cache
                if not torch.allclose(got[i].float(), ref[i].float(), atol=tol, rtol=tol):
                    raise RuntimeError(f"rope_kv probe mismatch at Hq={n_q} Hkv={n_kv} D={d} norm={norm}")
        logits = torch.randn(3, 10_000, device=device, generator=g)
        logits[1, 7_000] = logits[1, 9_000] = logits[1].max() + 1          # a tie: the first index wins
        (arg, lse), (ref_arg, ref_lse) = row_stats_triton(logits), row_stats_reference(logits)
        if not (torch.equal(arg, ref_arg) and torch.allclose(lse, ref_lse, atol=1e-4, rtol=1e-5)):
            raise RuntimeError("row_stats probe mismatch")

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        """x (..., H): RMSNorm over the last dim."""
        if self.kind == "triton":
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            return rms_norm_triton(x2, w, eps).view(*shape[:-1], shape[-1])
        return rms_norm_ref(x, w, eps)

    def rope_kv(self, qkv: torch.Tensor, n_q: int, pos: torch.Tensor | None, start: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, norm_w: torch.Tensor | None,
                eps: float) -> None:
        """In place on qkv (N, Hq+2Hkv, D): (q/k RMSNorm,) RoPE of q and k at positions pos (None: start + row), k and v
        written to cache rows [start, start + N) (see `rope_kv_reference`); with a layer axis, qkv
        (N, L, Hq+2Hkv, D), caches (L, Hkv, S, D) and norm_w (L, 2·D), all L layers in one launch."""
        if self.kind == "triton":
            return rope_kv_triton(qkv, n_q, pos, start, cos, sin, k_cache, v_cache, norm_w, eps)
        return rope_kv_reference(qkv, n_q, pos, start, cos, sin, k_cache, v_cache, norm_w, eps, rms=self.rms_norm)

    def row_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, V) fp32 logits → (argmax (R,) int64, log-sum-exp (R,) fp32)."""
        if self.kind == "triton" and x.stride(1) == 1:
            return row_stats_triton(x)
        return row_stats_reference(x)

    def silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        if self.kind == "triton":
            return silu_mul_triton(gu.contiguous())
        return silu_mul_ref(gu)


def rope_case(device, dtype, n_q: int, n_kv: int, d: int, norm: bool, n: int = 7, s: int = 40, seed: int = 0,
              layers: int | None = None):
    """Random arguments of `rope_kv` (the same for the same seed), for the probe and the tests; with
    `layers`, the several-layer form (a layer axis on qkv, the caches and the norm weights)."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, device=device, generator=g).to(dtype)  # noqa: E731
    cos, sin = r(s, d), r(s, d)
    pos = torch.randint(0, s, (n,), device=device, generator=g)
    start = torch.full((1,), 5, dtype=torch.long, device=device)
    lay = () if layers is None else (layers,)
    return (r(n, *lay, n_q + 2 * n_kv, d), n_q, pos, start, cos, sin, r(*lay, n_kv, s, d), r(*lay, n_kv, s, d),
            r(*lay, 2 * d) if norm else None, 1e-6)
