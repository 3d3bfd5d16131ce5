"""Acceptance rules: which path of the verified tree is committed, and the bonus token.

Notation (paper): the tree T has root r (the anchor); for node u, x_u is its token and
p_u = target distribution after the prefix plus the path r..u.

Greedy (T = 0): a child c of u matches when x_c = argmax p_u. Accept the deepest node whose
whole path matches; the bonus token is argmax p_u at that node. τ = accepted + 1.

Sampling (T > 0), sample-then-walk: at the current node u draw y ~ warp(p_u); if some child c
of u has x_c = y, move to c and repeat; otherwise emit y and stop. Every emitted token is a
draw from the target's warped distribution, so the output has exactly the target's law.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import sample
from .tree import Tree


@dataclass
class Acceptance:
    path: list[int]          # node indices root..deepest accepted node
    bonus: int               # the target's token after the path
    target_top: list[int]    # argmax of p_u at every node
    accept_prob: list[float]  # probability that node u's token is drawn at its parent (root 1)


def accept_greedy(tree: Tree, logits: torch.Tensor, anc: torch.Tensor) -> Acceptance:
    """logits (N, V) of the verify pass; anc (N, N) ancestor mask (on logits' device)."""
    top = logits.argmax(-1)                              # (N,)
    tokens = tree.tokens.to(logits.device)
    parents = tree.parents.to(logits.device).clamp(min=0)
    match = tokens == top[parents]                       # (N,) x_c == argmax p_parent
    match[0] = True
    ok = ~(anc & ~match[None, :]).any(-1)                # every node on the path matches
    depth = tree.depth.to(logits.device)
    best = int(torch.argmax(torch.where(ok, depth, -1)))  # first deepest (first sibling wins)
    top_l = top.tolist()
    return Acceptance(path=tree.path_to(best), bonus=top_l[best], target_top=top_l,
                      accept_prob=match.float().tolist())


def accept_sampled(tree: Tree, probs: torch.Tensor, gen: torch.Generator) -> Acceptance:
    """probs (N, V) warped target distributions; the walk draws one token per visited node."""
    kids = tree.children()
    tokens = tree.tokens.tolist()
    path, node = [0], 0
    while True:
        y = sample(probs[node], gen)
        nxt = next((c for c in kids[node] if tokens[c] == y), None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    parents = tree.parents.clamp(min=0).to(probs.device)
    p_tok = probs[parents, tree.tokens.to(probs.device)]
    p_tok[0] = 1.0
    return Acceptance(path=path, bonus=y, target_top=probs.argmax(-1).tolist(),
                      accept_prob=p_tok.tolist())


def expected_tau(tree: Tree, accept_prob: list[float], anc: torch.Tensor) -> float:
    """1 + Σ over non-root nodes of the product of accept_prob along the path."""
    logp = torch.tensor(accept_prob, dtype=torch.float64).clamp_min(1e-300).log()
    path_p = torch.exp(anc.cpu().double() @ logp)     # (N,) product over ancestors-or-self
    path_p[torch.tensor(accept_prob) == 0] = 0.0
    # a node whose ancestor has probability 0 already gets ~0 from the log of 1e-300
    return float(1.0 + path_p[1:].sum())
