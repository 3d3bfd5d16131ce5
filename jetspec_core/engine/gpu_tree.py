"""Tree building on the device with static shapes: no host loop over nodes, no host sync.

Same trees as the reference builders in `jetspec_core.tree` (same nodes in the same order, up to
ties in cumulative log-prob), from the per-depth top-K draft log-probs:

- `topb` (and `chain`, which is topb with K = 1): the budget−1 best nodes of the full K-ary tree.
  Exact level by level: a kept node's parent has a cumulative log-prob at least as high (draft
  log-probs are ≤ 0), so the best B−1 of depth d are among the children of the best B−1 of depth
  d−1. Keep those per depth, then a stable sort over all depths picks the global best; on ties
  the shallower node comes first, so the set is prefix-closed. Nodes come out in non-increasing
  cumulative log-prob, which is the reference's creation order.
- `accum_logp` / `top2gap`: best-first expansion. The reference's heap pops nodes in
  non-increasing cumulative log-prob, so the expanded nodes are the best nodes of depth < D in
  that order; each adds its first `fanout[depth]` children until the budget is spent. Computed as
  the best M expandable nodes per depth, one stable sort, a cumulative sum of child counts, and a
  scatter of the children into creation order.

Ties in cumulative log-prob are broken one way everywhere: each depth's kept nodes are in
stable-sorted order (equal values: the lower parent position, then the lower rank first), and
the global order puts the shallower node first, then the earlier one in its depth.

Everything returned is a fixed-size array of `n_nodes` (the verify bucket); nodes past
`n_valid` are padding (token = root, parent = root, invalid).

`build_static` runs the single-launch Triton kernel of `jetspec_core.kernels.tree_build` when
`backend.tree_kernel` says so (wherever the Triton kernels run, i.e. CUDA under backend 'auto',
unless $JETSPEC_TREE_KERNEL=0) and the tensor ops below, its reference, elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import backend
from ..config import BUILDERS
from ..tree import TOP2GAP_NATS

FLOOR = -1e4  # draft log-probs are clamped here so that only padding is -inf


@dataclass
class StaticTree:
    """Tree arrays of a fixed size N; node 0 is the root."""

    tokens: torch.Tensor      # (N,) long
    parents: torch.Tensor     # (N,) long, -1 for the root, 0 for padding
    depth: torch.Tensor       # (N,) long
    rank: torch.Tensor        # (N,) long, -1 for the root
    draft_logp: torch.Tensor  # (N,) float32
    cum_logp: torch.Tensor    # (N,) float32
    valid: torch.Tensor       # (N,) bool
    n_valid: torch.Tensor     # 0-d long
    anc: torch.Tensor         # (N, N) bool ancestor-or-self

    FIELDS = ("tokens", "parents", "depth", "rank", "draft_logp", "cum_logp", "valid", "n_valid", "anc")


def tree_outputs(n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tree kernel's (`kernels/tree_build.py`) three output buffers for n nodes: ints (4n+1)
    int64 = tokens, parents, depth, rank, n_valid; floats (2n) float32 = draft_logp, cum_logp;
    flags (n + n²) uint8 = valid, anc."""
    return (torch.empty(4 * n + 1, dtype=torch.int64, device=device),
            torch.empty(2 * n, dtype=torch.float32, device=device),
            torch.empty(n + n * n, dtype=torch.uint8, device=device))


def tree_views(ints: torch.Tensor, floats: torch.Tensor, flags: torch.Tensor, n: int) -> StaticTree:
    """The StaticTree fields as views of `tree_outputs` buffers."""
    flags = flags.view(torch.bool)
    return StaticTree(tokens=ints[:n], parents=ints[n:2 * n], depth=ints[2 * n:3 * n], rank=ints[3 * n:4 * n],
                      draft_logp=floats[:n], cum_logp=floats[n:], valid=flags[:n], n_valid=ints[4 * n],
                      anc=flags[n:].view(n, n))


_CONSTS: dict = {}


def _const(key: tuple, make):
    """Tensors that depend on shapes only, made once per device and key. The first call of a
    step is an eager warm-up, so they already exist when the step is captured."""
    if key not in _CONSTS:
        _CONSTS[key] = make()
    return _CONSTS[key]


def ancestor_mask(parents: torch.Tensor, max_depth: int) -> torch.Tensor:
    """(N, N) bool ancestor-or-self from parent pointers (-1 for the root) by pointer jumping:
    rows[t] holds every node's ancestor t levels up (the root is its own parent), doubling the
    distances covered per step, then one scatter marks them."""
    n = parents.shape[0]
    dev = parents.device
    par = parents.clamp(min=0)
    rows = _const(("arange", str(dev), n), lambda: torch.arange(n, device=dev))[None, :]   # (1, N)
    covered = 1
    while covered <= max_depth:
        rows = torch.cat([rows, par[rows]])        # distances [covered, 2·covered) from [0, covered)
        par = par[par]
        covered *= 2
    return torch.zeros(n, n, dtype=torch.bool, device=dev).scatter_(1, rows.t(), True)


def _sizes(k: int, keep: int, n_levels: int) -> list[int]:
    """Kept nodes per depth 1..n_levels: min(keep, K × kept one depth up), the root alone above."""
    out, prev = [], 1
    for _ in range(n_levels):
        prev = min(keep, prev * k)
        out.append(prev)
    return out


def _level_consts(dev, k: int, keep: int, n_levels: int, with_root: bool):
    """Per-entry constants of the level-major entry array: depth, offset of the level above
    (-1 where the parent is the root and the root is no entry), and an arange of the kept nodes."""
    def make():  # device fills only: a host-to-device copy would count as a sync in the check
        sizes = _sizes(k, keep, n_levels)
        full = lambda n, v: torch.full((n,), v, dtype=torch.long, device=dev)  # noqa: E731
        depth, prev_off = ([full(1, 0)], [full(1, -1)]) if with_root else ([], [])
        off, prev_start = (1 if with_root else 0), (0 if with_root else -1)
        for d, size in enumerate(sizes, start=1):
            depth.append(full(size, d))
            prev_off.append(full(size, prev_start))
            prev_start, off = off, off + size
        return torch.cat(depth), torch.cat(prev_off), torch.arange(max(keep, 1), device=dev)
    return _const(("levels", str(dev), k, keep, n_levels, with_root), make)


def _levels(lp: torch.Tensor, tok: torch.Tensor, keep: int, with_root: bool, n_levels: int):
    """Best `keep` nodes per depth, built from the kept nodes one depth up.

    lp, tok (d, K). Returns level-major entry arrays over depths 1..n_levels (plus the root as
    entry 0 when with_root): cumulative log-prob, parent entry (-1: the root, when it is no
    entry), rank, token, own log-prob, depth."""
    dev = lp.device
    k = lp.shape[1]
    depth, prev_off, ar = _level_consts(dev, k, keep, n_levels, with_root)
    cums, idxs = [], []
    prev_cum = torch.zeros(1, device=dev)
    if with_root:
        cums.append(prev_cum)
        idxs.append(ar[:1])
    for d, size in enumerate(_sizes(k, keep, n_levels), start=1):
        cand = (prev_cum[:, None] + lp[d - 1][None, :]).reshape(-1)      # (kept above · K,)
        val, idx = torch.sort(cand, descending=True, stable=True)          # ties: lower entry first
        val, idx = val[:size], idx[:size]
        cums.append(val)
        idxs.append(idx)
        prev_cum = val
    cum, idx = torch.cat(cums), torch.cat(idxs)
    slot, rank = idx // k, idx % k
    par = torch.where(prev_off < 0, -1, slot + prev_off)
    flat = (depth - 1).clamp(min=0) * k + rank                              # row depth−1, column rank
    if with_root:
        rank = torch.where(depth == 0, -1, rank)
    return cum, par, rank, tok.reshape(-1)[flat], lp.reshape(-1)[flat], depth


def _pads(dev, n_nodes: int, m: int):
    """The root's entries and the padding tails of the node arrays (constants)."""
    def make():
        pad = n_nodes - 1 - m
        return {"neg1": torch.full((1,), -1, dtype=torch.long, device=dev),
                "zero": torch.zeros(1, dtype=torch.long, device=dev),
                "zerof": torch.zeros(1, device=dev),
                "pad": torch.zeros(pad, dtype=torch.long, device=dev),
                "padf": torch.zeros(pad, device=dev),
                "valid": torch.arange(n_nodes, device=dev) <= m,
                "n_valid": torch.full((), m + 1, dtype=torch.long, device=dev)}
    return _const(("pads", str(dev), n_nodes, m), make)


def root_only(root: torch.Tensor, n_nodes: int) -> StaticTree:
    dev = root.device
    c = _pads(dev, n_nodes, 0)
    cat = torch.cat
    return StaticTree(tokens=cat([root.reshape(1), root.reshape(1).expand(n_nodes - 1)]),
                      parents=cat([c["neg1"], c["pad"]]), depth=cat([c["zero"], c["pad"]]),
                      rank=cat([c["neg1"], c["pad"]]), draft_logp=cat([c["zerof"], c["padf"]]),
                      cum_logp=cat([c["zerof"], c["padf"]]), valid=c["valid"], n_valid=c["n_valid"],
                      anc=ancestor_mask(cat([c["neg1"], c["pad"]]), 0))


def build_static(builder: str, depth_logp: torch.Tensor, root: torch.Tensor, width: int, depth: int,
                 budget: int, n_nodes: int, calibration=None, out: tuple | None = None,
                 logits: bool = False) -> StaticTree:
    """The tree of `builder` from depth_logp (D, V) fp32, root 0-d long; n_nodes ≥ budget. With a
    `Calibration` the nodes are chosen by calibrated scores and the tree records the raw log-probs.
    out: `tree_outputs` buffers the Triton kernel (`kernels/tree_build.py`) writes into when it runs (the
    returned fields are then views of them; other paths return new tensors). logits: depth_logp holds
    the draft's logits (any float dtype); the per-depth top-K of their log-softmax is taken in one
    pass (`backend.depth_topk`)."""
    if builder not in BUILDERS:
        raise ValueError(f"no static builder {builder!r}")
    d = min(depth, depth_logp.shape[0])
    if budget <= 1 or d == 0:
        return root_only(root, n_nodes)
    k = 1 if builder == "chain" else min(width, depth_logp.shape[-1])
    if logits:
        lp, tok = backend.depth_topk(depth_logp[:d], k)                   # (d, K) descending
    else:
        lp, tok = torch.topk(depth_logp[:d].float(), k, dim=-1)
    if calibration is not None:
        lp = lp.clamp(min=FLOOR)
    score = lp if calibration is None else calibration.apply(lp)
    t = None
    if backend.tree_kernel(lp):
        from ..kernels import tree_build

        if tree_build.supports(builder, d, k, budget, n_nodes):
            t = tree_build.build_tree_triton(builder, score, tok, root, budget, n_nodes, out=out)
    if t is None:
        t = build_from_topk(builder, score, tok, root, budget, n_nodes)
    return t if calibration is None else with_logp(t, lp)


def with_logp(t: StaticTree, lp: torch.Tensor) -> StaticTree:
    """draft_logp / cum_logp of the tree's real nodes from the (d, K) log-probs at their depth and
    rank (tensor ops; padding keeps its values)."""
    real = t.valid & (t.depth > 0)
    own = lp[(t.depth - 1).clamp(min=0), t.rank.clamp(min=0)]
    own = torch.where(real, own, t.draft_logp)
    cum = torch.where(real, (t.anc & real[None, :]).float() @ torch.where(real, own, 0.0), t.cum_logp)
    t.draft_logp, t.cum_logp = own, cum
    return t


def build_from_topk(builder: str, lp: torch.Tensor, tok: torch.Tensor, root: torch.Tensor, budget: int,
                    n_nodes: int) -> StaticTree:
    """The tensor-op builders (the reference of the Triton kernel): lp, tok (d, K) per-depth
    top-K log-probs (descending) and tokens; K = 1 for chain; budget ≥ 2."""
    k = lp.shape[1]
    lp = lp.clamp(min=FLOOR)
    if builder in ("topb", "chain"):
        return _topb(lp, tok, root, budget, n_nodes)
    if builder == "accum_logp":
        return _expand(lp, tok, root, budget, n_nodes, fan=None)
    if builder == "top2gap":
        fan = torch.where(lp[:, 0] - lp[:, 1] > TOP2GAP_NATS, 1, k) if k > 1 else None
        return _expand(lp, tok, root, budget, n_nodes, fan=fan)
    raise ValueError(f"no static builder {builder!r}")


def _topb(lp, tok, root, budget, n_nodes) -> StaticTree:
    dev = lp.device
    d = lp.shape[0]
    keep = budget - 1
    cum, par, rank, toks, lps, depth = _levels(lp, tok, keep, with_root=False, n_levels=d)
    m = min(keep, cum.numel())
    order = torch.sort(cum, descending=True, stable=True).indices[:m]       # (m,) entries, best first
    _, _, ar = _level_consts(dev, lp.shape[1], keep, d, False)
    pos_of = torch.zeros(cum.numel(), device=dev, dtype=torch.long).index_copy_(0, order, ar[:m])
    p = par[order]
    parents = torch.where(p < 0, 0, pos_of[p.clamp(min=0)] + 1)
    c = _pads(dev, n_nodes, m)
    cat = torch.cat
    par_all = cat([c["neg1"], parents, c["pad"]])
    return StaticTree(tokens=cat([root.reshape(1), toks[order], root.reshape(1).expand(n_nodes - 1 - m)]),
                      parents=par_all, depth=cat([c["zero"], depth[order], c["pad"]]),
                      rank=cat([c["neg1"], rank[order], c["pad"]]),
                      draft_logp=cat([c["zerof"], lps[order], c["padf"]]),
                      cum_logp=cat([c["zerof"], cum[order], c["padf"]]),
                      valid=c["valid"], n_valid=c["n_valid"], anc=ancestor_mask(par_all, d))


def _expand(lp, tok, root, budget, n_nodes, fan) -> StaticTree:
    """accum_logp (fan None: K children per expansion) or top2gap (fan (d,) per depth)."""
    dev = lp.device
    d, k = lp.shape
    if fan is not None:  # ranks past a depth's fanout are not candidates at all
        lp = torch.where(torch.arange(k, device=dev)[None, :] < fan[:, None], lp, float("-inf"))
        keep = budget - 1
    else:
        keep = math.ceil((budget - 1) / k)
    # expandable entries: the root and the kept nodes of depths 1..d−1
    cum, par, rank, _, _, depth = _levels(lp, tok, keep, with_root=True, n_levels=d - 1)
    e = min(keep, cum.numel())
    order = torch.sort(cum, descending=True, stable=True).indices[:e]       # expansion (pop) order
    ok = torch.isfinite(cum[order])
    dep = depth[order]                                                       # (E,) in 0..d−1
    fan_e = torch.where(ok, fan[dep] if fan is not None else k, 0)
    before = torch.cumsum(fan_e, 0) - fan_e
    count = torch.minimum(fan_e, (budget - 1 - before).clamp(min=0))        # children each gets
    jj = torch.arange(k, device=dev)
    made = jj[None, :] < count[:, None]                                     # (E, K) child exists
    flat = made.reshape(-1)
    node = torch.cumsum(flat.long(), 0)                                     # node index of each slot
    # node index of each expanded entry: the root is 0, else the slot (its parent's expansion, its rank)
    pos_of = torch.zeros(cum.numel(), device=dev, dtype=torch.long).index_copy_(
        0, order, torch.arange(e, device=dev))
    p = par[order]
    own_slot = (pos_of[p.clamp(min=0)] * k + rank[order].clamp(min=0)).clamp(max=e * k - 1)
    own = torch.where(p < 0, 0, node[own_slot])                             # (E,)
    m = n_nodes - 1
    dst = torch.where(flat, node - 1, m)                                    # m = dump slot
    c_lp = lp[dep]                                                          # (E, K)

    def scatter(values, dtype, fill):
        out = torch.full((m + 1,), fill, device=dev, dtype=dtype)
        return out.index_put_((dst,), values.reshape(-1).to(dtype))[:m]

    c = _pads(dev, n_nodes, 0)
    cat = torch.cat
    valid = cat([c["valid"][:1], scatter(flat, torch.bool, False)])        # root first
    par_all = cat([c["neg1"], scatter(own[:, None].expand(e, k), torch.long, 0)])
    return StaticTree(
        tokens=torch.where(valid, cat([root.reshape(1), scatter(tok[dep], torch.long, 0)]), root),
        parents=par_all, depth=cat([c["zero"], scatter((dep + 1)[:, None].expand(e, k), torch.long, 0)]),
        rank=cat([c["neg1"], scatter(jj[None, :].expand(e, k), torch.long, 0)]),
        draft_logp=cat([c["zerof"], scatter(c_lp, torch.float32, 0.0)]),
        cum_logp=cat([c["zerof"], scatter(cum[order][:, None] + c_lp, torch.float32, 0.0)]),
        valid=valid, n_valid=flat.sum() + 1, anc=ancestor_mask(par_all, d))
