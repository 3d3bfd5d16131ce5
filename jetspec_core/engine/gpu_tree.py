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

Everything returned is a fixed-size array of `n_nodes` (the verify bucket); nodes past
`n_valid` are padding (token = root, parent = root, invalid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


def ancestor_mask(parents: torch.Tensor, max_depth: int) -> torch.Tensor:
    """(N, N) bool ancestor-or-self from parent pointers (-1 for the root): after t steps each
    row holds its ancestors up to t levels up, so max_depth steps suffice."""
    n = parents.shape[0]
    par = parents.clamp(min=0)
    anc = torch.eye(n, dtype=torch.bool, device=parents.device)
    for _ in range(max_depth):
        anc = anc | anc[par]
    return anc


def _levels(lp: torch.Tensor, tok: torch.Tensor, keep: int, with_root: bool, n_levels: int):
    """Best `keep` nodes per depth, built from the kept nodes one depth up.

    lp, tok (d, K). Returns flat level-major entry arrays (cum, parent entry or -1, rank, token,
    own log-prob, depth) over depths 1..n_levels (plus the root as entry 0 when with_root)."""
    dev = lp.device
    k = lp.shape[1]
    zero = torch.zeros(1, device=dev)
    cums, pars, ranks, toks, lps, depths = [], [], [], [], [], []
    if with_root:
        cums.append(zero)
        pars.append(torch.full((1,), -1, device=dev, dtype=torch.long))
        ranks.append(torch.full((1,), -1, device=dev, dtype=torch.long))
        toks.append(torch.zeros(1, device=dev, dtype=torch.long))
        lps.append(zero)
        depths.append(torch.zeros(1, device=dev, dtype=torch.long))
    prev_cum, prev_off = zero, (0 if with_root else -1)
    offset = 1 if with_root else 0
    for d in range(1, n_levels + 1):
        cand = (prev_cum[:, None] + lp[d - 1][None, :]).reshape(-1)      # (s_prev · K,)
        size = min(keep, cand.numel())
        if size < cand.numel():
            val, idx = torch.topk(cand, size, sorted=True)
        else:
            val, idx = cand, torch.arange(cand.numel(), device=dev)
        slot, rk = idx // k, idx % k
        cums.append(val)
        pars.append(slot + prev_off if prev_off >= 0 else torch.full_like(slot, -1))
        ranks.append(rk)
        toks.append(tok[d - 1][rk])
        lps.append(lp[d - 1][rk])
        depths.append(torch.full_like(slot, d))
        prev_cum, prev_off = val, offset
        offset += size
    cat = torch.cat
    return cat(cums), cat(pars), cat(ranks), cat(toks), cat(lps), cat(depths)


def _assemble(root: torch.Tensor, n_nodes: int, dev, tokens, parents, depth, rank, lp, cum, valid,
              max_depth: int) -> StaticTree:
    """Pad node arrays (root excluded, length m ≤ n_nodes − 1) to n_nodes with the root first."""
    m = tokens.shape[0]
    pad = n_nodes - 1 - m
    assert pad >= 0, "tree larger than its bucket"

    def full(first, body, fill, dtype):
        parts = [torch.full((1,), first, device=dev, dtype=dtype), body.to(dtype)]
        if pad:
            parts.append(torch.full((pad,), fill, device=dev, dtype=dtype))
        return torch.cat(parts)

    valid_all = full(True, valid, False, torch.bool)
    is_root = torch.arange(n_nodes, device=dev) == 0
    tok_all = torch.where(valid_all & ~is_root, full(0, tokens, 0, torch.long), root)
    par_all = torch.where(valid_all, full(-1, parents, 0, torch.long), 0)
    depth_all = torch.where(valid_all, full(0, depth, 0, torch.long), 0)
    return StaticTree(
        tokens=tok_all, parents=par_all, depth=depth_all,
        rank=torch.where(valid_all, full(-1, rank, 0, torch.long), 0),
        draft_logp=torch.where(valid_all, full(0.0, lp, 0.0, torch.float32), 0.0),
        cum_logp=torch.where(valid_all, full(0.0, cum, 0.0, torch.float32), 0.0),
        valid=valid_all, n_valid=valid_all.sum(), anc=ancestor_mask(par_all, max_depth))


def root_only(root: torch.Tensor, n_nodes: int) -> StaticTree:
    dev = root.device
    e = torch.zeros(0, device=dev, dtype=torch.long)
    f = torch.zeros(0, device=dev)
    return _assemble(root, n_nodes, dev, e, e, e, e, f, f, torch.zeros(0, dtype=torch.bool, device=dev), 0)


def build_static(builder: str, depth_logp: torch.Tensor, root: torch.Tensor, width: int, depth: int,
                 budget: int, n_nodes: int) -> StaticTree:
    """The tree of `builder` from depth_logp (D, V) fp32, root 0-d long; n_nodes ≥ budget."""
    d = min(depth, depth_logp.shape[0])
    if budget <= 1 or d == 0:
        return root_only(root, n_nodes)
    k = 1 if builder == "chain" else min(width, depth_logp.shape[-1])
    lp, tok = torch.topk(depth_logp[:d].float(), k, dim=-1)               # (d, K) descending
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
    pos_of = torch.zeros(cum.numel(), device=dev, dtype=torch.long)
    pos_of[order] = torch.arange(m, device=dev)
    p = par[order]
    parents = torch.where(p < 0, 0, pos_of[p.clamp(min=0)] + 1)
    valid = torch.ones(m, dtype=torch.bool, device=dev)
    return _assemble(root, n_nodes, dev, toks[order], parents, depth[order], rank[order], lps[order],
                     cum[order], valid, d)


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
    cum, par, rank, toks, _, depth = _levels(lp, tok, keep, with_root=True, n_levels=d - 1)
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
    node = 1 + torch.cumsum(flat.long(), 0) - flat.long()                   # node index of each slot
    # node index of each expanded entry: the root is 0, else the slot (its parent's expansion, its rank)
    pos_of = torch.zeros(cum.numel(), device=dev, dtype=torch.long)
    pos_of[order] = torch.arange(e, device=dev)
    p = par[order]
    own_slot = (pos_of[p.clamp(min=0)] * k + rank[order].clamp(min=0)).clamp(max=e * k - 1)
    own = torch.where(p < 0, 0, node[own_slot])                             # (E,)
    c_lp = lp[dep]                                                          # (E, K)
    c_tok = tok[dep]
    c_cum = cum[order][:, None] + c_lp
    m = n_nodes - 1
    dst = torch.where(flat, node - 1, m)                                    # m = dump slot

    def scatter(values, dtype, fill=0):
        out = torch.full((m + 1,), fill, device=dev, dtype=dtype)
        out[dst] = values.reshape(-1).to(dtype)
        return out[:m]

    valid = scatter(flat, torch.bool, False)
    return _assemble(root, n_nodes, dev, scatter(c_tok, torch.long),
                     scatter(own[:, None].expand(e, k), torch.long),
                     scatter((dep + 1)[:, None].expand(e, k), torch.long),
                     scatter(jj[None, :].expand(e, k), torch.long),
                     scatter(c_lp, torch.float32), scatter(c_cum, torch.float32), valid, d)
