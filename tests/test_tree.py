"""Tree builders against independent brute force, and the tree's derived arrays."""
import itertools
import random

import pytest
import torch

from jetspec_core.tree import build_accum_logp, build_chain, build_top2gap, build_topb, build_tree


def rand_lp(rng, d, k):
    lp = [sorted((-rng.expovariate(1.0) for _ in range(k)), reverse=True) for _ in range(d)]
    tok = [rng.sample(range(1000), k) for _ in range(d)]
    return lp, tok


def brute_accum(root, lp, tok, budget):
    """Linear-scan version of the reference: the best unexpanded node (ties: created first)
    gets all K children until the budget (root included) is reached."""
    nodes = [dict(tok=root, par=-1, d=0, cum=0.0)]
    expanded = set()
    while len(nodes) < budget:
        cands = [i for i, n in enumerate(nodes) if i not in expanded]
        if not cands:
            break
        best = max(cands, key=lambda i: (nodes[i]["cum"], -i))
        expanded.add(best)
        n = nodes[best]
        if n["d"] >= len(lp):
            continue
        for j in range(len(lp[0])):
            if len(nodes) >= budget:
                break
            nodes.append(dict(tok=tok[n["d"]][j], par=best, d=n["d"] + 1, cum=n["cum"] + lp[n["d"]][j]))
    return nodes


@pytest.mark.parametrize("seed", range(40))
def test_accum_logp_matches_brute_force(seed):
    rng = random.Random(seed)
    d, k, budget = rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 40)
    lp, tok = rand_lp(rng, d, k)
    if seed % 4 == 0:  # exact ties exercise the FIFO rule
        lp = [[round(x, 0) for x in row] for row in lp]
    t = build_accum_logp(7, lp, tok, budget)
    ref = brute_accum(7, lp, tok, budget)
    assert t.tokens.tolist() == [n["tok"] for n in ref]
    assert t.parents.tolist() == [n["par"] for n in ref]
    assert t.depth.tolist() == [n["d"] for n in ref]
    assert torch.allclose(t.cum_logp, torch.tensor([n["cum"] for n in ref], dtype=torch.float32))


def all_paths(d, k):
    for depth in range(1, d + 1):
        yield from itertools.product(range(k), repeat=depth)


@pytest.mark.parametrize("seed", range(30))
def test_topb_is_exact_prefix_closed_and_sized(seed):
    rng = random.Random(100 + seed)
    d, k, budget = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 60)
    lp, tok = rand_lp(rng, d, k)
    t = build_topb(3, lp, tok, budget)
    possible = 1 + sum(k ** i for i in range(1, d + 1))
    assert len(t) == min(budget, possible)
    # prefix-closed, parents first
    par = t.parents.tolist()
    assert all(p < i for i, p in enumerate(par) if i > 0)
    # the same set of paths as brute-force enumeration of every node of the K-ary tree
    ranks = t.rank.tolist()
    chosen = {tuple(ranks[j] for j in t.path_to(i)[1:]) for i in range(1, len(t))}
    scored = sorted(all_paths(d, k), key=lambda p: -sum(lp[i][r] for i, r in enumerate(p)))
    assert chosen == set(scored[: len(t) - 1])


def test_chain_and_top2gap():
    lp = [[-0.01, -5.0, -6.0], [-0.7, -0.8, -3.0], [-0.1, -4.0, -4.5]]
    tok = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    c = build_chain(0, lp, tok, 10)
    assert c.tokens.tolist() == [0, 1, 4, 7] and c.parents.tolist() == [-1, 0, 1, 2]
    assert len(build_chain(0, lp, tok, 2)) == 2
    g = build_top2gap(0, lp, tok, 10)
    # depth 1 and 3 are confident (gap > 2 nats): one child each; depth 2 gets all 3
    by_depth = {d: g.depth.tolist().count(d) for d in range(4)}
    assert by_depth[1] == 1 and by_depth[2] == 3 and by_depth[3] == 3


def test_budget_counts_root_and_masks():
    lp = torch.log_softmax(torch.randn(5, 50, generator=torch.Generator().manual_seed(0)), -1)
    for builder in ("accum_logp", "topb", "top2gap"):
        t = build_tree(builder, 11, lp, width=3, depth=5, budget=9)
        assert len(t) == 9 and t.tokens[0] == 11 and t.parents[0] == -1
        anc = t.ancestor_mask()
        for i in range(len(t)):
            assert set(torch.nonzero(anc[i]).flatten().tolist()) == set(t.path_to(i))
        assert torch.equal(t.positions(40), t.depth + 40)
    assert len(build_tree("accum_logp", 11, lp, 3, 5, budget=1)) == 1


@pytest.mark.parametrize("builder", ["accum_logp", "topb", "top2gap", "chain"])
def test_rows_deeper_than_budget_minus_one_are_never_used(builder):
    """The decoder asks the drafter for only budget − 1 depths: that must not change any tree."""
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        lp = torch.log_softmax(2.5 * torch.randn(15, 40, generator=g), -1)
        for budget in range(2, 20):
            full = build_tree(builder, 3, lp, 5, 15, budget)
            cut = build_tree(builder, 3, lp[: budget - 1], 5, 15, budget)
            assert full.tokens.tolist() == cut.tokens.tolist() and full.parents.tolist() == cut.parents.tolist()
