"""Accept walks on the device: which path of the verified tree is committed, and the bonus token.

Inputs are the tree (`tokens`, `parents` with parents[0] = -1 and parents[i] < i) and one token
per node chosen by the target at that node (`choice`): its argmax for the greedy rule, or a
sample pre-drawn from the warped target distribution for the sampling rule (drawing one sample
per node up front and walking is distributionally the same as drawing along the walk, since the
walk looks at each node's sample at most once). In the paper's notation, node c "matches" when
x_c = choice[parent(c)]:

- greedy (T = 0): accept the deepest node whose whole path matches (the lowest index among
  equally deep ones), exactly `accept.accept_greedy`;
- sampled (T > 0), sample-then-walk: from the root, move to the first child whose token equals
  the current node's sample; stop where none does. Only the first matching child of a parent
  can be entered, so the fully matching nodes form one chain (`accept.accept_sampled`).

The bonus token is choice[last accepted node]. Outputs are device tensors: path_idx
(max_depth + 1,) int64 node indices root..last (then -1), path_len () = accepted nodes
including the root (τ), bonus (). They are views of one buffer, so `path_idx._base` — or the
`walk_to_host` helper — brings all three to the host in a single transfer: one sync per round.
A path deeper than max_depth is cut there (the walk stops at depth max_depth).

The kernel is one program: pointer jumping (log2 N rounds) computes each node's depth and
whether its whole path matches, keeping every 2^k-th ancestor table in a scratch buffer, from
which binary lifting reads the path. `*_reference` is the same algorithm in plain tensor ops.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_NODES = 8192
INT_TYPES = (torch.int32, torch.int64)


# ---------------------------------------------------------------- reference

def _walk_reference(tokens, parents, choice, max_depth, first_child: bool):
    n = tokens.shape[0]
    dev = tokens.device
    idx = torch.arange(n, device=dev)
    par = torch.where(idx == 0, 0, parents.long().clamp(min=0))              # no item writes: graph-safe
    match = (tokens.long() == choice.long()[par]) | (idx == 0)               # x_c == choice[parent]
    if first_child:  # only the lowest-index matching child of each parent can be entered
        big = torch.full((n,), n, dtype=torch.long, device=dev)
        first = big.scatter_reduce(0, par[1:], torch.where(match[1:], idx[1:], n), "amin")
        match &= (first[par] == idx) | (idx == 0)
    ok, depth, anc = match.clone(), (idx > 0).long(), par.clone()
    jumps = []                                                               # 2^k-th ancestors
    for _ in range(max(1, (n - 1).bit_length())):
        jumps.append(anc)
        ok, depth, anc = ok & ok[anc], depth + depth[anc], anc[anc]
    key = torch.where(ok, depth, -1)
    best = torch.argmax(key).reshape(1)                                      # first of the deepest
    dbest = key.gather(0, best)                                              # (1,) tensors throughout:
    dsel = dbest.clamp(max=max_depth)                                        # no host sync anywhere
    t = torch.arange(max_depth + 1, device=dev)
    steps = dbest - t                                                        # climb from best to depth t
    x = best.expand(max_depth + 1).clone()
    for k, table in enumerate(jumps):
        x = torch.where(((steps >> k) & 1).bool() & (steps >= 0), table[x], x)
    bonus = choice.long().gather(0, x.gather(0, dsel))
    buf = torch.cat([torch.where(t <= dsel, x, -1), dsel + 1, bonus])
    return buf[: max_depth + 1], buf[max_depth + 1], buf[max_depth + 2]


def greedy_accept_reference(tokens: torch.Tensor, parents: torch.Tensor, target_argmax: torch.Tensor,
                            max_depth: int | None = None):
    """Plain-PyTorch greedy walk (no host sync). Returns (path_idx, path_len, bonus)."""
    _check(tokens, parents, target_argmax, max_depth)
    return _walk_reference(tokens, parents, target_argmax, _depth(tokens, max_depth), False)


def sampled_accept_reference(tokens: torch.Tensor, parents: torch.Tensor, samples: torch.Tensor,
                             max_depth: int | None = None):
    """Plain-PyTorch sample-then-walk (no host sync). Returns (path_idx, path_len, bonus)."""
    _check(tokens, parents, samples, max_depth)
    return _walk_reference(tokens, parents, samples, _depth(tokens, max_depth), True)


def walk_to_host(path_idx: torch.Tensor, path_len: torch.Tensor, bonus: torch.Tensor) -> tuple[list[int], int]:
    """(accepted node indices root..last, bonus) with one device→host copy when the three come
    from one walk (they share a buffer)."""
    base = path_idx._base
    if base is not None and path_len._base is base and bonus._base is base:
        host = base.tolist()
        m = path_idx.numel()
        length, b = host[m], host[m + 1]
        return host[:length], b
    length = int(path_len)
    return path_idx[:length].tolist(), int(bonus)


# ---------------------------------------------------------------- kernel

@triton.jit(do_not_specialize=["N", "MAXD"])
def _walk_kernel(Tok, Par, Choice, Out, Scr, N, MAXD,
                 BLOCK: tl.constexpr, LOG: tl.constexpr, PBLOCK: tl.constexpr, FIRST_CHILD: tl.constexpr):
    i = tl.arange(0, BLOCK)
    valid = i < N
    tok = tl.load(Tok + i, mask=valid, other=-1).to(tl.int64)
    par = tl.load(Par + i, mask=valid, other=0).to(tl.int32)
    par = tl.where((i == 0) | (par < 0) | ~valid, 0, par)
    chosen = tl.load(Choice + par, mask=valid, other=-2).to(tl.int64)
    match = ((tok == chosen) | (i == 0)) & valid
    # scratch rows: [0] first matching child per parent, [1] ok, [2] depth, [3 + k] 2^k-th ancestor
    if FIRST_CHILD:
        tl.store(Scr + i, tl.full([BLOCK], BLOCK, tl.int32))
        tl.debug_barrier()
        tl.atomic_min(Scr + par, i, mask=match & (i > 0))
        tl.debug_barrier()
        first = tl.load(Scr + par, volatile=True)
        match = match & ((first == i) | (i == 0))
    ok = match.to(tl.int32)
    depth = tl.where(i > 0, 1, 0)
    anc = par
    for k in tl.static_range(LOG):
        tl.store(Scr + BLOCK + i, ok)
        tl.store(Scr + 2 * BLOCK + i, depth)
        tl.store(Scr + (3 + k) * BLOCK + i, anc)
        tl.debug_barrier()
        ok_up = tl.load(Scr + BLOCK + anc, volatile=True)
        depth_up = tl.load(Scr + 2 * BLOCK + anc, volatile=True)
        anc_up = tl.load(Scr + (3 + k) * BLOCK + anc, volatile=True)
        tl.debug_barrier()
        ok = ok & ok_up
        depth = depth + depth_up
        anc = anc_up
    key = tl.where((ok != 0) & valid, depth, -1)
    best = tl.argmax(key, 0, tie_break_left=True)
    dbest = tl.max(key, 0)
    dsel = tl.minimum(dbest, MAXD)
    # binary lifting from best: the ancestor at depth t is (dbest - t) steps up
    t = tl.arange(0, PBLOCK)
    steps = dbest - t
    x = tl.zeros([PBLOCK], tl.int32) + best
    for k in tl.static_range(LOG):
        up = tl.load(Scr + (3 + k) * BLOCK + x, volatile=True)
        x = tl.where((((steps >> k) & 1) != 0) & (steps >= 0), up, x)
    tl.store(Out + t, tl.where(t <= dsel, x, -1).to(tl.int64), mask=t <= MAXD)
    last = tl.sum(tl.where(t == dsel, x, 0), 0)
    tl.store(Out + MAXD + 1, (dsel + 1).to(tl.int64))
    tl.store(Out + MAXD + 2, tl.load(Choice + last).to(tl.int64))


# ---------------------------------------------------------------- launchers

def _depth(tokens: torch.Tensor, max_depth: int | None) -> int:
    return tokens.shape[0] - 1 if max_depth is None else int(max_depth)


def _check(tokens, parents, choice, max_depth) -> None:
    for name, t in (("tokens", tokens), ("parents", parents), ("choice", choice)):
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(t.shape)}")
        if t.dtype not in INT_TYPES:
            raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
        if t.stride(0) != 1:
            raise ValueError(f"{name} must be contiguous")
    n = tokens.shape[0]
    if not (1 <= n <= MAX_NODES) or parents.shape[0] != n or choice.shape[0] != n:
        raise ValueError(f"tokens, parents and choice must share N in [1, {MAX_NODES}]; got "
                         f"{tokens.shape[0]}, {parents.shape[0]}, {choice.shape[0]}")
    if not (tokens.device == parents.device == choice.device):
        raise ValueError(f"tokens, parents, choice on different devices: {tokens.device}, "
                         f"{parents.device}, {choice.device}")
    if max_depth is not None and int(max_depth) < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")


def _walk_triton(tokens, parents, choice, max_depth, first_child: bool):
    _check(tokens, parents, choice, max_depth)
    n = tokens.shape[0]
    maxd = _depth(tokens, max_depth)
    block = max(16, triton.next_power_of_2(n))
    log = max(1, (block - 1).bit_length())
    buf = torch.empty(maxd + 3, dtype=torch.int64, device=tokens.device)
    scratch = torch.empty((3 + log) * block, dtype=torch.int32, device=tokens.device)
    _walk_kernel[(1,)](tokens, parents, choice, buf, scratch, n, maxd,
                       BLOCK=block, LOG=log, PBLOCK=max(16, triton.next_power_of_2(maxd + 1)),
                       FIRST_CHILD=first_child, num_warps=4 if block <= 1024 else 8)
    return buf[: maxd + 1], buf[maxd + 1], buf[maxd + 2]


def greedy_accept_triton(tokens: torch.Tensor, parents: torch.Tensor, target_argmax: torch.Tensor,
                         max_depth: int | None = None):
    """One-program greedy walk. tokens, parents, target_argmax (N,) int → (path_idx, path_len, bonus)."""
    return _walk_triton(tokens, parents, target_argmax, max_depth, False)


def sampled_accept_triton(tokens: torch.Tensor, parents: torch.Tensor, samples: torch.Tensor,
                          max_depth: int | None = None):
    """One-program sample-then-walk. samples[i] ~ warped target distribution at node i."""
    return _walk_triton(tokens, parents, samples, max_depth, True)
