"""The engine's greedy accept and round record in one launch.

After the verify pass the engine needs, per round: which node is accepted (the greedy rule), the
accepted path by depth, τ and the bonus token — and, for the round record the app draws, every
node's tokens / parents / depths / ranks / draft scores, whether it matched the target's choice,
its target probability and how many nodes had a fully matching path. In tensor ops that is about
thirty small kernels (`greedy_record_reference`), as many in a plain step as in a round, which on
a small target costs more than its attention. Here one program does it all and writes the two
staging buffers the host copies back:

- ints (4 + D1 + 5N) int64: n_valid, τ (= accepted depth + 1), bonus, best node, path (D1 node
  indices, root first; entries past τ are 0), then tokens, parents, depth, rank, target argmax;
- floats (1 + 4N) float32: the number of nodes whose whole path matches, then draft_logp,
  cum_logp, target probability of each node's token under its parent, match (0/1).

Greedy rule, in the paper's notation: child c of u matches when x_c = argmax p_u; a node is
acceptable when every node on its path matches; the deepest acceptable node is accepted (the
lowest index among equally deep ones), and the bonus token is argmax p at it. The root always
matches. `path`, `τ` and `bonus` are read on the device by the commit (no host sync).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_NODES = 256  # the largest verify bucket


def layout(n: int, d1: int) -> tuple[int, int]:
    """Sizes of the (ints, floats) staging buffers for n nodes and d1 path slots."""
    return 4 + d1 + 5 * n, 1 + 4 * n


def unpack(ints: list[int], floats: list[float], n: int, d1: int) -> dict:
    """The two staging buffers, copied to the host as lists, → the round record's fields for the
    n_valid real nodes (names as in `decoder.RoundRecord`)."""
    nv, plen = ints[0], ints[1]
    o = 4 + d1
    tokens, parents, depth, rank, top = (ints[o + i * n: o + i * n + nv] for i in range(5))
    draft_logp, cum_logp, tprob, match = (floats[1 + i * n: 1 + i * n + nv] for i in range(4))
    return dict(tokens=tokens, parents=parents, depth=depth, rank=rank, draft_logp=draft_logp, cum_logp=cum_logp,
                target_prob=tprob, accept_prob=match, target_top=top, accepted=ints[4:4 + plen], bonus=ints[2],
                expected_tau=floats[0])


def greedy_record_reference(tokens, parents, depth, rank, valid, n_valid, anc, draft_logp, cum_logp,
                            top, logits, lse, ints: torch.Tensor, floats: torch.Tensor) -> None:
    """Tensor ops: tree arrays (N,) (anc (N, N) bool, valid bool, n_valid 0-d), target argmax
    `top` (N,), logits (N, V) fp32 and their log-sum-exp (N,) → fills ints and floats (see module)."""
    n = tokens.shape[0]
    d1 = ints.shape[0] - 4 - 5 * n
    ar = torch.arange(n, device=tokens.device)
    par0 = parents.clamp(min=0)
    match = ((tokens == top[par0]) | (ar == 0)) & valid                    # (N,)
    ok = ~(anc & ~match[None, :]).any(-1)                                  # whole path matches
    best = torch.argmax(torch.where(ok, depth, -1)).reshape(1)
    plen = depth.index_select(0, best) + 1                                 # τ
    on_path = anc.index_select(0, best)                                    # (1, N)
    level = torch.arange(d1, device=tokens.device)[:, None]
    path = (on_path & (depth[None, :] == level)).float().argmax(-1)        # (D1,)
    bonus = top.index_select(0, best)
    tprob = torch.where(ar == 0, 1.0, torch.exp(logits[par0, tokens] - lse[par0]))
    ints.copy_(torch.cat([n_valid.reshape(1), plen, bonus, best, path, tokens, parents, depth, rank, top]))
    floats.copy_(torch.cat([(ok & valid).sum().float().reshape(1), draft_logp, cum_logp, tprob.float(),
                            match.float()]))


@triton.jit
def _greedy_record_kernel(TOK, PAR, DEP, RANK, VALID, NVALID, ANC, DLP, CLP, TOP, LOGITS, stride_l, LSE,
                          INTS, FLOATS, N: tl.constexpr, NB: tl.constexpr,
                          D1: tl.constexpr, D1B: tl.constexpr):
    j = tl.arange(0, NB)
    live = j < N
    tok = tl.load(TOK + j, mask=live, other=0)
    par = tl.load(PAR + j, mask=live, other=0)
    par0 = tl.maximum(par, 0)
    dep = tl.load(DEP + j, mask=live, other=-1)
    valid = tl.load(VALID + j, mask=live, other=0) != 0
    top = tl.load(TOP + j, mask=live, other=0)
    match = ((tok == tl.load(TOP + par0, mask=live, other=-1)) | (j == 0)) & valid & live
    # acceptable nodes (every node on the path matches): walk up the parents as deep as the tree
    # goes (the root is its own parent), reading back the match flags stored here — N · depth
    # loads, where scanning the ancestor rows took N² (the rows agree with the parents)
    tl.store(FLOATS + 1 + 3 * N + j, match.to(tl.float32), mask=live)
    tl.debug_barrier()
    ok = match
    x = j.to(tl.int64)
    for _ in range(tl.max(dep, 0).to(tl.int32) - 1):               # the root always matches
        x = tl.maximum(tl.load(PAR + x, mask=live, other=0), 0)
        ok = ok & (tl.load(FLOATS + 1 + 3 * N + x, mask=live, other=0.0, volatile=True) != 0)
    cand = tl.where(ok, dep, -1)
    best_d = tl.max(cand, axis=0)
    best_i = tl.argmax(cand, axis=0)                                          # the first of the deepest
    count = tl.sum((ok & valid).to(tl.int32), axis=0)
    on_path = tl.load(ANC + best_i * N + j, mask=live, other=0) != 0
    lv = tl.arange(0, D1B)
    hit = on_path[None, :] & (dep[None, :] == lv[:, None])                    # (D1B, NB)
    path = tl.argmax(hit.to(tl.int32), axis=1)                                # node at each depth (0: none)
    lg = tl.load(LOGITS + par0.to(tl.int64) * stride_l + tok, mask=live, other=0.0)
    tprob = tl.where(j == 0, 1.0, tl.exp(lg - tl.load(LSE + par0, mask=live, other=0.0)))
    tl.store(INTS + 0, tl.load(NVALID))
    tl.store(INTS + 1, best_d + 1)
    tl.store(INTS + 2, tl.load(TOP + best_i))
    tl.store(INTS + 3, best_i.to(tl.int64))
    tl.store(INTS + 4 + lv, path.to(tl.int64), mask=lv < D1)
    o = 4 + D1
    tl.store(INTS + o + j, tok, mask=live)
    tl.store(INTS + o + N + j, par, mask=live)
    tl.store(INTS + o + 2 * N + j, dep, mask=live)
    tl.store(INTS + o + 3 * N + j, tl.load(RANK + j, mask=live, other=0), mask=live)
    tl.store(INTS + o + 4 * N + j, top, mask=live)
    tl.store(FLOATS + 0, count.to(tl.float32))
    tl.store(FLOATS + 1 + j, tl.load(DLP + j, mask=live, other=0.0), mask=live)
    tl.store(FLOATS + 1 + N + j, tl.load(CLP + j, mask=live, other=0.0), mask=live)
    tl.store(FLOATS + 1 + 2 * N + j, tprob, mask=live)


def launch_meta(n: int, d1: int) -> dict:
    """The kernel's constexprs and warps for n nodes and d1 path slots (also what
    tests/sm90_compile.py compiles)."""
    return dict(N=n, NB=max(16, triton.next_power_of_2(n)), D1=d1, D1B=max(16, triton.next_power_of_2(d1)),
                num_warps=4)


def greedy_record_triton(tokens, parents, depth, rank, valid, n_valid, anc, draft_logp, cum_logp,
                         top, logits, lse, ints: torch.Tensor, floats: torch.Tensor) -> None:
    """One launch of `_greedy_record_kernel` (arguments as `greedy_record_reference`)."""
    n = tokens.shape[0]
    d1 = ints.shape[0] - 4 - 5 * n
    for name, t in (("tokens", tokens), ("parents", parents), ("depth", depth), ("rank", rank), ("top", top)):
        if t.dtype != torch.int64 or t.shape != (n,) or t.stride(0) != 1:
            raise ValueError(f"{name} must be a contiguous ({n},) int64 tensor, got {t.dtype} {tuple(t.shape)}")
    if not 1 <= n <= MAX_NODES or d1 < 1:
        raise ValueError(f"{n} nodes / {d1} path slots: need 1 ≤ N ≤ {MAX_NODES}, D1 ≥ 1")
    if valid.dtype != torch.bool or anc.dtype != torch.bool or anc.shape != (n, n) or not anc.is_contiguous():
        raise ValueError("valid (N,) and anc (N, N) must be contiguous bool tensors")
    if logits.dtype != torch.float32 or logits.shape[0] != n or logits.stride(1) != 1 or lse.dtype != torch.float32:
        raise ValueError("logits (N, V) and lse (N,) must be float32 with unit stride in V")
    if ints.dtype != torch.int64 or floats.dtype != torch.float32 or floats.shape[0] != 1 + 4 * n:
        raise ValueError(f"ints / floats must be int64 / float32 buffers of layout({n}, D1)")
    _greedy_record_kernel[(1,)](tokens, parents, depth, rank, valid.view(torch.uint8), n_valid, anc.view(torch.uint8),
                                draft_logp, cum_logp, top, logits, logits.stride(0), lse, ints, floats,
                                **launch_meta(n, d1))
