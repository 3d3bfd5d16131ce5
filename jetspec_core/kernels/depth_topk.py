"""The draft's per-depth top-K log-probs straight from its logits, in three small launches.

The tree builders need, for each depth d, the K most likely tokens and their log-probs
log_softmax(x_d). In PyTorch that is a log-softmax over the whole vocabulary (a (D, V) fp32
tensor written and read again) and `torch.topk` (a radix select of several launches): 74 µs a
round at SmolLM2's vocabulary and 120 µs at Qwen3-8B's on an H200 (`bench kernels --only topk`).
Sorting every chunk of the vocabulary instead (a first version of this kernel) was slower still
(82 / 250 µs at K = 16): a sort of thousands of keys per program costs more than the select.
Here nothing is sorted but a few candidates:

1. `_stats`, one program per (depth, chunk of C columns): the chunk's max m_c and Σ exp(x − m_c).
   C is chosen so that there are at least K chunks.
2. `_select`, same grid: T = the K-th largest chunk max of the depth. Those K maxima are K
   distinct entries ≥ T, so every entry of the top K is ≥ T; chunks whose max is below T stop at
   once, the others append their entries ≥ T (usually a handful: ~K to 3K per depth) to the
   depth's candidate list (an atomic counter gives each chunk its slots; slot order varies, the
   result does not).
3. `_merge`, one program per depth: the log-sum-exp from the (m_c, Σ_c), and the K best
   candidates by one int64 key whose ascending order is (logit descending, column ascending) —
   ties go to the lower token id, deterministically. Candidates are sorted in blocks of MB and
   merged into a running best K (one block unless ties or -inf rows make many entries ≥ T).
   log-prob = (x − max) − log Σ exp(x − max), the order of operations of `torch.log_softmax`.

Outputs lp (D, K) fp32 descending and tok (D, K) int64, as `torch.topk(torch.log_softmax(x), K)`
(values equal up to fp32 rounding of the sum; on exact ties the lower token id first).
`depth_topk_reference` is that PyTorch pair.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 2048   # widest chunk of vocabulary columns per program (a power of two)
MB = 128       # candidates sorted per block in the merge
SENTINEL = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # sorts after every real key


def depth_topk_reference(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """lp, tok = torch.topk(torch.log_softmax(x fp32), k) — the PyTorch path (CPU)."""
    return torch.topk(torch.log_softmax(x.float(), dim=-1), k, dim=-1)


@triton.jit
def _key(v, col):
    """One int64 whose ascending order is (v descending, col ascending)."""
    v = tl.where(v == 0.0, 0.0, v)                       # -0.0 and 0.0 are one value
    b = v.to(tl.int32, bitcast=True)
    a = tl.where(b < 0, b ^ 0x7FFFFFFF, b)               # integer order = float order
    return ((-1 - a).to(tl.int64) << 32) | col.to(tl.int64)


@triton.jit(do_not_specialize=["V", "sx", "NC"])
def _stats_kernel(X, M, S, CNT, V, sx, NC, C: tl.constexpr):
    row = tl.program_id(0)
    ch = tl.program_id(1)
    col = ch * C + tl.arange(0, C)
    ok = col < V
    x = tl.load(X + row.to(tl.int64) * sx + col, mask=ok, other=float("-inf")).to(tl.float32)
    m = tl.max(x, 0)
    m0 = tl.where(m == float("-inf"), 0.0, m)            # a chunk of -inf only: Σ = 0, not NaN
    tl.store(M + row * NC + ch, m)
    tl.store(S + row * NC + ch, tl.sum(tl.where(ok, tl.exp(x - m0), 0.0), 0))
    if ch == 0:
        tl.store(CNT + row, 0)


@triton.jit(do_not_specialize=["V", "sx", "K", "NC"])
def _select_kernel(X, M, CNT, CAND, V, sx, K, NC, C: tl.constexpr, NCB: tl.constexpr):
    row = tl.program_id(0)
    ch = tl.program_id(1)
    j = tl.arange(0, NCB)
    mj = tl.sort(tl.load(M + row * NC + j, mask=j < NC, other=float("-inf")), descending=True)
    t = tl.max(tl.where(j == K - 1, mj, float("-inf")), 0)   # the K-th largest chunk max (-inf: NC < K)
    if tl.load(M + row * NC + ch) >= t:
        col = ch * C + tl.arange(0, C)
        ok = col < V
        x = tl.load(X + row.to(tl.int64) * sx + col, mask=ok, other=float("-inf")).to(tl.float32)
        sel = ok & (x >= t)
        ii = sel.to(tl.int32)
        base = tl.atomic_add(CNT + row, tl.sum(ii, 0))
        pos = base + tl.cumsum(ii, 0) - ii
        tl.store(CAND + row.to(tl.int64) * V + pos, _key(x, col), mask=sel)


@triton.jit(do_not_specialize=["V", "sx", "K", "NC"])
def _merge_kernel(X, M, S, CNT, CAND, BEST, LP, TOK, V, sx, K, NC,
                  NCB: tl.constexpr, KB: tl.constexpr, MB_: tl.constexpr):
    row = tl.program_id(0)
    j = tl.arange(0, NCB)
    mj = tl.load(M + row * NC + j, mask=j < NC, other=float("-inf"))
    sj = tl.load(S + row * NC + j, mask=j < NC, other=0.0)
    m = tl.max(mj, 0)
    lse = tl.log(tl.sum(tl.where(mj == float("-inf"), 0.0, sj * tl.exp(mj - m)), 0))
    cnt = tl.load(CNT + row)
    b = tl.arange(0, MB_)
    w = tl.arange(0, 2 * KB)
    kb = tl.arange(0, KB)
    bb = BEST + row * 2 * KB
    tl.store(bb + w, tl.full([2 * KB], SENTINEL, tl.int64))
    cand = CAND + row.to(tl.int64) * V
    for start in range(0, cnt, MB_):  # the best KB so far in BEST[0, KB), a block's best in [KB, 2KB)
        kk = tl.sort(tl.load(cand + start + b, mask=start + b < cnt, other=SENTINEL))
        tl.store(bb + KB + b, kk, mask=b < KB)
        tl.debug_barrier()
        best = tl.sort(tl.load(bb + w, volatile=True))
        tl.debug_barrier()
        tl.store(bb + w, best, mask=w < KB)
        tl.debug_barrier()
    kk = tl.load(bb + kb, volatile=True)
    real = kk != SENTINEL                 # fewer than K candidates only when the row holds NaN
    col = tl.where(real, (kk - ((kk >> 32) << 32)).to(tl.int32), 0)
    take = kb < K
    x = tl.load(X + row.to(tl.int64) * sx + col, mask=take & real, other=float("nan")).to(tl.float32)
    tl.store(LP + row * K + kb, (x - m) - lse, mask=take)
    tl.store(TOK + row * K + kb, col.to(tl.int64), mask=take)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def plan(v: int, k: int) -> dict:
    """Chunk width C (a power of two, at least K chunks where the vocabulary allows), chunks NC
    and the block sizes for a (·, v) input and top-k."""
    c = min(CHUNK, max(16, 1 << max(0, (v // k).bit_length() - 1)))     # ≤ v / k, a power of two
    nc = triton.cdiv(v, c)
    return dict(C=c, NC=nc, NCB=_pow2(nc), KB=max(2, _pow2(k)), MB_=max(MB, _pow2(k)))


def depth_topk_triton(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (D, V) logits (any float dtype; log-probs work too) → lp (D, K) fp32 descending and
    tok (D, K) int64: the top-k of log_softmax(x) per row, ties to the lower column."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be (D, V), contiguous in its last dim; got {tuple(x.shape)}")
    d, v = x.shape
    if not 1 <= k <= v:
        raise ValueError(f"k must be in [1, {v}], got {k}")
    if k > 64:
        raise ValueError(f"k up to 64 is supported, got {k}")
    p = plan(v, k)
    dev = x.device
    lp = torch.empty(d, k, dtype=torch.float32, device=dev)
    tok = torch.empty(d, k, dtype=torch.int64, device=dev)
    if d == 0:
        return lp, tok
    m = torch.empty(d * p["NC"], dtype=torch.float32, device=dev)
    s = torch.empty_like(m)
    cnt = torch.empty(d, dtype=torch.int32, device=dev)
    cand = torch.empty(d * v, dtype=torch.int64, device=dev)
    best = torch.empty(d * 2 * p["KB"], dtype=torch.int64, device=dev)
    _stats_kernel[(d, p["NC"])](x, m, s, cnt, v, x.stride(0), p["NC"], C=p["C"], num_warps=4)
    _select_kernel[(d, p["NC"])](x, m, cnt, cand, v, x.stride(0), k, p["NC"], C=p["C"], NCB=p["NCB"],
                                 num_warps=4)
    _merge_kernel[(d,)](x, m, s, cnt, cand, best, lp, tok, v, x.stride(0), k, p["NC"],
                        NCB=p["NCB"], KB=p["KB"], MB_=p["MB_"], num_warps=4)
    return lp, tok
