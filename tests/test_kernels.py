"""Triton verification kernels against their PyTorch references (and against naive oracles).

Without a GPU (CI) the kernels run through the Triton interpreter on small shapes: the
interpreter must be switched on before the @triton.jit decorators run, so this module sets
TRITON_INTERPRET=1 and (re)imports the kernel modules itself. With a GPU the same checks run
compiled, plus the full grid (`@pytest.mark.gpu`): every dtype, head_dim 64 and 128, N in
{1, 3, 17, 64, 255}, prefix in {0, 1, 37, 1000}, GQA ratios 1, 3, 4, CUDA-graph replay, and
the decoder's greedy equality with the kernels on and off.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import interpreted

CUDA = torch.cuda.is_available()
ta, aw, kc, gr = interpreted('jetspec_core.kernels.tree_attention', 'jetspec_core.kernels.accept_walk',
                             'jetspec_core.kernels.kv_compact', 'jetspec_core.kernels.greedy_record')

from conftest import OracleDrafter, tiny_hf  # noqa: E402
from jetspec_core import backend  # noqa: E402
from jetspec_core.accept import accept_greedy, accept_sampled  # noqa: E402
from jetspec_core.config import DecodeConfig  # noqa: E402
from jetspec_core.decoder import Decoder  # noqa: E402
from jetspec_core.errors import JetSpecError  # noqa: E402
from jetspec_core.model import sdpa_attend  # noqa: E402
from jetspec_core.target import target_from_hf  # noqa: E402
from jetspec_core.tree import Tree  # noqa: E402

DEV = torch.device("cuda" if CUDA else "cpu")


pytestmark = pytest.mark.usefixtures("triton_interpreter")
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}  # atol = rtol per dtype


# ---------------------------------------------------------------- helpers

def random_parents(n: int, gen: torch.Generator, kind: str = "random") -> list[int]:
    """parents[0] = -1, parents[i] < i: uniform random, a chain, or shallow and wide."""
    par = [-1]
    for i in range(1, n):
        if kind == "chain":
            par.append(i - 1)
        elif kind == "wide":
            par.append(int(torch.randint(0, min(i, 4), (1,), generator=gen)))
        else:
            par.append(int(torch.randint(max(0, i - 8), i, (1,), generator=gen)))
    return par


def ancestors(par: list[int]) -> torch.Tensor:
    n = len(par)
    anc = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        anc[i] |= anc[par[i]]
    return anc


def make_case(hq, hkv, n, prefix, d, dtype, seed=0, spare=3, layout="plain"):
    """Random q/k/v; k/v rows past prefix + n are NaN (they must never be read)."""
    gen = torch.Generator().manual_seed(seed)
    s = prefix + n + spare
    q = torch.randn(hq, n, d, generator=gen)
    k = torch.randn(hkv, s, d, generator=gen)
    v = torch.randn(hkv, s, d, generator=gen)
    k[:, prefix + n:] = float("nan")
    v[:, prefix + n:] = float("nan")
    q, k, v = (t.to(device=DEV, dtype=dtype) for t in (q, k, v))
    if layout == "model":  # the strides our forward passes: q a transposed view, k/v one layer of a cache
        q = q.transpose(0, 1).contiguous().transpose(0, 1)
        big_k = torch.zeros(2, hkv, s + 5, d, device=DEV, dtype=dtype)
        big_v = torch.zeros_like(big_k)
        big_k[1, :, :s], big_v[1, :, :s] = k, v
        k, v = big_k[1, :, :s], big_v[1, :, :s]
    par = random_parents(n, gen, ["random", "chain", "wide"][seed % 3])
    bits = ta.pack_ancestor_bits(ancestors(par).to(DEV))
    return q, k, v, bits


def check_attention(hq, hkv, n, prefix, d, dtype, seed=0, tensor_plen=False, layout="plain", config=None):
    q, k, v, bits = make_case(hq, hkv, n, prefix, d, dtype, seed, layout=layout)
    plen = torch.tensor([prefix], device=DEV, dtype=torch.int32) if tensor_plen else prefix
    out = ta.tree_attention_triton(q, k, v, plen, bits, config=config)
    ref = ta.tree_attention_reference(q, k, v, prefix, bits)
    assert out.shape == (hq, n, d) and out.dtype == dtype
    assert torch.isfinite(out).all(), (hq, hkv, n, prefix, d, dtype)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol,
                               msg=lambda m: f"{(hq, hkv, n, prefix, d, dtype, tensor_plen)}: {m}")


# ---------------------------------------------------------------- tree attention (CI: interpreter)

def test_pack_ancestor_bits_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 3, 31, 32, 33, 70):
        anc = ancestors(random_parents(n, gen))
        bits = ta.pack_ancestor_bits(anc)
        assert bits.dtype == torch.int32 and bits.shape == (n, (n + 31) // 32)
        for i in range(n):
            for j in range(n):
                assert bool((int(bits[i, j // 32]) >> (j % 32)) & 1) == bool(anc[i, j])
        assert torch.equal(ta.unpack_ancestor_bits(bits, n), anc)


def test_pack_ancestor_bits_kernel_equals_tensor_ops():
    """The one-launch packer gives the tensor ops' words bit for bit (bit 31 set included: the
    int32 sign), for trees of every bucket size and for dense random masks, into a given buffer too."""
    gen = torch.Generator().manual_seed(1)
    for n in (1, 5, 16, 31, 32, 33, 64, 100, 128, 256):
        for anc in (ancestors(random_parents(n, gen, ["random", "chain", "wide"][n % 3])),
                    torch.rand(n, n, generator=gen) < 0.5):
            anc = anc.to(DEV).contiguous()
            want = ta.pack_ancestor_bits(anc)
            got = ta.pack_ancestor_bits_triton(anc)
            assert got.dtype == torch.int32 and torch.equal(got, want), n
            out = torch.full_like(want, 7)
            assert ta.pack_ancestor_bits_triton(anc, out=out) is out and torch.equal(out, want)
    with pytest.raises(ValueError, match="square bool"):
        ta.pack_ancestor_bits_triton(torch.ones(3, 4, dtype=torch.bool, device=DEV))
    strided = (torch.rand(8, 8, generator=gen) < 0.5).to(DEV).t()  # a transposed view: not row-major
    with pytest.raises(ValueError, match="contiguous square bool"):
        ta.pack_ancestor_bits_triton(strided)
    assert torch.equal(ta.pack_ancestor_bits(strided), ta.pack_ancestor_bits(strided.contiguous()))


def test_reference_equals_sdpa_with_a_dense_mask():
    q, k, v, bits = make_case(6, 2, 17, 37, 16, torch.float32, seed=4)
    mask = torch.cat([torch.ones(17, 37, dtype=torch.bool, device=DEV),
                      ta.unpack_ancestor_bits(bits, 17)], dim=1)
    dense = sdpa_attend(q, k[:, :54], v[:, :54], mask)
    torch.testing.assert_close(ta.tree_attention_reference(q, k, v, 37, bits), dense, atol=1e-5, rtol=1e-5)


# (Hq, Hkv, N, prefix, D, dtype, prefix as tensor, layout): every odd N, prefix and GQA ratio once
CI_CASES = [
    (1, 1, 1, 0, 16, torch.float32, False, "plain"),
    (3, 1, 3, 1, 16, torch.bfloat16, False, "plain"),
    (8, 2, 17, 37, 32, torch.float16, True, "model"),
    (3, 1, 64, 1000, 16, torch.float32, False, "plain"),
    (4, 1, 255, 37, 16, torch.bfloat16, False, "model"),
    (3, 3, 64, 1000, 64, torch.bfloat16, True, "plain"),
]


@pytest.mark.parametrize("case", CI_CASES, ids=lambda c: f"hq{c[0]}-hkv{c[1]}-n{c[2]}-p{c[3]}-d{c[4]}")
def test_tree_attention_matches_reference(case):
    hq, hkv, n, prefix, d, dtype, tensor_plen, layout = case
    check_attention(hq, hkv, n, prefix, d, dtype, seed=n, tensor_plen=tensor_plen, layout=layout)


def test_tree_attention_split_k_and_tiles():
    """Forced split counts (more splits than prefix blocks too) and both tile heights."""
    for splits, bm in ((3, 16), (7, 64), (1, 16)):
        check_attention(12, 3, 5, 300, 16, torch.float32, seed=splits, tensor_plen=splits == 3,
                        config={"splits": splits, "block_m": bm})


def test_tree_attention_ignores_bits_above_the_diagonal():
    q, k, v, bits = make_case(2, 1, 20, 3, 16, torch.float32, seed=1)
    noisy = ta.pack_ancestor_bits(ta.unpack_ancestor_bits(bits, 20) | torch.ones(20, 20, dtype=torch.bool,
                                                                                  device=DEV).triu(1))
    a = ta.tree_attention_triton(q, k, v, 3, noisy)
    torch.testing.assert_close(a, ta.tree_attention_triton(q, k, v, 3, bits))
    torch.testing.assert_close(a, ta.tree_attention_reference(q, k, v, 3, noisy), atol=1e-4, rtol=1e-4)


def test_tree_attention_launcher_rejects_bad_input():
    q, k, v, bits = make_case(4, 2, 5, 10, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        ta.tree_attention_triton(q[:3], k, v, 10, bits)
    with pytest.raises(TypeError, match="one dtype"):
        ta.tree_attention_triton(q.half(), k, v, 10, bits)
    with pytest.raises(ValueError, match="last dim"):
        ta.tree_attention_triton(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, 10, bits)
    with pytest.raises(ValueError, match="exceeds"):
        ta.tree_attention_triton(q, k, v, 20, bits)
    with pytest.raises(ValueError, match="int32"):
        ta.tree_attention_triton(q, k, v, 10, bits.long())
    with pytest.raises(ValueError, match="power of two"):
        ta.tree_attention_triton(q[..., :12], k[..., :12], v[..., :12], 10, bits)
    with pytest.raises(ValueError, match="one int32/int64 value"):
        ta.tree_attention_triton(q, k, v, torch.tensor([1, 2], device=DEV), bits)


# ---------------------------------------------------------------- accept walks

def walk_case(n, seed, vocab=4):
    """A random tree over a tiny vocabulary (duplicate sibling tokens happen) and a choice per
    node that often equals one of its children's tokens, so paths get long."""
    gen = torch.Generator().manual_seed(seed)
    par = random_parents(n, gen, ["random", "chain", "wide"][seed % 3])
    tokens = torch.randint(0, vocab, (n,), generator=gen)
    kids = [[] for _ in range(n)]
    for i, p in enumerate(par[1:], 1):
        kids[p].append(i)
    choice = torch.randint(0, vocab, (n,), generator=gen)
    for i in range(n):
        if kids[i] and torch.rand(1, generator=gen).item() < 0.8:
            choice[i] = tokens[kids[i][int(torch.randint(0, len(kids[i]), (1,), generator=gen))]]
    return tokens, torch.tensor(par), choice


def oracle_greedy(tokens, par, choice):
    """Deepest node whose whole path matches (first index among the deepest), plain Python."""
    n = len(par)
    ok, depth = [True] * n, [0] * n
    for i in range(1, n):
        ok[i] = ok[par[i]] and int(tokens[i]) == int(choice[par[i]])
        depth[i] = depth[par[i]] + 1
    best = max(range(n), key=lambda i: (ok[i] * (depth[i] + 1), -i))
    path = [best]
    while par[path[-1]] >= 0:
        path.append(par[path[-1]])
    return path[::-1], int(choice[best])


def oracle_sampled(tokens, par, choice):
    """Sample-then-walk: move to the first child whose token is the node's sample."""
    node, path = 0, [0]
    while True:
        nxt = next((c for c in range(node + 1, len(par)) if par[c] == node and int(tokens[c]) == int(choice[node])), None)
        if nxt is None:
            return path, int(choice[node])
        path.append(nxt)
        node = nxt


def cut(path, bonus, choice, max_depth):
    if max_depth is None or len(path) <= max_depth + 1:
        return path, bonus
    path = path[: max_depth + 1]
    return path, int(choice[path[-1]])


@pytest.mark.parametrize("rule", ["greedy", "sampled"])
def test_accept_walks_match_oracle_and_reference(rule):
    tri = aw.greedy_accept_triton if rule == "greedy" else aw.sampled_accept_triton
    ref = aw.greedy_accept_reference if rule == "greedy" else aw.sampled_accept_reference
    oracle = oracle_greedy if rule == "greedy" else oracle_sampled
    lengths = []
    for seed, n in enumerate([1, 2, 3, 17, 64, 255] * 2):
        tokens, par, choice = walk_case(n, seed)
        for max_depth in (None, 2):
            want = cut(*oracle(tokens, par.tolist(), choice), choice, max_depth)
            args = [t.to(DEV) for t in (tokens, par, choice)]
            if seed % 2:
                args = [a.to(torch.int32) for a in args]
            for fn in (tri, ref):
                p, length, bonus = fn(*args, max_depth)
                assert p.shape == ((n - 1 if max_depth is None else max_depth) + 1,)
                got = aw.walk_to_host(p, length, bonus)
                assert got == want, (fn.__name__, n, seed, max_depth)
                assert p[len(want[0]):].eq(-1).all()
            lengths.append(len(want[0]))
    assert max(lengths) >= 6  # the cases really walk deep


def record_case(n, seed, d1, pad=0):
    """The engine's round inputs for one walk_case tree: the last `pad` nodes are padding (invalid,
    parent root, token root), the target's argmax is the walk's choice, random logits hold it."""
    tokens, par, choice = walk_case(n, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    valid = torch.ones(n, dtype=torch.bool)
    if pad:
        valid[n - pad:] = False
        par[n - pad:] = 0
        tokens[n - pad:] = tokens[0]
    par[0] = -1
    depth = torch.zeros(n, dtype=torch.long)
    anc = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        depth[i] = depth[par[i]] + 1
        anc[i] |= anc[par[i]]
    logits = torch.randn(n, 41, generator=gen)
    args = dict(tokens=tokens, parents=par, depth=depth, rank=torch.randint(-1, 7, (n,), generator=gen),
                valid=valid, n_valid=torch.tensor(n - pad), anc=anc, draft_logp=-torch.rand(n, generator=gen),
                cum_logp=-torch.rand(n, generator=gen), top=choice, logits=logits,
                lse=torch.logsumexp(logits, -1))
    ni, nf = gr.layout(n, d1)
    return {k: v.to(DEV) for k, v in args.items()}, ni, nf


def test_greedy_record_kernel_matches_reference_and_oracle():
    """The one-launch accept + record equals the tensor ops (ints exactly, floats to rounding) and
    the plain-Python greedy walk, on chains, wide and random trees, with padding, N from 1 to 255."""
    deep = 0
    for seed, (n, pad) in enumerate([(1, 0), (2, 0), (3, 1), (17, 0), (40, 5), (64, 0), (100, 20), (255, 0)] * 2):
        for d1 in (1, 6, 17):
            args, ni, nf = record_case(n, seed, d1, pad)
            outs = []
            for fn in (gr.greedy_record_triton, gr.greedy_record_reference):
                ints = torch.full((ni,), -7, dtype=torch.long, device=DEV)
                floats = torch.full((nf,), -7.0, device=DEV)
                fn(**args, ints=ints, floats=floats)
                outs.append((ints.cpu(), floats.cpu()))
            (ti, tf), (ri, rf) = outs
            assert torch.equal(ti, ri), (n, pad, d1, seed)
            assert torch.allclose(tf, rf, atol=1e-6, rtol=1e-5), (n, pad, d1, seed)
            want, bonus = oracle_greedy(args["tokens"].cpu(), args["parents"].cpu().tolist(), args["top"].cpu())
            plen = int(ti[1])
            if len(want) <= d1:   # the record's path holds D1 = max_depth + 1 slots
                assert plen == len(want) and ti[4:4 + plen].tolist() == want and int(ti[2]) == bonus
            deep = max(deep, plen)
    assert deep >= 6


def test_greedy_record_launcher_rejects_bad_input():
    args, ni, nf = record_case(17, 3, 6)
    ints, floats = torch.zeros(ni, dtype=torch.long, device=DEV), torch.zeros(nf, device=DEV)
    with pytest.raises(ValueError, match="int64"):
        gr.greedy_record_triton(**dict(args, tokens=args["tokens"].int()), ints=ints, floats=floats)
    with pytest.raises(ValueError, match="bool"):
        gr.greedy_record_triton(**dict(args, anc=args["anc"].float()), ints=ints, floats=floats)
    with pytest.raises(ValueError, match="float32"):
        gr.greedy_record_triton(**dict(args, logits=args["logits"].double()), ints=ints, floats=floats)
    with pytest.raises(ValueError, match="buffers"):
        gr.greedy_record_triton(**args, ints=ints, floats=floats[:-1])


def test_walks_agree_with_the_decoders_accept_rules():
    """Same path and bonus as accept.accept_greedy / accept_sampled (one-hot target rows)."""
    for seed, n in enumerate([5, 40, 120]):
        tokens, par, choice = walk_case(n, seed + 10)
        depth = torch.zeros(n, dtype=torch.long)
        for i in range(1, n):
            depth[i] = depth[par[i]] + 1
        tree = Tree(tokens=tokens, parents=par, depth=depth, rank=torch.zeros(n, dtype=torch.long),
                    draft_logp=torch.zeros(n), cum_logp=torch.zeros(n))
        onehot = torch.nn.functional.one_hot(choice, 4).float()
        g = accept_greedy(tree, onehot, tree.ancestor_mask())
        s = accept_sampled(tree, onehot, torch.Generator().manual_seed(0))
        assert aw.walk_to_host(*aw.greedy_accept_triton(tokens.to(DEV), par.to(DEV), choice.to(DEV))) == (g.path, g.bonus)
        assert aw.walk_to_host(*aw.sampled_accept_triton(tokens.to(DEV), par.to(DEV), choice.to(DEV))) == (s.path, s.bonus)


def test_walk_launcher_rejects_bad_input():
    t = torch.zeros(4, dtype=torch.long, device=DEV)
    with pytest.raises(TypeError, match="int32 or int64"):
        aw.greedy_accept_triton(t.float(), t, t)
    with pytest.raises(ValueError, match="share N"):
        aw.greedy_accept_triton(t, t[:3], t)
    with pytest.raises(ValueError, match="1-D"):
        aw.sampled_accept_triton(t.view(2, 2), t, t)


# ---------------------------------------------------------------- KV compaction

def compaction_case(layers, heads, s, d, prefix, n_tree, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(layers, heads, s, d, generator=gen).to(device=DEV, dtype=dtype)
    v = torch.randn(layers, heads, s, d, generator=gen).to(device=DEV, dtype=dtype)
    par = random_parents(n_tree, gen, ["random", "chain", "wide"][seed % 3])
    node = int(torch.randint(0, n_tree, (1,), generator=gen))
    path = [node]
    while par[path[-1]] >= 0:
        path.append(par[path[-1]])
    return k, v, torch.tensor(path[::-1], device=DEV) + prefix


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kv_compact_matches_reference(dtype):
    cases = [(3, 2, 64, 16, 0, 1), (2, 3, 96, 32, 37, 17), (1, 1, 300, 16, 5, 255)]
    for seed, (layers, heads, s, d, prefix, n_tree) in enumerate(cases):
        k, v, src = compaction_case(layers, heads, s, d, prefix, n_tree, dtype, seed)
        for n, as_tensor in ((src.numel(), False), (max(1, src.numel() - 1), True)):
            k1, v1, k2, v2 = k.clone(), v.clone(), k.clone(), v.clone()
            dst = torch.tensor(prefix, device=DEV) if as_tensor else prefix
            nn = torch.tensor([n], device=DEV, dtype=torch.int32) if as_tensor else n
            kc.kv_compact_triton(k1, v1, src, dst, nn)
            kc.kv_compact_reference(k2, v2, src, dst, nn)
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
            # the same move as the decoder's KVCache.compact, the untouched rows unchanged
            assert torch.equal(k1[:, :, prefix:prefix + n], k[:, :, src[:n]])
            assert torch.equal(k1[:, :, :prefix], k[:, :, :prefix])
            assert torch.equal(v1[:, :, prefix + n:], v[:, :, prefix + n:])
            # rows counted from the destination start (the engine's accepted path), int64 scalars
            # read in place: the same move
            k3, v3, k4, v4 = k.clone(), v.clone(), k.clone(), v.clone()
            nn64 = torch.tensor(n, device=DEV) if as_tensor else n
            kc.kv_compact_triton(k3, v3, src - prefix, dst, nn64, relative=True)
            kc.kv_compact_reference(k4, v4, src - prefix, dst, nn64, relative=True)
            assert torch.equal(k3, k1) and torch.equal(v3, v1) and torch.equal(k4, k1) and torch.equal(v4, v1)


def test_kv_compact_long_paths_and_permutations():
    """Several chunks along an accepted-path-like move, and any permutation within one chunk."""
    k = torch.randn(2, 2, 200, 16, device=DEV)
    v = torch.randn(2, 2, 200, 16, device=DEV)
    src = torch.arange(60, device=DEV) * 2 + 10 + (torch.arange(60, device=DEV) > 30)  # ascending, gaps
    k1, v1 = k.clone(), v.clone()
    kc.kv_compact_triton(k1, v1, src, 10)
    assert torch.equal(k1[:, :, 10:70], k[:, :, src]) and torch.equal(v1[:, :, 10:70], v[:, :, src])
    perm = torch.tensor([5, 3, 4, 0, 1, 2], device=DEV) + 7
    k1 = k.clone()
    kc.kv_compact_triton(k1, v.clone(), perm, 7)
    assert torch.equal(k1[:, :, 7:13], k[:, :, perm])


def test_kv_compact_launcher_rejects_bad_input():
    k = torch.zeros(2, 2, 8, 16, device=DEV)
    with pytest.raises(ValueError, match="exceed"):
        kc.kv_compact_triton(k, k.clone(), torch.arange(3, device=DEV), 6)
    with pytest.raises(ValueError, match="both be"):
        kc.kv_compact_triton(k, k[0], torch.arange(3, device=DEV), 0)
    with pytest.raises(TypeError, match="one dtype"):
        kc.kv_compact_triton(k, k.half(), torch.arange(3, device=DEV), 0)


# ---------------------------------------------------------------- backend switch

def test_backend_setting_and_cpu_choice(monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    cpu = torch.zeros(1)
    assert backend.setting() == "auto" and not backend.use_triton(cpu)
    with backend.forced("reference"):
        assert backend.setting() == "reference" and not backend.use_triton(cpu)
    monkeypatch.setenv(backend.ENV, "reference")
    assert backend.setting() == "reference"
    monkeypatch.setenv(backend.ENV, "fast")
    with pytest.raises(JetSpecError, match="not a backend"):
        backend.setting()
    with pytest.raises(JetSpecError, match="unknown backend"):
        backend.force("cuda")
    monkeypatch.setenv(backend.ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(JetSpecError, match="needs CUDA"):
        backend.use_triton(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.use_triton(cpu)


def test_backend_dispatch_on_cpu_uses_references(monkeypatch):
    monkeypatch.delenv(backend.ENV, raising=False)
    hf = tiny_hf("llama")
    target = target_from_hf(hf)
    assert backend.configure(target.model) == "reference"  # a CPU model keeps SDPA, GPU or not
    assert target.model.attend is sdpa_attend
    tokens, par, choice = walk_case(30, 3)
    assert aw.walk_to_host(*backend.greedy_accept(tokens, par, choice)) == oracle_greedy(tokens, par.tolist(), choice)
    q, k, v, bits = make_case(6, 2, 9, 20, 16, torch.float32)
    if not CUDA:
        torch.testing.assert_close(backend.tree_attention(q, k, v, 20, bits),
                                   ta.tree_attention_reference(q, k, v, 20, bits))


def test_decoder_greedy_equality_with_kernels_on_and_off(monkeypatch):
    """Plain greedy (reference backend) == JetSpec greedy with the kernels (tree attention,
    compaction) on; on CPU they run interpreted, on a tiny model."""
    monkeypatch.delenv(backend.ENV, raising=False)
    hf = tiny_hf("qwen3").to(DEV)
    ids = torch.randint(0, 97, (6,), generator=torch.Generator().manual_seed(2)).tolist()
    with backend.forced("reference"):
        target = target_from_hf(hf, name="tiny-qwen3")
        ref = Decoder(target).generate(ids, DecodeConfig(mode="plain", max_new_tokens=14, stop_at_eos=False))[0]
    with backend.forced("triton"):
        dec = Decoder(target, OracleDrafter(len(ids), ref.token_ids, 97))
        assert isinstance(target.model.attend, backend.TritonAttend)
        s, recs = dec.generate(ids, DecodeConfig(budget=12, max_new_tokens=14, stop_at_eos=False))
    assert s.token_ids == ref.token_ids
    assert s.tau > 1.5  # long accepted paths: the compaction kernel moved several rows


# ---------------------------------------------------------------- full grid on the GPU

GRID_N = [1, 3, 17, 64, 255]
GRID_PREFIX = [0, 1, 37, 1000]
GRID_G = [1, 3, 4]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_tree_attention_full_grid(dtype, d):
    for i, (n, prefix, g) in enumerate(itertools.product(GRID_N, GRID_PREFIX, GRID_G)):
        hkv = 1 + i % 3
        check_attention(g * hkv, hkv, n, prefix, d, dtype, seed=i, tensor_plen=i % 4 == 1,
                        layout="model" if i % 2 else "plain")


@pytest.mark.gpu
def test_gpu_tree_attention_large():
    """N 256 and 512 over an 8k prefix, both model head shapes, bf16."""
    for hq, hkv, d in ((9, 3, 64), (32, 8, 128)):
        for n, prefix in ((256, 8192), (512, 4096), (16, 8192)):
            check_attention(hq, hkv, n, prefix, d, torch.bfloat16, seed=n, tensor_plen=n == 16)


@pytest.mark.gpu
def test_gpu_walks_and_compaction_large():
    for seed, n in enumerate([256, 1000, 4096]):
        tokens, par, choice = walk_case(n, seed)
        for rule, tri, oracle in (("g", aw.greedy_accept_triton, oracle_greedy),
                                  ("s", aw.sampled_accept_triton, oracle_sampled)):
            got = aw.walk_to_host(*tri(tokens.cuda(), par.cuda(), choice.cuda(), 31))
            assert got == cut(*oracle(tokens, par.tolist(), choice), choice, 31), (rule, n)
    for dtype in (torch.float16, torch.bfloat16):
        k, v, src = compaction_case(36, 8, 4400, 128, 4096, 256, dtype, 5)
        k1, v1, k2, v2 = k.clone(), v.clone(), k.clone(), v.clone()
        kc.kv_compact_triton(k1, v1, src, 4096)
        kc.kv_compact_reference(k2, v2, src, 4096)
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_with_device_scalars():
    """Attention, walk and compaction captured once, replayed for other prefix lengths and paths."""
    hq, hkv, d, n, cap = 9, 3, 64, 64, 2048
    q, k, v, bits = make_case(hq, hkv, n, 1500, d, torch.bfloat16, seed=3)
    kbuf = torch.randn(hkv, cap, d, device=DEV, dtype=torch.bfloat16)
    vbuf = torch.randn_like(kbuf)
    plen = torch.tensor([100], device=DEV, dtype=torch.int32)
    tokens, par, choice = (t.cuda() for t in walk_case(n, 1))
    caches = torch.randn(2, 4, 3, cap, d, device=DEV, dtype=torch.bfloat16)
    src = torch.zeros(16, device=DEV, dtype=torch.long)
    nrows = torch.zeros(1, device=DEV, dtype=torch.int32)
    dst = torch.zeros(1, device=DEV, dtype=torch.int32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles) outside the capture
        ta.tree_attention_triton(q, kbuf, vbuf, plen, bits)
        aw.greedy_accept_triton(tokens, par, choice, 15)
        kc.kv_compact_triton(caches[0], caches[1], src, dst, nrows)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ta.tree_attention_triton(q, kbuf, vbuf, plen, bits)
        walk = aw.greedy_accept_triton(tokens, par, choice, 15)
        kc.kv_compact_triton(caches[0], caches[1], src, dst, nrows)
    for p, (path_rows, start) in zip((100, 1000, 1937), (([0, 3, 9], 50), ([0, 1, 2, 5, 8], 700), ([0], 1200))):
        plen.fill_(p)
        src.zero_()
        src[: len(path_rows)] = torch.tensor(path_rows, device=DEV) + start
        nrows.fill_(len(path_rows))
        dst.fill_(start)
        before = caches.clone()
        graph.replay()
        torch.cuda.synchronize()
        ref = ta.tree_attention_reference(q, kbuf, vbuf, p, bits)
        torch.testing.assert_close(out.float(), ref.float(), atol=2.5e-2, rtol=2.5e-2)
        assert aw.walk_to_host(*walk) == cut(*oracle_greedy(tokens.cpu(), par.tolist(), choice.cpu()),
                                             choice.cpu(), 15)
        rows = torch.tensor(path_rows, device=DEV) + start
        assert torch.equal(caches[:, :, :, start:start + len(path_rows)], before[:, :, :, rows])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gpu_decoder_greedy_equality_fp32(arch):
    hf = tiny_hf(arch).cuda()
    target = target_from_hf(hf, name=f"tiny-{arch}")
    for trial in range(2):
        ids = torch.randint(0, 97, (5 + 40 * trial,), generator=torch.Generator().manual_seed(trial)).tolist()
        with backend.forced("reference"):
            backend.configure(target.model)
            ref = Decoder(target).generate(ids, DecodeConfig(mode="plain", max_new_tokens=40, stop_at_eos=False))[0]
        with backend.forced("triton"):
            for budget in (1, 8, 32):
                dec = Decoder(target, OracleDrafter(len(ids), ref.token_ids, 97))
                s, _ = dec.generate(ids, DecodeConfig(budget=budget, max_new_tokens=40, stop_at_eos=False))
                assert s.token_ids == ref.token_ids, (arch, trial, budget)
