"""The per-round candidate tree in one launch: the same `StaticTree` as the tensor-op builders
of `jetspec_core.engine.gpu_tree` (its reference, `build_from_topk`), field for field, padding
and ancestor mask included, for `topb`, `chain` (topb with K = 1), `accum_logp` and `top2gap`.

Input: the per-depth top-K draft log-probs and tokens lp, tok (d, K) (torch.topk, descending;
clamped to FLOOR here), the root token (0-d device tensor), budget and n_nodes (the bucket).
One program, static shapes, no host sync, deterministic (no atomics), so it can be captured in a
CUDA graph. Sort keys pack (cumulative log-prob descending, entry index ascending) into one
int64, so every `tl.sort` is a stable sort by value: ties go to the lower entry, as in the
reference.

1. Levels. Keep the best KEEP nodes of each depth, in sorted order, from the kept nodes one
   depth up (topb: depths 1..d, KEEP = budget − 1; accum_logp / top2gap: the root and depths
   1..d−1, the expandable nodes). The candidates are parent s × rank j; since both the parents
   and the log-probs are sorted, the (s+1)(j+1) − 1 candidates s' ≤ s, j' ≤ j all come first,
   so only (s+1)(j+1) ≤ size can be kept: those are compacted into scratch and sorted (about
   KEEP·ln K of them instead of KEEP·K).
   topb with wide levels (sorts of PRUNE_FROM keys or more) prunes as it goes: after each level
   the best TAKE values so far are merged into a small sorted buffer, whose TAKE-th value is a
   lower bound of the final cut; later candidates below it can be no node (values only fall with
   depth), so they are never sorted or kept. What a level keeps is a prefix of what it would keep
   unpruned, so entry order, ties and the result are unchanged; with a trained head's peaked
   distributions most levels past the third hold few or no candidates and sort 64 or 256 wide.
   A level that keeps nothing leaves every later level empty, so the loop skips them (measured on
   the H200 with the shipped head: levels 5-15 were empty, 3.5 µs each at budget 256).
2. One sort of all kept entries (level-major index, so on ties the shallower first) gives the
   global order (topb: only the entries at or above the final cut, compacted first). topb: its first budget − 1 entries are the nodes. accum_logp / top2gap: its
   first E entries are expanded in that order, each adding min(fanout, budget left) children;
   an exclusive cumulative sum gives each child's node index.
3. A table entry → node index (scratch) turns parent entries into parent node indices; root and
   padding rows are written; the ancestor mask is zeroed, then each node walks up and marks what
   it meets, as many steps as the deepest kept level needs (not always d).
Scratch global memory carries data between phases, with a CTA barrier between each write and
the reads that depend on it (the pattern of `accept_walk`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import triton
import triton.language as tl

from ..engine.gpu_tree import BUILDERS, FLOOR, StaticTree, _sizes, tree_outputs, tree_views
from ..tree import TOP2GAP_NATS

MAX_SORT = 8192  # widest tl.sort (int64 keys) one program does; larger trees use the tensor ops
PRUNE_FROM = 256  # topb prunes by a running threshold when its level sorts are at least this wide
SENTINEL = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # sorts after every real key


# ---------------------------------------------------------------- kernel

@triton.jit
def _key(v, idx):
    """One int64 whose ascending order is (v descending, idx ascending)."""
    v = tl.where(v == 0.0, 0.0, v)                       # -0.0 and 0.0 are one value, as in torch
    b = v.to(tl.int32, bitcast=True)
    a = tl.where(b < 0, b ^ 0x7FFFFFFF, b)               # integer order = float order
    return ((-1 - a).to(tl.int64) << 32) | idx.to(tl.int64)


@triton.jit
def _index(key):
    return (key - ((key >> 32) << 32)).to(tl.int32)


@triton.jit
def _logp(LP, row, j, mask, K, FLOOR_: tl.constexpr, GAP: tl.constexpr, TOP2GAP: tl.constexpr):
    """lp[row, j] clamped to FLOOR; top2gap: -inf past the fanout of that depth."""
    v = tl.maximum(tl.load(LP + row * K + j, mask=mask, other=0.0), FLOOR_)
    if TOP2GAP:
        at = row * K + j * 0                               # row may be a scalar
        a = tl.maximum(tl.load(LP + at, mask=mask, other=0.0), FLOOR_)
        b = tl.maximum(tl.load(LP + at + 1, mask=mask, other=0.0), FLOOR_)
        v = tl.where((j < 1) | (a - b <= GAP), v, float("-inf"))
    return v


@triton.jit
def _keep(LP, CUM, IDX, KEY, t, K, pbase, base, size, total, thr, ENTRIES,
          W: tl.constexpr, PRUNE: tl.constexpr, FLOOR_: tl.constexpr, GAP: tl.constexpr, TOP2GAP: tl.constexpr):
    """Sort a level's `total` candidate keys (W ≥ total wide), keep the best `size` (PRUNE: and
    only those ≥ thr, a prefix of them) as entries base, base + 1, ...; returns how many."""
    c = tl.arange(0, W)
    kk = tl.sort(tl.load(KEY + c, mask=c < total, other=SENTINEL, volatile=True))
    idx = _index(kk)                                                   # (W,) best first
    kept = (c < size) & (c < total)
    ps = tl.where(kept, idx // K, 0)
    pj = tl.where(kept, idx % K, 0)
    val = tl.load(CUM + pbase + ps, mask=kept, other=0.0, volatile=True) \
        + _logp(LP, t - 1, pj, kept, K, FLOOR_, GAP, TOP2GAP)
    if PRUNE:
        kept = kept & (val >= thr)
    tl.store(CUM + base + c, val, mask=kept)
    tl.store(IDX + base + c, pbase + ps, mask=kept)                    # PAR
    tl.store(IDX + ENTRIES + base + c, pj, mask=kept)                  # RANK
    tl.store(IDX + 2 * ENTRIES + base + c, tl.zeros([W], tl.int32) + t, mask=kept)   # LEVEL
    return tl.sum(kept.to(tl.int32), 0)


@triton.jit
def _order(KEY, IDX, cnt, TAKE, ENTRIES, W: tl.constexpr):
    """The global order of `cnt` entry keys (W ≥ cnt wide): the first TAKE become nodes 1..TAKE."""
    q = tl.arange(0, W)
    order = _index(tl.sort(tl.load(KEY + q, mask=q < cnt, other=SENTINEL, volatile=True)))
    sel = q < TAKE
    tl.store(IDX + 3 * ENTRIES + order, q + 1, mask=sel)              # NODE
    tl.store(IDX + 4 * ENTRIES + q, order, mask=sel)                  # ENT


@triton.jit(do_not_specialize=["K", "D", "NL", "KEEP", "BUDGET", "ENTRIES", "TAKE", "N"])
def _tree_kernel(LP, TOK, ROOT, I64, F32, U8, CUM, IDX, KEY, RBUF,
                 K, D, NL, KEEP, BUDGET, ENTRIES, TAKE, N,
                 LB: tl.constexpr, KB: tl.constexpr, CB: tl.constexpr, GB: tl.constexpr,
                 EB: tl.constexpr, NB: tl.constexpr, ZR: tl.constexpr, RB: tl.constexpr,
                 EXPAND: tl.constexpr, TOP2GAP: tl.constexpr, PRUNE: tl.constexpr,
                 FLOOR_: tl.constexpr, GAP: tl.constexpr):
    # scratch, one row of ENTRIES each: by entry g (level-major: root 0, then depth 1, ...)
    # CUM (f32), PAR (parent entry), RANK, LEVEL, NODE (node index, or first child's); by
    # position q in the global order: ENT (the entry there), CNT and FIRST (its children)
    PAR = 0
    RANK = ENTRIES
    LEVEL = 2 * ENTRIES
    NODE = 3 * ENTRIES
    ENT = 4 * ENTRIES
    CNT = 5 * ENTRIES
    FIRST = 6 * ENTRIES
    one = tl.program_id(0) * 0 + 1                       # int32 scalar tensor (loop-carried)

    # zero the ancestor mask; entry 0 is the root (cum 0, node 0)
    zr = tl.arange(0, ZR)
    cols = tl.arange(0, NB)
    for r0 in range(0, N, ZR):
        rows = r0 + zr
        tl.store(U8 + N + rows[:, None] * N + cols[None, :], tl.zeros([ZR, NB], tl.uint8),
                 mask=(rows[:, None] < N) & (cols[None, :] < N))
    tl.store(CUM, 0.0)
    tl.store(IDX + PAR, -1)
    tl.store(IDX + RANK, -1)
    tl.store(IDX + LEVEL, 0)
    tl.store(IDX + NODE, 0)
    tl.debug_barrier()

    # 1. the best `size` nodes of depth t from the `prev` kept ones of depth t-1 (at pbase).
    # PRUNE (topb with wide levels): thr is the TAKE-th best value of all entries so far (RBUF
    # keeps the best RB values, -inf padded), a lower bound of the final cut: candidates below
    # it can be no node, nor can their descendants (values only fall with depth), so they are
    # not kept; what is kept is a prefix of the unpruned level, so entry order and ties are as
    # without pruning. Levels with few candidates left then sort narrow blocks.
    s = tl.arange(0, LB)
    j = tl.arange(0, KB)
    prev = one
    seen = one * 0                                       # the deepest level that kept entries
    pbase = one * 0
    base = one
    thr = tl.full((), float("-inf"), tl.float32)
    if PRUNE:
        rr = tl.arange(0, 2 * RB)
        tl.store(RBUF + rr, tl.full([2 * RB], float("-inf"), tl.float32))
    for t in range(1, NL + 1):
        if prev > 0:  # an empty level leaves every later one empty: skip them (pruned trees end early)
            size = tl.minimum(prev * K, KEEP)
            per_row = tl.where(s < prev, tl.minimum(size // (s + 1), K), 0)    # pruned: (s+1)(j+1) ≤ size
            pcum = tl.load(CUM + pbase + s, mask=s < prev, other=0.0, volatile=True)
            lpr = _logp(LP, t - 1, j, j < K, K, FLOOR_, GAP, TOP2GAP)
            cand = pcum[:, None] + lpr[None, :]                                # (LB, KB)
            if PRUNE:  # lpr descends, so the candidates ≥ thr of a row are a prefix of it
                fit = (cand >= thr) & (j[None, :] < K)
                per_row = tl.minimum(per_row, tl.sum(fit.to(tl.int32), 1))
            off = tl.cumsum(per_row, 0) - per_row
            total = tl.sum(per_row, 0)
            take = j[None, :] < per_row[:, None]                               # (LB, KB)
            keys = _key(cand, s[:, None] * K + j[None, :])
            tl.store(KEY + off[:, None] + j[None, :], keys, mask=take)
            tl.debug_barrier()
            if PRUNE:  # the narrowest sort that holds the level (nothing once a level is empty)
                cnt = total * 0
                if total > 256:
                    cnt = _keep(LP, CUM, IDX, KEY, t, K, pbase, base, size, total, thr, ENTRIES,
                                CB, PRUNE, FLOOR_, GAP, TOP2GAP)
                elif total > 64:
                    cnt = _keep(LP, CUM, IDX, KEY, t, K, pbase, base, size, total, thr, ENTRIES,
                                256, PRUNE, FLOOR_, GAP, TOP2GAP)
                elif total > 0:
                    cnt = _keep(LP, CUM, IDX, KEY, t, K, pbase, base, size, total, thr, ENTRIES,
                                64, PRUNE, FLOOR_, GAP, TOP2GAP)
            else:
                cnt = _keep(LP, CUM, IDX, KEY, t, K, pbase, base, size, total, thr, ENTRIES,
                            CB, PRUNE, FLOOR_, GAP, TOP2GAP)
            tl.debug_barrier()
            if PRUNE:  # merge the level's best RB values into RBUF[0, RB); thr = its TAKE-th
                if cnt > 0:
                    r = tl.arange(0, RB)
                    tl.store(RBUF + RB + r, tl.load(CUM + base + r, mask=r < cnt, other=float("-inf"), volatile=True))
                    tl.debug_barrier()
                    merged = tl.sort(tl.load(RBUF + rr, volatile=True), descending=True)
                    tl.debug_barrier()
                    tl.store(RBUF + rr, merged)
                    tl.debug_barrier()
                    thr = tl.load(RBUF + TAKE - 1, volatile=True)
            pbase = base
            base = base + cnt
            prev = cnt
            seen = tl.where(cnt > 0, t, seen)

    # 2. the global order of all entries (level-major index: the shallower first on ties)
    g = tl.arange(0, GB)
    if EXPAND:  # entries expand in this order, each adds min(fanout, budget left) children
        ok = g < ENTRIES
        gcum = tl.load(CUM + g, mask=ok, other=0.0, volatile=True)
        order = _index(tl.sort(tl.where(ok, _key(gcum, g), SENTINEL)))      # (GB,) entry at position q
        sel = g < TAKE
        ecum = tl.load(CUM + order, mask=sel, other=float("-inf"), volatile=True)
        level = tl.load(IDX + LEVEL + order, mask=sel, other=0, volatile=True)
        fan = tl.zeros([GB], tl.int32) + K
        if TOP2GAP:
            a = tl.maximum(tl.load(LP + level * K, mask=sel, other=0.0), FLOOR_)
            b = tl.maximum(tl.load(LP + level * K + 1, mask=sel, other=0.0), FLOOR_)
            fan = tl.where(a - b > GAP, 1, K)
        fan = tl.where(sel & (ecum > float("-inf")), fan, 0)
        before = tl.cumsum(fan, 0) - fan
        count = tl.minimum(fan, tl.maximum(BUDGET - 1 - before, 0))
        first = tl.cumsum(count, 0) - count + 1                            # node index of the first child
        n_valid = tl.sum(count, 0) + 1
        tl.store(IDX + NODE + order, first, mask=sel)
        tl.store(IDX + CNT + g, count, mask=sel)
        tl.store(IDX + FIRST + g, first, mask=sel)
        tl.store(IDX + ENT + g, order, mask=sel)
    else:  # topb: the first TAKE of the order (root excluded) are the nodes
        n_valid = one * (TAKE + 1)
        ok = (g > 0) & (g < base)                                          # base: the entries made
        gcum = tl.load(CUM + g, mask=ok, other=float("-inf"), volatile=True)
        inn = ok & (gcum >= thr)                                           # the rest can be no node
        ii = inn.to(tl.int32)
        cnt = tl.sum(ii, 0)
        tl.store(KEY + tl.cumsum(ii, 0) - ii, _key(gcum, g), mask=inn)      # compacted, in entry order
        tl.debug_barrier()
        if cnt <= 256:
            _order(KEY, IDX, cnt, TAKE, ENTRIES, 256)
        elif cnt <= 1024:
            _order(KEY, IDX, cnt, TAKE, ENTRIES, 1024)
        else:
            _order(KEY, IDX, cnt, TAKE, ENTRIES, GB)
    tl.debug_barrier()

    # 3. the nodes, from the selected entries (q < TAKE) reloaded compactly
    q = tl.arange(0, EB)
    qs = q < TAKE
    ent = tl.load(IDX + ENT + q, mask=qs, other=0, volatile=True)
    level = tl.load(IDX + LEVEL + ent, mask=qs, other=0, volatile=True)
    rank = tl.load(IDX + RANK + ent, mask=qs, other=0, volatile=True)
    par_ent = tl.load(IDX + PAR + ent, mask=qs, other=0, volatile=True)
    up = tl.load(IDX + NODE + par_ent, mask=qs & (par_ent >= 0), other=0, volatile=True)
    root = tl.load(ROOT)
    if EXPAND:
        # the entry's own node is child `rank` of its parent's expansion; the root is node 0
        own = tl.where(level == 0, 0, up + rank)
        cnt = tl.load(IDX + CNT + q, mask=qs, other=0, volatile=True)
        fst = tl.load(IDX + FIRST + q, mask=qs, other=0, volatile=True)
        ecum = tl.load(CUM + ent, mask=qs, other=0.0, volatile=True)
        made = j[None, :] < cnt[:, None]                                   # (EB, KB)
        at = fst[:, None] + j[None, :]
        jj = tl.zeros([EB, KB], tl.int32) + j[None, :]
        row = tl.zeros([EB, KB], tl.int32) + level[:, None]
        clp = _logp(LP, row, jj, made, K, FLOOR_, GAP, TOP2GAP)
        tl.store(I64 + at, tl.load(TOK + row * K + jj, mask=made, other=0), mask=made)
        tl.store(I64 + N + at, tl.zeros([EB, KB], tl.int32) + own[:, None], mask=made)
        tl.store(I64 + 2 * N + at, row + 1, mask=made)
        tl.store(I64 + 3 * N + at, jj, mask=made)
        tl.store(F32 + at, clp, mask=made)
        tl.store(F32 + N + at, ecum[:, None] + clp, mask=made)
    else:
        at = q + 1
        tl.store(I64 + at, tl.load(TOK + (level - 1) * K + rank, mask=qs, other=0), mask=qs)
        tl.store(I64 + N + at, up, mask=qs)
        tl.store(I64 + 2 * N + at, level, mask=qs)
        tl.store(I64 + 3 * N + at, rank, mask=qs)
        tl.store(F32 + at, _logp(LP, level - 1, rank, qs, K, FLOOR_, GAP, TOP2GAP), mask=qs)
        tl.store(F32 + N + at, tl.load(CUM + ent, mask=qs, other=0.0, volatile=True), mask=qs)
    # the root (node 0) and the padding past n_valid: token = root, parent 0, everything else 0
    i = tl.arange(0, NB)
    rest = (i < N) & ((i == 0) | (i >= n_valid))
    tl.store(I64 + i, tl.zeros([NB], tl.int64) + root, mask=rest)
    tl.store(I64 + N + i, tl.where(i == 0, -1, 0), mask=rest)
    tl.store(I64 + 2 * N + i, tl.zeros([NB], tl.int32), mask=rest)
    tl.store(I64 + 3 * N + i, tl.where(i == 0, -1, 0), mask=rest)
    tl.store(F32 + i, tl.zeros([NB], tl.float32), mask=rest)
    tl.store(F32 + N + i, tl.zeros([NB], tl.float32), mask=rest)
    tl.store(U8 + i, (i < n_valid).to(tl.uint8), mask=i < N)
    tl.store(I64 + 4 * N, n_valid.to(tl.int64))
    tl.debug_barrier()

    # ancestor-or-self: walk up from every node (the root is its own parent) as many steps as
    # the deepest node needs (seen, one more where entries expand into children; padding: 1)
    x = tl.where(i < N, i, 0)
    deep = seen
    if EXPAND:
        deep = seen + 1
    for _ in range(tl.minimum(tl.maximum(deep, 1), D) + 1):
        tl.store(U8 + N + i * N + x, tl.full([NB], 1, tl.uint8), mask=i < N)
        x = tl.maximum(tl.load(I64 + N + x, mask=i < N, other=0, volatile=True), 0).to(tl.int32)


# ---------------------------------------------------------------- launcher

def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(max(1, n)))


@lru_cache(maxsize=None)
def _plan(builder: str, d: int, k: int, budget: int, n_nodes: int, prune_from: int | None = None) -> dict:
    """Static sizes of one tree shape: levels NL, kept per depth KEEP, entries (root + kept
    nodes), selected entries TAKE (runtime ints), and the block sizes (powers of two) and
    builder flags (constexpr: one compiled variant per combination). PRUNE: `topb` whose level
    sorts are at least `prune_from` (default PRUNE_FROM) wide."""
    expand = builder in ("accum_logp", "top2gap")
    top2gap = builder == "top2gap" and k > 1
    keep = budget - 1 if (top2gap or not expand) else math.ceil((budget - 1) / k)
    nl = d - 1 if expand else d
    sizes = _sizes(k, keep, nl)
    entries = 1 + sum(sizes)
    take = min(keep, entries - (0 if expand else 1))
    cand = max([sum(min(k, size // (s + 1)) for s in range(prev))             # a level's candidates
                for prev, size in zip([1] + sizes, sizes)] + [1])             # after pruning
    cb = _pow2(cand)
    return dict(K=k, D=d, NL=nl, KEEP=keep, BUDGET=budget, ENTRIES=entries, TAKE=take, N=n_nodes,
                LB=_pow2(max(sizes + [1])), KB=_pow2(k, 2), CB=cb, GB=_pow2(entries),
                EB=_pow2(take), NB=_pow2(n_nodes), ZR=max(1, 4096 // _pow2(n_nodes)), RB=_pow2(take),
                EXPAND=expand, TOP2GAP=top2gap,
                PRUNE=not expand and cb >= (PRUNE_FROM if prune_from is None else prune_from))


def warps(plan: dict) -> int:
    """Warps of the one program for a tree shape: 8 once the global order sorts over 1,024 keys
    (also what tests/sm90_compile.py compiles)."""
    return 4 if plan["GB"] <= 1024 else 8


def supports(builder: str, d: int, k: int, budget: int, n_nodes: int) -> bool:
    """Whether the kernel handles this shape (else use the tensor ops): sorts up to MAX_SORT."""
    if builder not in BUILDERS or d < 1 or k < 1 or budget < 2 or n_nodes < budget:
        return False
    p = _plan(builder, d, k, budget, n_nodes)
    return max(p["CB"], p["GB"], p["LB"] * p["KB"], p["EB"] * p["KB"]) <= MAX_SORT


def _check(builder, lp, tok, root, budget, n_nodes) -> None:
    if builder not in BUILDERS:
        raise ValueError(f"no static builder {builder!r}")
    if lp.dim() != 2 or tok.shape != lp.shape:
        raise ValueError(f"lp and tok must be (d, K) of one shape, got {tuple(lp.shape)} and {tuple(tok.shape)}")
    if lp.dtype != torch.float32 or tok.dtype != torch.int64 or root.dtype != torch.int64:
        raise TypeError(f"lp must be float32, tok and root int64; got {lp.dtype}, {tok.dtype}, {root.dtype}")
    if not (lp.is_contiguous() and tok.is_contiguous()):
        raise ValueError("lp and tok must be contiguous")
    if root.numel() != 1:
        raise ValueError(f"root must hold one token, got shape {tuple(root.shape)}")
    if not (lp.device == tok.device == root.device):
        raise ValueError(f"lp, tok, root on different devices: {lp.device}, {tok.device}, {root.device}")
    if builder == "chain" and lp.shape[1] != 1:
        raise ValueError(f"chain is topb with K = 1, got K = {lp.shape[1]}")
    if not supports(builder, lp.shape[0], lp.shape[1], budget, n_nodes):
        raise ValueError(f"{builder} with d={lp.shape[0]}, K={lp.shape[1]}, budget={budget}, "
                         f"n_nodes={n_nodes} is not supported (need budget ≥ 2, n_nodes ≥ budget, "
                         f"sorts ≤ {MAX_SORT})")


def build_tree_triton(builder: str, lp: torch.Tensor, tok: torch.Tensor, root: torch.Tensor, budget: int,
                      n_nodes: int, out: tuple | None = None) -> StaticTree:
    """One-launch `build_from_topk`: lp (d, K) float32 per-depth top-K log-probs (descending),
    tok (d, K) int64 their tokens, root 0-d int64 → the StaticTree of n_nodes rows, written into
    `out` (`tree_outputs(n_nodes)` buffers, e.g. the engine's persistent tree) when given."""
    _check(builder, lp, tok, root, budget, n_nodes)
    p = _plan(builder, lp.shape[0], lp.shape[1], budget, n_nodes, PRUNE_FROM)
    dev = lp.device
    n = n_nodes
    ints, floats, flags = out if out is not None else tree_outputs(n, dev)
    assert ints.numel() == 4 * n + 1 and floats.numel() == 2 * n and flags.numel() == n + n * n
    assert ints.device == floats.device == flags.device == dev and flags.dtype == torch.uint8
    cum = torch.empty(p["ENTRIES"], dtype=torch.float32, device=dev)
    idx = torch.empty(7 * p["ENTRIES"], dtype=torch.int32, device=dev)
    keys = torch.empty(max(p["CB"], p["GB"]), dtype=torch.int64, device=dev)
    rbuf = torch.empty(2 * p["RB"], dtype=torch.float32, device=dev)
    _tree_kernel[(1,)](lp, tok, root, ints, floats, flags, cum, idx, keys, rbuf, **p,
                       FLOOR_=FLOOR, GAP=TOP2GAP_NATS, num_warps=warps(p))
    return tree_views(ints, floats, flags, n)
