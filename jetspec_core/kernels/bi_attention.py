"""Batch-invariant tree attention: each query reduces over its keys in position order.

For greedy JetSpec to equal plain greedy decoding bit for bit, a tree node at depth d over a
prefix of P cached rows must get exactly the attention output that plain decoding computes for
the same token at position t = P + d, where the d ancestors are not tree rows but ordinary cache
rows P .. t − 1. `tree_attention.py` cannot give that: it walks the prefix in split-K chunks
sized by N and the GPU, then the tree rows in tree order, so the reduction order depends on N,
on the cache capacity and on where the prefix/tree boundary falls.

Here every query row (one node, the G query heads of one KV head) walks its *logical* key
sequence — positions 0 .. t, its own position included — in fixed blocks of `BLOCK_N` aligned at
position 0. Position j < P is cache row j; position P + e (e ≤ d) is the tree row of the node's
ancestor at depth e, looked up in `paths` (N, ≥ N) int32, row i = tree rows of i's ancestors by
depth. So the keys, their order, the blocks and the masks are a function of t alone: the same
for a plain step (N = 1, d = 0) and for any node of any tree. Blocks are dealt round-robin to a
fixed number of `SPLITS` programs by their absolute index (block b → split b % SPLITS, for
parallelism at N = 1), and `_combine` merges the splits in a fixed order; an empty split adds
exact zeros. No tile size, split count or loop bound depends on N, on other rows or on the
cache capacity.

fp32 online softmax in base 2; Q·K and P·V on the tensor cores for 16-bit inputs (P rounded to
the input dtype, as flash attention does), exact fp32 products for fp32 inputs and in the
interpreter. `tree_paths(anc)` builds (paths, depth) from an ancestor-or-self mask on the device
(no host sync). `bi_tree_attention_reference` is the same function in plain PyTorch.
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from . import is_interpreted

from .tree_attention import _softmax_step, check_heads, check_prefix  # shared update and checks

LOG2E = 1.4426950408889634
BLOCK_N = 64
SPLITS = 4
NUM_WARPS = 4


def tree_paths(anc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """anc (N, N) bool ancestor-or-self → paths (N, N + 1) int32 (paths[i, e] = the ancestor of i
    at depth e for e ≤ depth[i]; column N is scratch) and depth (N,) int32. Tensor ops only."""
    if anc.dim() != 2 or anc.shape[0] != anc.shape[1] or anc.dtype != torch.bool:
        raise ValueError(f"anc must be a square bool matrix, got {tuple(anc.shape)} {anc.dtype}")
    n = anc.shape[0]
    depth = anc.sum(-1) - 1                                                   # (N,)
    col = torch.where(anc, depth[None, :], n)                                 # ancestor j → column depth[j]
    src = torch.arange(n, device=anc.device, dtype=torch.int32).expand(n, n)
    paths = torch.zeros(n, n + 1, dtype=torch.int32, device=anc.device).scatter_(1, col, src)
    return paths, depth.to(torch.int32)


def bi_tree_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len,
                                paths: torch.Tensor, depth: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The same function in plain PyTorch, node by node: q (N, Hq, D), k/v (Hkv, S, D) → (N, Hq, D)."""
    n, hq, d = q.shape
    hkv = k.shape[0]
    p = int(prefix_len)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    for i in range(n):
        e = int(depth[i])
        rows = torch.cat([torch.arange(p, device=q.device), p + paths[i, :e + 1].long()])   # keys 0..t
        kk = k[:, rows].float().repeat_interleave(hq // hkv, 0)                              # (Hq, t+1, D)
        vv = v[:, rows].float().repeat_interleave(hq // hkv, 0)
        s = torch.einsum("hd,htd->ht", q[i].float(), kk) * scale
        out[i] = torch.einsum("ht,htd->hd", torch.softmax(s, -1), vv).to(q.dtype)
    return out


@triton.jit
def _block(q, kb, vb, Path, node_off, plen, last, start, m_i, l_i, acc, sks, svs, qk_scale,
           D: tl.constexpr, BN: tl.constexpr, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    """One block of key positions [start, start + BN): gather the rows, online-softmax update."""
    d = tl.arange(0, D)
    pos = start + tl.arange(0, BN)
    live = pos <= last
    tree = live & (pos >= plen)
    e = tl.maximum(pos - plen, 0)
    anc = tl.load(Path + node_off + e, mask=tree, other=0)
    row = tl.where(tree, plen + anc, pos).to(tl.int64)                       # cache row of each position
    kt = tl.load(kb + row[None, :] * sks + d[:, None], mask=live[None, :], other=0.0)   # (D, BN)
    vt = tl.load(vb + row[:, None] * svs + d[None, :], mask=live[:, None], other=0.0)   # (BN, D)
    if DOT_FP32:
        s = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision=PREC)
    else:
        s = tl.dot(q, kt)
    s = tl.where(live[None, :], s * qk_scale, float("-inf"))
    return _softmax_step(s, vt, m_i, l_i, acc, DOT_FP32, PREC)


@triton.jit
def _partials(node, head, G, SPLITS: tl.constexpr):
    """Offset of split 0 of (node, head) in the (N, Hq, SPLITS) partial arrays (program axis 1: kv heads)."""
    return ((node * tl.num_programs(1) * G + head) * SPLITS).to(tl.int64)


@triton.jit(do_not_specialize=["plen_arg", "spn"])
def _bi_attn_kernel(Q, K, V, Path, Depth, Plen, Op, Mp, Lp, plen_arg, G,
                    sqn, sqh, skh, sks, svh, svs, spn, qk_scale,
                    D: tl.constexpr, BLOCK_G: tl.constexpr, BN: tl.constexpr, SPLITS: tl.constexpr,
                    DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    node = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    g = tl.arange(0, BLOCK_G)
    gmask = g < G
    d = tl.arange(0, D)
    head = kvh * G + g
    q = tl.load(Q + node.to(tl.int64) * sqn + head[:, None] * sqh + d[None, :], mask=gmask[:, None], other=0.0)
    plen = plen_arg + tl.load(Plen)              # an int argument or a device scalar (the other is 0)
    last = plen + tl.load(Depth + node)          # the query's own position: it sees keys 0 .. last
    kb = K + kvh.to(tl.int64) * skh
    vb = V + kvh.to(tl.int64) * svh
    node_off = node.to(tl.int64) * spn
    m_i = tl.full([BLOCK_G], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    for start in range(split * BN, last + 1, SPLITS * BN):                   # blocks split, split + SPLITS, ...
        m_i, l_i, acc = _block(q, kb, vb, Path, node_off, plen, last, start, m_i, l_i, acc, sks, svs,
                               qk_scale, D, BN, DOT_FP32, PREC)
    part = _partials(node, head, G, SPLITS) + split
    tl.store(Mp + part, m_i, mask=gmask)
    tl.store(Lp + part, l_i, mask=gmask)
    tl.store(Op + part[:, None] * D + d[None, :], acc, mask=gmask[:, None])


@triton.jit
def _combine_kernel(Out, Op, Mp, Lp, G, son, soh, D: tl.constexpr, BLOCK_G: tl.constexpr,
                    SPLITS: tl.constexpr):
    """Merge the SPLITS partial (max, sum, weighted values) of one node's G heads, split 0 first."""
    node = tl.program_id(0)
    kvh = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    gmask = g < G
    d = tl.arange(0, D)
    head = kvh * G + g
    base = _partials(node, head, G, SPLITS)
    m = tl.full([BLOCK_G], -1.0e30, tl.float32)
    for s in tl.static_range(SPLITS):
        m = tl.maximum(m, tl.load(Mp + base + s, mask=gmask, other=-1.0e30))
    l_tot = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    for s in tl.static_range(SPLITS):
        w = tl.exp2(tl.load(Mp + base + s, mask=gmask, other=-1.0e30) - m)
        l_tot += w * tl.load(Lp + base + s, mask=gmask, other=0.0)
        acc += w[:, None] * tl.load(Op + (base + s)[:, None] * D + d[None, :], mask=gmask[:, None], other=0.0)
    out = acc / tl.where(l_tot > 0, l_tot, 1.0)[:, None]
    tl.store(Out + node.to(tl.int64) * son + head[:, None] * soh + d[None, :], out.to(Out.dtype.element_ty),
             mask=gmask[:, None])


_ZEROS: dict[torch.device, torch.Tensor] = {}


def _zero(device: torch.device) -> torch.Tensor:
    if device not in _ZEROS:
        _ZEROS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _ZEROS[device]


def _check(q, k, v, prefix_len, paths, depth) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q (N, Hq, D), k and v (Hkv, S, D) expected; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    n, hq, d = q.shape
    s = k.shape[1]
    check_heads(q, hq, n, d, k, v)
    for name, t in (("q", q), ("k", k), ("v", v), ("paths", paths), ("depth", depth)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride(-1)})")
    if paths.dtype != torch.int32 or paths.dim() != 2 or paths.shape[0] != n or paths.shape[1] < n:
        raise ValueError(f"paths must be int32 (N, >= N) = ({n}, >= {n}); got {paths.dtype} {tuple(paths.shape)}")
    if depth.dtype != torch.int32 or tuple(depth.shape) != (n,):
        raise ValueError(f"depth must be int32 ({n},); got {depth.dtype} {tuple(depth.shape)}")
    check_prefix(prefix_len, q, n, s)


def bi_tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len, paths: torch.Tensor,
                      depth: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """q (N, Hq, D) (any row/head strides); k, v (Hkv, S, D) with the prefix in rows
    [0, prefix_len) and the tree in rows [prefix_len, prefix_len + N); prefix_len an int or a
    1-element int tensor on q's device; paths, depth from `tree_paths`. Returns (N, Hq, D)
    contiguous in q's dtype; node i's rows are bit-identical to a plain step at its position."""
    _check(q, k, v, prefix_len, paths, depth)
    n, hq, d = q.shape
    hkv = k.shape[0]
    g = hq // hkv
    block_g = max(16, triton.next_power_of_2(g))                  # a dot needs >= 16 rows
    tensor_plen = isinstance(prefix_len, torch.Tensor)
    plen_t = prefix_len.reshape(1).to(torch.int32) if tensor_plen else _zero(q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out = torch.empty(n, hq, d, device=q.device, dtype=q.dtype)
    op = torch.empty(n, hq, SPLITS, d, device=q.device, dtype=torch.float32)   # per-split partials
    mp = torch.empty(n, hq, SPLITS, device=q.device, dtype=torch.float32)
    lp = torch.empty_like(mp)
    dot_fp32 = is_interpreted(_bi_attn_kernel) or q.dtype == torch.float32
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        _bi_attn_kernel[(n, hkv, SPLITS)](
            q, k, v, paths, depth, plen_t, op, mp, lp, 0 if tensor_plen else int(prefix_len), g,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), paths.stride(0),
            scale * LOG2E, D=d, BLOCK_G=block_g, BN=BLOCK_N, SPLITS=SPLITS, DOT_FP32=dot_fp32, PREC="ieee",
            num_warps=NUM_WARPS, num_stages=2)
        _combine_kernel[(n, hkv)](out, op, mp, lp, g, out.stride(0), out.stride(1), D=d, BLOCK_G=block_g,
                                  SPLITS=SPLITS, num_warps=NUM_WARPS)
    return out
