"""Tree attention: the N tree nodes attend to the cached prefix plus their own ancestors.

Queries are the N nodes of one round (all query heads; grouped-query attention with any ratio
G = Hq / Hkv). Keys and values are one layer's cache rows: rows [0, prefix_len) are the
committed prefix, which every node sees whole, and rows [prefix_len, prefix_len + N) are the
tree's own rows, of which node i sees node j only when j is i or an ancestor of i. That tree
mask is given bit-packed: row i is ceil(N/32) int32 words and bit j % 32 of word j // 32 is set
when node j is i or an ancestor of i (`pack_ancestor_bits`). Bits are cheaper to read than a
dense (N, S) mask and, unlike parent pointers, need no walk inside the kernel. Nodes come
parent-before-child, so only bits j <= i are read (bits above the diagonal are ignored).

The kernel (flash-attention style, fp32 online softmax in base 2):
- one program per block of BLOCK_M query rows of one KV head; the rows of the G query heads
  that share a KV head are interleaved (row r = node * G + g), so every K/V tile is read once
  for all G heads;
- the prefix is cut into SPLITS chunks (split-K) so that short trees still fill the GPU; split 0
  also walks the tree rows (only up to the block's last node: ancestors come before children);
  `_combine` then merges the splits' partial results;
- `prefix_len` may be a 1-element CUDA tensor, read inside the kernel, so one CUDA graph serves
  every prefix length (the split sizes follow the actual length); a host int works too (one
  compiled variant serves both).

`tree_attention_reference` computes the same function in plain PyTorch (fp32, dense mask).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import is_interpreted

LOG2E = 1.4426950408889634
MIN_SPLIT_KEYS = 512   # a split-K chunk holds at least this many prefix rows
MAX_SPLITS = 16
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP32_PRECISION = "tf32x3"  # fp32 inputs: three tf32 products, about fp32 accuracy on tensor cores


# ---------------------------------------------------------------- bit-packed ancestor rows

def mask_words(n: int) -> int:
    """int32 words per bit-packed mask row of n nodes."""
    return (n + 31) // 32


def _check_ancestors(anc: torch.Tensor, contiguous: bool = False) -> tuple[int, int]:
    """anc must be a square bool matrix (contiguous: in row-major memory) → (N, words per row)."""
    if anc.dim() != 2 or anc.shape[0] != anc.shape[1] or anc.dtype != torch.bool or \
            (contiguous and not anc.is_contiguous()):
        need = "a contiguous square bool matrix" if contiguous else "a square bool matrix"
        raise ValueError(f"anc must be {need}, got {tuple(anc.shape)} {anc.dtype}")
    return anc.shape[0], mask_words(anc.shape[0])


def pack_ancestor_bits(anc: torch.Tensor) -> torch.Tensor:
    """anc (N, N) bool, [i, j] = j is i or an ancestor of i → (N, ceil(N/32)) int32 bit rows.

    Plain tensor ops on anc's device (no host sync, fine inside a CUDA graph)."""
    n, w = _check_ancestors(anc)
    padded = torch.zeros(n, w * 32, dtype=torch.int64, device=anc.device)
    padded[:, :n] = anc.to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64, device=anc.device) << torch.arange(32, device=anc.device)
    words = (padded.view(n, w, 32) * weights).sum(-1)                        # (N, W) in [0, 2^32)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


@triton.jit
def _pack_bits_kernel(ANC, OUT, N, W, RB: tl.constexpr, WB: tl.constexpr):
    """Rows [pid·RB, pid·RB + RB) of anc (N, N) uint8 → their (RB, W) int32 words: bit b of word
    w is anc[i, 32w + b] (the sum of distinct powers of two wraps like the int32 bit pattern)."""
    rows = tl.program_id(0) * RB + tl.arange(0, RB)
    w = tl.arange(0, WB)
    b = tl.arange(0, 32)
    cols = w[:, None] * 32 + b[None, :]                                          # (WB, 32)
    ok = (rows < N)[:, None, None] & (cols < N)[None, :, :]
    a = tl.load(ANC + rows[:, None, None] * N + cols[None, :, :], mask=ok, other=0)
    words = tl.sum(a.to(tl.int32) << b[None, None, :], axis=2)                   # (RB, WB)
    tl.store(OUT + rows[:, None] * W + w[None, :], words, mask=(rows < N)[:, None] & (w < W)[None, :])


def pack_launch_meta(n: int) -> dict:
    """`_pack_bits_kernel`'s constexprs and warps for n nodes: 16 rows a program while a row is
    one or two words, else 4 (also what tests/sm90_compile.py compiles)."""
    w = mask_words(n)
    return dict(RB=16 if w <= 2 else 4, WB=triton.next_power_of_2(w), num_warps=4)


def pack_ancestor_bits_triton(anc: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`pack_ancestor_bits` in one launch (the tensor ops take six): same words, bit for bit."""
    n, w = _check_ancestors(anc, contiguous=True)
    out = torch.empty(n, w, dtype=torch.int32, device=anc.device) if out is None else out
    meta = pack_launch_meta(n)
    _pack_bits_kernel[(triton.cdiv(n, meta["RB"]),)](anc.view(torch.uint8), out, n, w, **meta)
    return out


def unpack_ancestor_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_ancestor_bits`: (N, W) int32 → (N, n) bool."""
    j = torch.arange(n, device=bits.device)
    words = bits[:, j // 32].to(torch.int64)                                 # (N, n)
    return ((words >> (j % 32)) & 1).bool()


# ---------------------------------------------------------------- reference

def tree_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len,
                             tree_mask_bits: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The same function in plain PyTorch: fp32 scores, dense mask, softmax, weighted sum."""
    hq, n, d = q.shape
    hkv = k.shape[0]
    p = int(prefix_len)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kk = k[:, :p + n].float()                                                # (Hkv, P+N, D)
    vv = v[:, :p + n].float()
    mask = torch.cat([torch.ones(n, p, dtype=torch.bool, device=q.device),
                      unpack_ancestor_bits(tree_mask_bits, n).tril()], dim=1)  # (N, P+N)
    qf = q.float().view(hkv, hq // hkv, n, d)                                # (Hkv, G, N, D)
    s = torch.einsum("hgnd,hsd->hgns", qf, kk) * scale
    s = s.masked_fill(~mask, float("-inf"))
    out = torch.einsum("hgns,hsd->hgnd", torch.softmax(s, dim=-1), vv)
    return out.reshape(hq, n, d).to(q.dtype)


# ---------------------------------------------------------------- kernel

@triton.jit
def _softmax_step(s, vt, m_i, l_i, acc, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax update with a (BLOCK_M, BLOCK_N) block of base-2 scores s."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DOT_FP32:
        pv = tl.dot(p, vt.to(tl.float32), input_precision=PREC)
    else:
        pv = tl.dot(p.to(vt.dtype), vt)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def _scores(q, kt, qk_scale, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    if DOT_FP32:
        s = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision=PREC)
    else:
        s = tl.dot(q, kt)
    return s * qk_scale


@triton.jit(do_not_specialize=["plen_arg", "N", "G", "SPLITS", "sbn"])
def _tree_attn_kernel(
    Q, K, V, Bits, Plen, Out, Op, Mp, Lp,
    plen_arg, N, G, SPLITS,
    sqh, sqn, skh, sks, svh, svs, sbn, soh, son,
    qk_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MULTI: tl.constexpr,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    R = N * G
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # query row r = node * G + g
    rmask = rows < R
    node = rows // G
    head = kvh * G + (rows - node * G)
    d = tl.arange(0, D)
    q = tl.load(Q + head[:, None] * sqh + node[:, None] * sqn + d[None, :], mask=rmask[:, None], other=0.0)
    plen = plen_arg + tl.load(Plen)  # one of the two is 0: an int argument or a device scalar
    kb = K + kvh.to(tl.int64) * skh
    vb = V + kvh.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)

    # -- the prefix: every node sees all of it; this split's chunk is [lo, hi). Pointers are
    # rebased to lo so that the loop runs from 0 (keeps address arithmetic cheap).
    chunk = tl.cdiv(tl.cdiv(plen, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    span = tl.maximum(tl.minimum(lo + chunk, plen) - lo, 0)
    full = span // BLOCK_N * BLOCK_N
    kl = kb + lo.to(tl.int64) * sks
    vl = vb + lo.to(tl.int64) * svs
    for start in range(0, full, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kt = tl.load(kl + cols[None, :] * sks + d[:, None])                  # (D, BLOCK_N)
        vt = tl.load(vl + cols[:, None] * svs + d[None, :])                  # (BLOCK_N, D)
        s = _scores(q, kt, qk_scale, DOT_FP32, PREC)
        m_i, l_i, acc = _softmax_step(s, vt, m_i, l_i, acc, DOT_FP32, PREC)
    if full < span:                                                          # ragged tail
        cols = full + tl.arange(0, BLOCK_N)
        cmask = cols < span
        kt = tl.load(kl + cols[None, :] * sks + d[:, None], mask=cmask[None, :], other=0.0)
        vt = tl.load(vl + cols[:, None] * svs + d[None, :], mask=cmask[:, None], other=0.0)
        s = _scores(q, kt, qk_scale, DOT_FP32, PREC)
        s = tl.where(cmask[None, :], s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, vt, m_i, l_i, acc, DOT_FP32, PREC)

    # -- the tree rows: node i sees node j when bit j of its row is set (j <= i always)
    if split == 0:
        last = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // G, N - 1)
        kt0 = kb + plen.to(tl.int64) * sks
        vt0 = vb + plen.to(tl.int64) * svs
        for start in range(0, last + 1, BLOCK_N):
            jj = tl.arange(0, BLOCK_N)
            j = start + jj
            jmask = j < N
            # this block's BLOCK_N // 32 mask words of every row, one (BLOCK_M,) load each
            word = tl.load(Bits + node * sbn + start // 32, mask=rmask, other=0)[:, None] + 0 * jj[None, :]
            for t in tl.static_range(1, BLOCK_N // 32):
                has_t = node * 0 + start + 32 * t < N
                w_t = tl.load(Bits + node * sbn + start // 32 + t, mask=rmask & has_t, other=0)
                word = tl.where(jj[None, :] >= 32 * t, w_t[:, None], word)
            seen = (((word >> (jj[None, :] & 31)) & 1) != 0) & (j[None, :] <= node[:, None]) & jmask[None, :]
            kt = tl.load(kt0 + j[None, :] * sks + d[:, None], mask=jmask[None, :], other=0.0)
            vt = tl.load(vt0 + j[:, None] * svs + d[None, :], mask=jmask[:, None], other=0.0)
            s = _scores(q, kt, qk_scale, DOT_FP32, PREC)
            s = tl.where(seen, s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, vt, m_i, l_i, acc, DOT_FP32, PREC)

    # -- results: addresses from scalar bases + small offsets (keeps registers free in the loop)
    r = tl.arange(0, BLOCK_M)
    live = pid_m * BLOCK_M + r < R
    if not MULTI:
        rr = pid_m * BLOCK_M + r
        nn = rr // G
        offs = (rr - nn * G) * soh + nn * son                                 # (BLOCK_M,) int32
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        ob = Out + (kvh * G).to(tl.int64) * soh
        tl.store(ob + offs[:, None] + d[None, :], out.to(Out.dtype.element_ty), mask=live[:, None])
    else:
        base = ((kvh * SPLITS + split) * R + pid_m * BLOCK_M).to(tl.int64)  # (Hkv, SPLITS, R)
        tl.store(Mp + base + r, m_i, mask=live)
        tl.store(Lp + base + r, l_i, mask=live)
        tl.store(Op + base * D + r[:, None] * D + d[None, :], acc, mask=live[:, None])


@triton.jit(do_not_specialize=["N", "G", "SPLITS"])
def _combine_kernel(Out, Op, Mp, Lp, N, G, SPLITS, soh, son, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Merge the SPLITS partial (max, sum, weighted values) of every query row."""
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    R = N * G
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < R
    d = tl.arange(0, D)
    m = tl.full([BLOCK_M], -1.0e30, tl.float32)
    for s in range(SPLITS):
        m = tl.maximum(m, tl.load(Mp + (kvh * SPLITS + s) * R + rows, mask=rmask, other=-1.0e30))
    l_tot = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for s in range(SPLITS):
        part = (kvh * SPLITS + s) * R + rows
        w = tl.exp2(tl.load(Mp + part, mask=rmask, other=-1.0e30) - m)
        l_tot += w * tl.load(Lp + part, mask=rmask, other=0.0)
        acc += w[:, None] * tl.load(Op + part[:, None] * D + d[None, :], mask=rmask[:, None], other=0.0)
    node = rows // G
    head = kvh * G + (rows - node * G)
    out = acc / tl.where(l_tot > 0, l_tot, 1.0)[:, None]
    tl.store(Out + head[:, None] * soh + node[:, None] * son + d[None, :],
             out.to(Out.dtype.element_ty), mask=rmask[:, None])


# ---------------------------------------------------------------- launcher

_SM_COUNT: dict[int, int] = {}
_ZEROS: dict[torch.device, torch.Tensor] = {}


def _zero(device: torch.device) -> torch.Tensor:
    """A device int32 0 read by the kernel when prefix_len is a host int (made on first use)."""
    if device not in _ZEROS:
        _ZEROS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _ZEROS[device]


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small, so that tests exercise split-K
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def default_config(n: int, g: int, hkv: int, d: int, kv_bound: int, dtype: torch.dtype,
                   device: torch.device) -> dict:
    """Block sizes, warps and split-K count for one call (static in the shapes, so a CUDA graph
    captured for a tree-size bucket keeps its launch)."""
    rows = n * g
    if dtype == torch.float32:  # three tf32 products per dot: small tiles keep registers in check
        cfg = {"block_m": 16 if rows <= 16 or d >= 128 else 32, "block_n": 32, "num_warps": 4, "num_stages": 1}
    else:  # measured best on an H200 for head_dim 64 and 128 (bench kernels --sweep, docs/kernels.md)
        cfg = {"block_m": 16 if rows <= 16 else 64, "block_n": 64, "num_warps": 4, "num_stages": 3}
    # split-K: enough programs to fill the GPU, each with a long enough run of keys that the extra
    # combine pays. head_dim 64 (SmolLM2): one wave, rounded up. head_dim 128 (Qwen3-8B): at most
    # two programs per SM, rounded down — on an H200 (N 16-256, prefix 512 and 4096) the rounded-up
    # two waves with 256-key chunks of before were 5-20 % slower than the sweep's best count in 4 of
    # 6 cells, one program per SM 28 % slower at N 256, prefix 4096
    # (docs/measured/h200-attention-sweep-qwen3-s12*.json)
    ctas = triton.cdiv(rows, cfg["block_m"]) * hkv
    sms = _num_sms(device)
    fill = 2 * sms // ctas if d >= 128 else triton.cdiv(sms, ctas)
    cfg["splits"] = max(1, min(fill, kv_bound // MIN_SPLIT_KEYS, MAX_SPLITS))
    return cfg


def check_heads(q: torch.Tensor, hq: int, n: int, d: int, k: torch.Tensor, v: torch.Tensor) -> None:
    """What every attention kernel here needs of q (hq heads, n rows, head_dim d) and k, v (Hkv, S, D)."""
    hkv, _, dk = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in shape")
    if dk != d:
        raise ValueError(f"head_dim of q ({d}) and k ({dk}) differ")
    if n < 1 or hkv < 1 or hq % hkv:
        raise ValueError(f"need N >= 1 and Hq ({hq}) a multiple of Hkv ({hkv})")
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two in [16, 256], got {d}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")


def check_prefix(prefix_len, q: torch.Tensor, n: int, s: int) -> None:
    """prefix_len, an int or a 1-element int tensor on q's device, leaves room for the n tree rows
    in the s rows of k/v (a tensor's value is on the device: only s ≥ n is checked then)."""
    if isinstance(prefix_len, torch.Tensor):
        if prefix_len.numel() != 1 or prefix_len.dtype not in (torch.int32, torch.int64):
            raise ValueError("a tensor prefix_len must hold one int32/int64 value")
        if prefix_len.device != q.device:
            raise ValueError(f"prefix_len is on {prefix_len.device}, q on {q.device}")
        if s < n:
            raise ValueError(f"k/v hold {s} rows, fewer than the {n} tree rows")
    elif int(prefix_len) < 0 or int(prefix_len) + n > s:
        raise ValueError(f"prefix_len {prefix_len} + N {n} exceeds the {s} rows of k/v")


def _check(q, k, v, prefix_len, bits, out) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q (Hq, N, D), k and v (Hkv, S, D) expected; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    hq, n, d = q.shape
    s = k.shape[1]
    check_heads(q, hq, n, d, k, v)
    if not (q.device == k.device == v.device == bits.device):
        raise ValueError(f"q, k, v and the mask bits must be on one device; got {q.device}, {k.device}, "
                         f"{v.device}, {bits.device}")
    for name, t in (("q", q), ("k", k), ("v", v), ("tree_mask_bits", bits)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride(-1)})")
    if bits.dtype != torch.int32 or bits.dim() != 2 or bits.shape[0] != n or bits.shape[1] < mask_words(n):
        raise ValueError(f"tree_mask_bits must be int32 (N, >= ceil(N/32)) = ({n}, >= {mask_words(n)}); "
                         f"got {bits.dtype} {tuple(bits.shape)}")
    check_prefix(prefix_len, q, n, s)
    if out is not None and (tuple(out.shape) != (hq, n, d) or out.dtype != q.dtype
                            or out.device != q.device or out.stride(-1) != 1):
        raise ValueError(f"out must be a {q.dtype} ({hq}, {n}, {d}) tensor on {q.device}, "
                         "contiguous in its last dim")


def tree_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len,
                          tree_mask_bits: torch.Tensor, scale: float | None = None, *,
                          out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """q (Hq, N, D); k, v (Hkv, S, D) with the prefix in rows [0, prefix_len) and the tree in
    rows [prefix_len, prefix_len + N); prefix_len an int or a 1-element int tensor on q's device;
    tree_mask_bits (N, ceil(N/32)) int32. Returns (Hq, N, D) in q's dtype (laid out (N, Hq, D)
    in memory, so that `.transpose(0, 1).reshape(N, Hq * D)` is free). `config` overrides
    `default_config` keys (for tuning)."""
    _check(q, k, v, prefix_len, tree_mask_bits, out)
    hq, n, d = q.shape
    hkv, s, _ = k.shape
    g = hq // hkv
    tensor_plen = isinstance(prefix_len, torch.Tensor)
    kv_bound = s - n if tensor_plen else int(prefix_len)
    cfg = default_config(n, g, hkv, d, kv_bound, q.dtype, q.device)
    cfg.update(config or {})
    bm, bn, splits = cfg["block_m"], cfg["block_n"], max(1, int(cfg["splits"]))
    if out is None:
        out = torch.empty(n, hq, d, device=q.device, dtype=q.dtype).transpose(0, 1)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    rows = n * g
    grid_m = triton.cdiv(rows, bm)
    if splits > 1:
        op = torch.empty(hkv, splits, rows, d, device=q.device, dtype=torch.float32)
        mp = torch.empty(hkv, splits, rows, device=q.device, dtype=torch.float32)
        lp = torch.empty_like(mp)
    else:
        op = mp = lp = out  # unused
    interp = is_interpreted(_tree_attn_kernel)
    dot_fp32 = interp or q.dtype == torch.float32
    plen_t = prefix_len.reshape(1).to(torch.int32) if tensor_plen else _zero(q.device)
    _tree_attn_kernel[(grid_m, hkv, splits)](
        q, k, v, tree_mask_bits, plen_t, out, op, mp, lp,
        0 if tensor_plen else int(prefix_len), n, g, splits,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        tree_mask_bits.stride(0), out.stride(0), out.stride(1),
        scale * LOG2E,
        D=d, BLOCK_M=bm, BLOCK_N=bn, MULTI=splits > 1, DOT_FP32=dot_fp32,
        PREC=FP32_PRECISION if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if splits > 1:
        _combine_kernel[(grid_m, hkv)](out, op, mp, lp, n, g, splits, out.stride(0), out.stride(1),
                                       D=d, BLOCK_M=bm, num_warps=4)
    return out
