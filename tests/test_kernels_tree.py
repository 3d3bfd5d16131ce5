"""The one-launch tree builder (`kernels/tree_build.py`) against the tensor-op builders of
`engine/gpu_tree.py`: the same `StaticTree`, every field exactly (padding and ancestor mask
included), for topb, chain, accum_logp and top2gap.

Inputs: random log-probs, log-probs with many exact ties (rounded to 0.5 nats, some -0.0), rows
where most tokens are impossible (-inf, so the top-K runs into FLOOR) and flat rows (all tied).
Without a GPU (CI) the kernel runs through the Triton interpreter, which is slow for big sorts:
a subset that still covers every depth, width, budget, builder and input kind. With a GPU the
full grid (`@pytest.mark.gpu`), and a CUDA-graph capture replayed with new inputs.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import interpreted

CUDA = torch.cuda.is_available()
tb, = interpreted('jetspec_core.kernels.tree_build')

from test_engine import _same_tree  # noqa: E402

from jetspec_core import backend  # noqa: E402
from jetspec_core.errors import JetSpecError  # noqa: E402
from jetspec_core.config import BUILDERS  # noqa: E402
from jetspec_core.engine import bucket_for  # noqa: E402
from jetspec_core.engine.gpu_tree import StaticTree, build_from_topk, build_static  # noqa: E402
from jetspec_core.tree import build_tree  # noqa: E402

DEV = torch.device("cuda" if CUDA else "cpu")
KINDS = ("random", "ties", "floor", "flat")
ROOT = 11


pytestmark = pytest.mark.usefixtures("triton_interpreter")


# ---------------------------------------------------------------- helpers

def depth_logp(kind: str, d: int, gen: torch.Generator, v: int = 40) -> torch.Tensor:
    """(d, v) per-depth draft log-probs of one kind."""
    x = torch.log_softmax(torch.randn(d, v, generator=gen) * 2, -1)
    if kind == "ties":  # many exactly equal values (and -0.0)
        x = torch.round(x * 2) / 2
    elif kind == "floor":  # most tokens impossible: the top-K holds -inf (clamped to FLOOR)
        drop = torch.rand(d, v, generator=gen) < 0.85
        drop[:, 0] = False
        drop[d // 2, 1:] = True
        x = x.masked_fill(drop, float("-inf"))
    elif kind == "flat":  # every candidate of a depth tied
        x = torch.full((d, v), -math.log(v))
    return x


def both(builder: str, lp: torch.Tensor, width: int, budget: int, depth: int = 15):
    """build_static through the kernel and through the tensor ops."""
    root = torch.tensor(ROOT, device=lp.device)
    with backend.forced("triton"):
        got = build_static(builder, lp, root, width, depth, budget, bucket_for(budget))
    with backend.forced("reference"):
        ref = build_static(builder, lp, root, width, depth, budget, bucket_for(budget))
    return got, ref


def assert_same(got: StaticTree, ref: StaticTree, what) -> None:
    for f in StaticTree.FIELDS:
        a, b = getattr(got, f), getattr(ref, f)
        assert a.shape == b.shape and a.dtype == b.dtype, (what, f, a.shape, b.shape, a.dtype, b.dtype)
        assert torch.equal(a, b), (what, f, a.tolist(), b.tolist())


def check(builder: str, d: int, k: int, budget: int, kind: str, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    lp = depth_logp(kind, d, gen).to(DEV)
    got, ref = both(builder, lp, k, budget)
    assert_same(got, ref, (builder, d, k, budget, kind))
    if kind == "random":  # no ties: also the heap builders of jetspec_core.tree
        tree = build_tree(builder, ROOT, lp.cpu(), k, 15, budget)
        assert _same_tree(StaticTree(**{f: getattr(got, f).cpu() for f in StaticTree.FIELDS}), tree)


# ---------------------------------------------------------------- CPU (interpreter) subset

# (d, K, budget, input kind) per builder: every d, K, budget and kind appears for each builder
SUBSET = {
    "topb": [(1, 16, 256, "random"), (2, 2, 5, "ties"), (4, 7, 64, "random"), (15, 1, 37, "flat"),
             (2, 16, 37, "floor"), (4, 2, 16, "ties"), (15, 2, 2, "floor"), (2, 7, 128, "flat")],
    "chain": [(15, 7, 256, "random"), (4, 7, 5, "ties"), (2, 1, 16, "floor"), (1, 16, 2, "flat"),
              (15, 16, 64, "floor"), (4, 2, 128, "ties"), (2, 7, 37, "random")],
    "accum_logp": [(15, 7, 64, "ties"), (4, 16, 256, "floor"), (2, 2, 37, "flat"), (1, 7, 2, "random"),
                   (15, 1, 16, "random"), (4, 7, 128, "random"), (2, 16, 5, "ties")],
    "top2gap": [(4, 2, 128, "ties"), (15, 16, 16, "floor"), (2, 7, 37, "ties"), (1, 16, 256, "random"),
                (15, 1, 5, "flat"), (4, 7, 64, "random"), (2, 2, 2, "floor")],
}


@pytest.mark.parametrize("builder,case", [(b, c) for b in BUILDERS for c in SUBSET[b]],
                         ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x)))
def test_kernel_equals_tensor_ops(builder, case):
    check(builder, *case, seed=sum(case[:3]))


@pytest.mark.parametrize("case", [(4, 7, 64, "random"), (5, 4, 64, "ties"), (6, 16, 37, "floor"),
                                  (2, 7, 128, "flat"), (15, 2, 64, "random"), (3, 16, 256, "ties")],
                         ids=lambda c: "-".join(map(str, c)))
def test_pruned_topb_equals_tensor_ops(case, monkeypatch):
    """topb with the running-threshold pruning forced on for narrow levels too (by default only
    levels sorted 512 wide or more prune): the same tree as the unpruned tensor ops."""
    monkeypatch.setattr(tb, "PRUNE_FROM", 16)
    d, k, budget, _ = case
    assert tb._plan("topb", d, k, budget, bucket_for(budget), 16)["PRUNE"]
    check("topb", *case, seed=sum(case[:3]))


def test_pruned_topb_on_sharp_wide_levels():
    """Budget 256, K = 16, peaked per-depth distributions (as a trained head gives): the levels
    past the first few fall under the threshold, and the tree is still the reference's."""
    gen = torch.Generator().manual_seed(5)
    lp = torch.log_softmax(torch.randn(6, 200, generator=gen) * 4, -1).to(DEV)
    assert tb._plan("topb", 6, 16, 256, 256)["PRUNE"]
    got, ref = both("topb", lp, 16, 256, depth=6)
    assert_same(got, ref, "sharp")


def test_pruned_topb_stops_at_the_first_empty_level():
    """Budget 256, K = 16, 15 depths of very peaked distributions: pruning empties the levels
    past the first few, the kernel skips the rest and walks the ancestors only that deep; the
    tree is still the reference's, ancestor mask included."""
    gen = torch.Generator().manual_seed(9)
    lp = torch.log_softmax(torch.randn(15, 200, generator=gen) * 8, -1).to(DEV)
    assert tb._plan("topb", 15, 16, 256, 256)["PRUNE"]
    got, ref = both("topb", lp, 16, 256, depth=15)
    assert_same(got, ref, "early stop")
    assert int(got.depth.max()) < 15


def test_ties_break_shallower_first_then_lower_entry():
    """All four candidates have cum 0: the depth-1 nodes first, then the children of the
    first depth-1 node (its lower rank first)."""
    lp = torch.zeros(2, 2, device=DEV)
    tok = torch.tensor([[5, 6], [7, 8]], device=DEV)
    root = torch.tensor(ROOT, device=DEV)
    for fn in (tb.build_tree_triton, build_from_topk):
        t = fn("topb", lp, tok, root, 5, 16)
        assert t.parents[:5].tolist() == [-1, 0, 0, 1, 1]
        assert t.tokens[:5].tolist() == [ROOT, 5, 6, 7, 8]
        assert t.rank[:5].tolist() == [-1, 0, 1, 0, 1]


def test_kernel_writes_into_given_buffers():
    """out=: the engine's persistent tree buffers are filled in place (every element, padding too)."""
    from jetspec_core.engine.gpu_tree import StaticTree, tree_outputs

    g = torch.Generator(device=DEV).manual_seed(5)
    lp = torch.randn(4, 7, device=DEV, generator=g).abs().neg().sort(-1, descending=True).values
    tok = torch.randint(0, 100, (4, 7), device=DEV, generator=g)
    root = torch.tensor(ROOT, device=DEV)
    bufs = tuple(b.fill_(7) for b in tree_outputs(32, DEV))
    t = tb.build_tree_triton("accum_logp", lp, tok, root, 20, 32, out=bufs)
    ref = tb.build_tree_triton("accum_logp", lp, tok, root, 20, 32)
    for f in StaticTree.FIELDS:
        assert torch.equal(getattr(t, f), getattr(ref, f)), f
    assert t.tokens.data_ptr() == bufs[0].data_ptr() and t.cum_logp.data_ptr() == bufs[1].data_ptr() + 32 * 4
    assert t.anc.data_ptr() == bufs[2].data_ptr() + 32


def test_launcher_errors():
    lp, tok = torch.zeros(3, 4, device=DEV), torch.zeros(3, 4, dtype=torch.long, device=DEV)
    root = torch.tensor(ROOT, device=DEV)
    with pytest.raises(ValueError, match="builder"):
        tb.build_tree_triton("beam", lp, tok, root, 8, 16)
    with pytest.raises(TypeError, match="float32"):
        tb.build_tree_triton("topb", lp.double(), tok, root, 8, 16)
    with pytest.raises(ValueError, match="shape"):
        tb.build_tree_triton("topb", lp, tok[:, :2], root, 8, 16)
    with pytest.raises(ValueError, match="contiguous"):
        tb.build_tree_triton("topb", lp.t().contiguous().t(), tok.t().contiguous().t(), root, 8, 16)
    with pytest.raises(ValueError, match="K = 1"):
        tb.build_tree_triton("chain", lp, tok, root, 8, 16)
    with pytest.raises(ValueError, match="not supported"):
        tb.build_tree_triton("topb", lp, tok, root, 32, 16)  # n_nodes < budget


def test_backend_switch(monkeypatch):
    """auto on CPU and `reference` keep the tensor ops; `triton` runs the kernel unless
    $JETSPEC_TREE_KERNEL=0; shapes the kernel does not take (sorts past MAX_SORT) fall back to the
    tensor ops."""
    calls = []
    real = tb.build_tree_triton
    monkeypatch.setattr(tb, "build_tree_triton", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    lp = depth_logp("random", 3, torch.Generator().manual_seed(1)).to(DEV)
    root = torch.tensor(ROOT, device=DEV)
    with backend.forced("reference"):
        build_static("topb", lp, root, 2, 15, 5, 16)
    assert calls == []
    with backend.forced("triton"):
        build_static("accum_logp", lp, root, 2, 15, 5, 16)
    assert calls == ["accum_logp"]
    monkeypatch.setenv(backend.TREE_ENV, "0")
    with backend.forced("triton"):
        build_static("accum_logp", lp, root, 2, 15, 5, 16)
    assert calls == ["accum_logp"]
    monkeypatch.setenv(backend.TREE_ENV, "maybe")
    with backend.forced("triton"), pytest.raises(JetSpecError, match="JETSPEC_TREE_KERNEL"):
        build_static("accum_logp", lp, root, 2, 15, 5, 16)
    monkeypatch.delenv(backend.TREE_ENV)
    if not CUDA:
        with backend.forced("auto"):
            build_static("topb", lp, root, 2, 15, 5, 16)
        assert calls == ["accum_logp"]
    assert not tb.supports("topb", 40, 16, 256, 256)   # 40 depths of 255 kept nodes: > MAX_SORT
    assert tb.supports("topb", 15, 16, 256, 256)


# ---------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("builder,d", list(itertools.product(BUILDERS, (1, 2, 4, 15))))
def test_gpu_full_grid(builder, d):
    """Every K in {1, 2, 7, 16} and budget in {2, 5, 16, 37, 64, 128, 256}, two input kinds each
    (split by builder and depth so that `-n` workers share the compiles)."""
    cells = itertools.product((1, 2, 7, 16), (2, 5, 16, 37, 64, 128, 256))
    for (k, budget), kind in zip(cells, itertools.cycle(KINDS)):
        for kind2 in dict.fromkeys((kind, "ties")):
            check(builder, d, k, budget, kind2, seed=d * 1000 + k * 10 + budget)


@pytest.mark.gpu
@pytest.mark.parametrize("builder", BUILDERS)
def test_gpu_cuda_graph_replay(builder):
    """build_static (topk + the kernel) captured once, replayed for other log-probs and roots."""
    gen = torch.Generator().manual_seed(7)
    width, budget = 7, 64
    d_logp = depth_logp("random", 15, gen, v=1000).to(DEV)
    root = torch.tensor(ROOT, device=DEV)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up: compile and allocate outside the capture
        build_static(builder, d_logp, root, width, 15, budget, bucket_for(budget))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = build_static(builder, d_logp, root, width, 15, budget, bucket_for(budget))
    for i, kind in enumerate(KINDS):
        d_logp.copy_(depth_logp(kind, 15, gen, v=1000))
        root.fill_(100 + i)
        graph.replay()
        torch.cuda.synchronize()
        with backend.forced("reference"):
            ref = build_static(builder, d_logp, root, width, 15, budget, bucket_for(budget))
        assert_same(out, ref, (builder, kind))
        before = {f: getattr(out, f).clone() for f in StaticTree.FIELDS}
        graph.replay()  # deterministic: the same tree again
        torch.cuda.synchronize()
        assert all(torch.equal(before[f], getattr(out, f)) for f in StaticTree.FIELDS)
