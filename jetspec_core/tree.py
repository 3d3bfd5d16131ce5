"""Candidate trees: the one tree type and the builders that make it under a node budget.

A builder is a pure function of the per-depth top-K draft log-probs. Every parent at depth d
gets the same K candidate tokens (the head gives per-depth marginals). The budget counts the
root. Nodes come out parent-before-child, so `parents[i] < i` for every non-root node.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import torch

# top2gap: a depth whose top-1 beats its top-2 by more than this many nats gets one child per
# parent instead of K (the head is confident there, so siblings would waste budget).
TOP2GAP_NATS = 2.0


@dataclass
class Tree:
    """A candidate tree. Index 0 is the root (the anchor: the last committed token).

    tokens, parents (-1 for the root), depth (root 0), rank (index of the token among the K
    candidates at its depth; -1 for the root), draft_logp (the node's own draft log-prob; 0 for the
    root) and cum_logp (sum along the path): all 1-D CPU tensors of length N.
    """

    tokens: torch.Tensor      # (N,) long
    parents: torch.Tensor     # (N,) long
    depth: torch.Tensor       # (N,) long
    rank: torch.Tensor        # (N,) long
    draft_logp: torch.Tensor  # (N,) float32
    cum_logp: torch.Tensor    # (N,) float32

    def __len__(self) -> int:
        return int(self.tokens.numel())

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    def positions(self, past_len: int) -> torch.Tensor:
        """Absolute positions of the nodes: past_len + depth."""
        return self.depth + past_len

    def ancestor_mask(self) -> torch.Tensor:
        """(N, N) bool, [i, j] is True when j is i itself or an ancestor of i."""
        n = len(self)
        anc = torch.eye(n, dtype=torch.bool)
        if n > 1:
            par = self.parents[1:]
            for _ in range(self.max_depth):
                anc[1:] |= anc[par]
        return anc

    def children(self) -> list[list[int]]:
        """Child indices of every node, in tree order."""
        kids: list[list[int]] = [[] for _ in range(len(self))]
        for i, p in enumerate(self.parents.tolist()):
            if p >= 0:
                kids[p].append(i)
        return kids

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to `node`, inclusive."""
        par = self.parents.tolist()
        path = [node]
        while par[path[-1]] >= 0:
            path.append(par[path[-1]])
        return path[::-1]

    @staticmethod
    def from_lists(tokens, parents, depth, rank, draft_logp, cum_logp) -> "Tree":
        return Tree(
            tokens=torch.tensor(tokens, dtype=torch.long),
            parents=torch.tensor(parents, dtype=torch.long),
            depth=torch.tensor(depth, dtype=torch.long),
            rank=torch.tensor(rank, dtype=torch.long),
            draft_logp=torch.tensor(draft_logp, dtype=torch.float32),
            cum_logp=torch.tensor(cum_logp, dtype=torch.float32),
        )


class _Builder:
    """Accumulates nodes in creation order (parent-before-child)."""

    def __init__(self, root_token: int):
        self.tokens, self.parents, self.depth = [root_token], [-1], [0]
        self.rank, self.lp, self.cum = [-1], [0.0], [0.0]

    def add(self, parent: int, token: int, rank: int, lp: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(self.depth[parent] + 1)
        self.rank.append(rank)
        self.lp.append(lp)
        self.cum.append(self.cum[parent] + lp)
        return len(self.tokens) - 1

    def tree(self) -> Tree:
        return Tree.from_lists(self.tokens, self.parents, self.depth, self.rank, self.lp, self.cum)


def _accum(root: int, lp: list[list[float]], tok: list[list[int]], budget: int,
           fanout: list[int]) -> Tree:
    """Max-heap on cumulative log-prob (FIFO on ties); a popped node gets all its children."""
    b = _Builder(root)
    order = itertools.count()
    heap = [(-0.0, next(order), 0)]
    depth_max = len(lp)
    while heap and len(b.tokens) < budget:
        _, _, node = heapq.heappop(heap)
        d = b.depth[node]
        if d >= depth_max:
            continue
        for j in range(fanout[d]):
            if len(b.tokens) >= budget:
                break
            child = b.add(node, tok[d][j], j, lp[d][j])
            heapq.heappush(heap, (-b.cum[child], next(order), child))
    return b.tree()


def build_accum_logp(root: int, lp: list[list[float]], tok: list[list[int]], budget: int) -> Tree:
    """The reference builder: best-first expansion, every popped node gets all K children."""
    return _accum(root, lp, tok, budget, [len(row) for row in lp])


def build_top2gap(root: int, lp: list[list[float]], tok: list[list[int]], budget: int,
                  gap: float = TOP2GAP_NATS) -> Tree:
    """accum_logp with one child per parent at depths where top-1 beats top-2 by > gap nats."""
    fan = [1 if len(row) > 1 and row[0] - row[1] > gap else len(row) for row in lp]
    return _accum(root, lp, tok, budget, fan)


def build_topb(root: int, lp: list[list[float]], tok: list[list[int]], budget: int) -> Tree:
    """The `budget` best nodes of the full K-ary tree by cumulative log-prob (root included).

    Lazy best-first enumeration: popping a node pushes its next sibling and its first child,
    so nodes come out in non-increasing cum order. Log-probs are <= 0, so the set is
    prefix-closed (a child never beats its parent; ties go to the node pushed first).
    """
    b = _Builder(root)
    order = itertools.count()
    heap: list = []
    depth_max, k = len(lp), len(lp[0]) if lp else 0

    def push(parent: int, j: int) -> None:
        d = b.depth[parent]
        if d < depth_max and j < k:
            heapq.heappush(heap, (-(b.cum[parent] + lp[d][j]), next(order), parent, j))

    push(0, 0)
    while heap and len(b.tokens) < budget:
        _, _, parent, j = heapq.heappop(heap)
        d = b.depth[parent]
        node = b.add(parent, tok[d][j], j, lp[d][j])
        push(parent, j + 1)
        push(node, 0)
    return b.tree()


def build_chain(root: int, lp: list[list[float]], tok: list[list[int]], budget: int) -> Tree:
    """K = 1: the top-1 token at each depth, one after another (the DFlash-style baseline)."""
    b = _Builder(root)
    node = 0
    for d in range(min(len(lp), budget - 1)):
        node = b.add(node, tok[d][0], 0, lp[d][0])
    return b.tree()


BUILDERS = {
    "accum_logp": build_accum_logp,
    "topb": build_topb,
    "top2gap": build_top2gap,
    "chain": build_chain,
}


def build_tree(builder: str, root: int, depth_logp: torch.Tensor, width: int, depth: int,
               budget: int, calibration=None) -> Tree:
    """Top-`width` tokens of each of the first `depth` rows of `depth_logp` (D, V) → a tree.

    With a `Calibration` the builder ranks nodes by calibrated scores (same order within a depth,
    different trade-off between depths); the tree still records the head's own log-probs."""
    d = min(depth, depth_logp.shape[0])
    if budget <= 1 or d == 0:
        return _Builder(root).tree()
    k = min(width, depth_logp.shape[-1])
    lp, tok = torch.topk(depth_logp[:d].float(), k, dim=-1)  # (d, k) sorted descending
    if calibration is None:
        return BUILDERS[builder](root, lp.tolist(), tok.tolist(), budget)
    tree = BUILDERS[builder](root, calibration.apply(lp).cpu().tolist(), tok.tolist(), budget)
    return with_logp(tree, lp.cpu())


def with_logp(tree: Tree, lp: torch.Tensor) -> Tree:
    """The tree with draft_logp / cum_logp taken from the (d, K) log-probs at each node's depth and rank."""
    own = torch.zeros(len(tree))
    if len(tree) > 1:
        own[1:] = lp[tree.depth[1:] - 1, tree.rank[1:]]
    tree.draft_logp, tree.cum_logp = own, tree.ancestor_mask().float() @ own
    return tree
