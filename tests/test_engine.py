"""The fast engine (`jetspec_core.engine`): same output and records as the reference loop.

On CPU the engine's static forward, GPU tree builders and commit run eagerly (no graphs), so
losslessness is checked here in fp32 with tiny targets of every architecture, an oracle drafter
(long, branching accepted paths), a random head and the embedded SmolLM2. GPU tests (marked
`gpu`) check that the captured graphs give the same tokens as eager and plain, with one host
sync per round."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import PROMPTS, OracleDrafter, hf_greedy, tiny_hf
from jetspec_core.config import BUILDERS, DecodeConfig
from jetspec_core.decoder import Decoder
from jetspec_core.drafter import HeadDrafter
from jetspec_core.engine import FastDecoder, bucket_for
from jetspec_core.engine.gpu_tree import build_static
from jetspec_core.engine.static_model import fuse_rows
from jetspec_core.errors import JetSpecError
from jetspec_core.loading import make_decoder, random_head
from jetspec_core.target import target_from_hf
from jetspec_core.tree import build_tree


def _same_tree(got, ref) -> bool:
    n = int(got.n_valid)
    return (n == len(ref) and got.tokens[:n].tolist() == ref.tokens.tolist()
            and got.parents[:n].tolist() == ref.parents.tolist() and got.depth[:n].tolist() == ref.depth.tolist()
            and got.rank[:n].tolist() == ref.rank.tolist()
            and torch.allclose(got.cum_logp[:n], ref.cum_logp, atol=1e-5)
            and torch.equal(got.anc[:n, :n], ref.ancestor_mask())
            and not got.valid[n:].any())


@pytest.mark.parametrize("builder", BUILDERS)
def test_static_builders_equal_reference_builders(builder):
    gen = torch.Generator().manual_seed(3)
    for trial in range(24):
        d, v = (1, 2, 4, 15)[trial % 4], 40
        lp = torch.log_softmax(torch.randn(d, v, generator=gen) * (1 + trial % 3), -1)
        width, budget, depth = (1, 2, 7)[trial % 3], (2, 5, 16, 37, 64, 128)[trial % 6], (15, 3)[trial % 2]
        ref = build_tree(builder, 11, lp, width, depth, budget)
        got = build_static(builder, lp, torch.tensor(11), width, depth, budget, bucket_for(budget))
        assert _same_tree(got, ref), (builder, d, width, budget, depth)


def test_bucket_for():
    assert [bucket_for(b) for b in (1, 2, 16, 17, 64, 200, 256)] == [1, 16, 16, 32, 64, 256, 256]
    with pytest.raises(JetSpecError):
        bucket_for(257)


def test_fuse_rows_shares_values_and_is_idempotent():
    ps = [torch.nn.Parameter(torch.randn(r, 5), requires_grad=False) for r in (3, 2, 4)]
    vals = [p.detach().clone() for p in ps]
    fused = fuse_rows(ps)
    assert torch.equal(fused, torch.cat(vals))
    assert all(torch.equal(p, v) for p, v in zip(ps, vals))
    fused[0, 0] = 42.0  # the parameters are now views of the fused matrix
    assert ps[0][0, 0] == 42.0
    again = fuse_rows(ps)
    assert again.data_ptr() == fused.data_ptr() and again.shape == fused.shape


def _gen(dec, ids, n, **kw):
    return dec.generate(ids, DecodeConfig(max_new_tokens=n, stop_at_eos=False, **kw))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
def test_tiny_targets_engine_equals_hf_and_reference(arch):
    hf = tiny_hf(arch)
    target = target_from_hf(hf, name=f"tiny-{arch}")
    ids = torch.randint(0, 97, (9,), generator=torch.Generator().manual_seed(5)).tolist()
    ref = hf_greedy(hf, ids, 40)
    s, recs = _gen(FastDecoder(target), ids, 40, mode="plain")
    assert s.token_ids == ref and all(len(r.tokens) == 1 for r in recs)
    for builder in BUILDERS:
        fast = FastDecoder(target, OracleDrafter(len(ids), ref, 97))
        s, recs = _gen(fast, ids, 40, budget=32, builder=builder)
        s_ref, recs_ref = _gen(Decoder(target, OracleDrafter(len(ids), ref, 97)), ids, 40, budget=32, builder=builder)
        assert s.token_ids == ref, (arch, builder)
        assert s.tau == s_ref.tau and s.tau > (1.3 if builder == "chain" else 2.5)
        for a, b in zip(recs, recs_ref):  # the engine built and accepted the very same trees
            assert (a.tokens, a.parents, a.depth, a.rank, a.accepted, a.new_tokens) == \
                   (b.tokens, b.parents, b.depth, b.rank, b.accepted, b.new_tokens)
            assert a.target_top == b.target_top
            assert max(abs(x - y) for x, y in zip(a.target_prob, b.target_prob)) < 1e-4
    head = random_head(target, num_layers=2, seed=1)  # two layers: the context append stacks them
    with torch.no_grad():  # per-layer q/k norm weights that differ, so a layer mix-up shows
        g = torch.Generator().manual_seed(2)
        for lay in head.layers:
            for w in (lay.q_norm, lay.k_norm):
                w.mul_(1 + 0.5 * torch.randn(w.shape, generator=g))
    s, recs = _gen(FastDecoder(target, HeadDrafter(head, target.model)), ids, 40, budget=16)
    s_ref, recs_ref = _gen(Decoder(target, HeadDrafter(head, target.model)), ids, 40, budget=16)
    assert s.token_ids == ref
    assert [r.tokens for r in recs] == [r.tokens for r in recs_ref]  # the static head drafts the same
    assert max(abs(x - y) for a, b in zip(recs, recs_ref) for x, y in zip(a.draft_logp, b.draft_logp)) < 1e-4


@pytest.fixture(scope="module")
def plain_refs(embedded):
    dec = FastDecoder(embedded)
    out = []
    for p in PROMPTS[:3]:
        ids = embedded.encode_prompt(p)
        out.append((ids, _gen(dec, ids, 16, mode="plain")[0].token_ids))
    return out


def test_embedded_engine_plain_equals_hf_generate(embedded_hf, plain_refs):
    for ids, toks in plain_refs[:2]:
        assert toks == hf_greedy(embedded_hf, ids, 16)


def test_embedded_engine_jetspec_equals_engine_plain(embedded, plain_refs):
    vocab = embedded.shape.vocab_size
    head_dec = FastDecoder(embedded, HeadDrafter(random_head(embedded), embedded.model))
    for ids, toks in plain_refs[:2]:
        s, _ = _gen(head_dec, ids, 16, budget=16, builder="topb")
        assert s.token_ids == toks
        s, recs = _gen(FastDecoder(embedded, OracleDrafter(len(ids), toks, vocab)), ids, 16, budget=32)
        assert s.token_ids == toks and s.tau > 2.5
        assert any(r.rank[i] > 0 for r in recs for i in r.accepted[1:])  # paths leave the top-1 chain


def test_records_eos_and_length(embedded, plain_refs):
    ids, ref = plain_refs[1]
    vocab = embedded.shape.vocab_size
    dec = FastDecoder(embedded, OracleDrafter(len(ids), ref, vocab))
    s, recs = _gen(dec, ids, 16, budget=16)
    past = len(ids) - 1
    for r in recs:
        assert r.past_len == past
        n = len(r.tokens)
        assert n <= 16 and all(len(getattr(r, f)) == n for f in (
            "parents", "depth", "rank", "draft_logp", "cum_logp", "target_prob", "accept_prob", "target_top"))
        assert r.accepted[0] == 0 and all(r.parents[b] == a for a, b in zip(r.accepted, r.accepted[1:]))
        full = [r.tokens[i] for i in r.accepted[1:]] + [r.bonus]
        assert r.new_tokens == (full if r.finished is None else full[: len(r.new_tokens)])
        assert r.bonus == r.target_top[r.accepted[-1]] and r.expected_tau == r.accept_len
        assert set(r.timings) == {"draft", "tree", "verify", "accept"}
        past += len(r.new_tokens)
    orig = type(embedded).eos_ids
    try:  # pretend the 5th generated token is EOS: generation stops right after it
        type(embedded).eos_ids = property(lambda self: frozenset({ref[4]}))
        s, _ = dec.generate(ids, DecodeConfig(budget=16, max_new_tokens=16))
        assert s.token_ids == ref[: ref.index(ref[4]) + 1] and s.finished == "eos"
    finally:
        type(embedded).eos_ids = orig
    for n in (1, 3):
        s, _ = _gen(dec, ids, n, budget=16)
        assert s.token_ids == ref[:n] and s.finished == "length"


def test_sampling_goes_through_the_reference_loop():
    target = target_from_hf(tiny_hf("llama"), name="tiny")
    head = random_head(target, num_layers=1)
    cfg = DecodeConfig(budget=8, max_new_tokens=12, temperature=0.8, seed=4, stop_at_eos=False)
    ids = [3, 5, 7, 11]
    a = FastDecoder(target, HeadDrafter(head, target.model)).generate(ids, cfg)[0].token_ids
    b = Decoder(target, HeadDrafter(head, target.model)).generate(ids, cfg)[0].token_ids
    assert a == b


def test_make_decoder_picks_the_engine():
    target = target_from_hf(tiny_hf("llama"), name="tiny")
    assert type(make_decoder(target, None)) is Decoder          # auto on CPU: the reference loop
    assert isinstance(make_decoder(target, None, "fast"), FastDecoder)
    assert type(make_decoder(target, None, "reference")) is Decoder
    with pytest.raises(JetSpecError):
        make_decoder(target, None, "turbo")
    with pytest.raises(JetSpecError):
        FastDecoder(target, graphs=True)  # graphs need CUDA


def test_speed_bench_pieces_on_a_tiny_target():
    from jetspec_core.bench import speed

    hf = tiny_hf("qwen3")
    target = target_from_hf(hf, name="tiny")
    dec = FastDecoder(target, HeadDrafter(random_head(target, num_layers=1), target.model))
    prompts = [[1, 2, 3, 4], [9, 8, 7]]
    plain = speed.run_config(dec, prompts, DecodeConfig(mode="plain", max_new_tokens=10, stop_at_eos=False))
    spec = speed.run_config(dec, prompts, DecodeConfig(budget=16, max_new_tokens=10, stop_at_eos=False))
    assert plain["tokens"] == 20 and plain["rounds"] == 20 and plain["tau"] == 1.0
    assert spec["outputs"] == plain["outputs"] == [hf_greedy(hf, p, 10) for p in prompts]
    ag = speed.agreement(dec, prompts, plain["outputs"], [plain["outputs"][0], plain["outputs"][1][:5] + [0] * 5])
    assert ag["equal"] == 1 and ag["diffs"][0]["first_divergence"] == 5 and ag["diffs"][0]["top2_margin"] >= 0
    assert set(spec["split_ms"]) == {"draft", "tree", "verify", "accept"} and spec["split_ms"]["verify"] > 0
    hfr = speed.hf_generate_tok_s(target, prompts[:1], 5)
    assert hfr["tokens"] == 5 and hfr["tok_s"] > 0
    small = dict(speed.QWEN3_8B, num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
                 head_dim=16, vocab_size=50)
    rt = speed.random_target(small, torch.device("cpu"), torch.float32)
    s, _ = _gen(FastDecoder(rt), [1, 2, 3], 5, mode="plain")
    assert len(s.token_ids) == 5
    assert speed.main(["--budgets", "x"]) == 2


def test_speed_bench_stops_at_eos_by_default(capsys):
    """Answers end at the target's EOS unless --no-stop-at-eos; the table says which, and how many ended there."""
    from jetspec_core.bench import speed

    assert speed.build_parser().parse_args([]).stop_at_eos is True
    assert speed.build_parser().parse_args(["--no-stop-at-eos"]).stop_at_eos is False
    hf = tiny_hf("llama")
    target = target_from_hf(hf, name="tiny")
    dec = FastDecoder(target, HeadDrafter(random_head(target, num_layers=1), target.model))
    prompts = [[1, 2, 3, 4], [9, 8, 7]]
    full = speed.run_config(dec, prompts, DecodeConfig(mode="plain", max_new_tokens=12, stop_at_eos=False))
    eos = full["outputs"][0][3]
    cut = [o[: o.index(eos) + 1] if eos in o else o for o in full["outputs"]]
    hf.config.eos_token_id = eos
    assert target.eos_ids == {eos}
    runs = {m: speed.run_config(dec, prompts, DecodeConfig(max_new_tokens=12, stop_at_eos=True, **kw))
            for m, kw in (("plain", dict(mode="plain")), ("spec", dict(budget=8)))}
    for r in runs.values():
        assert r["outputs"] == cut and r["tokens"] == sum(map(len, cut)) < 24
        assert r["ended_at_eos"] == sum(eos in o for o in full["outputs"]) >= 1
    assert full["ended_at_eos"] == 0
    spec = dict(runs["spec"], speedup=1.0, round_over_plain_step=1.0, agreement={"equal": 2, "prompts": 2, "diffs": []})
    res = {"max_new_tokens": 12, "stop_at_eos": True, "target_run": {
        "target": "tiny", "head": "random", "device": "cpu", "dtype": "float32", "engine": {},
        "datasets": {"toy": {"prompts": 2, "plain": runs["plain"], "budgets": {"8": spec}}}}}
    speed.print_tables(res)
    out = capsys.readouterr().out
    assert (f"at most 12 new tokens, stopping at EOS ({runs['plain']['ended_at_eos']} of 2 answers ended there); "
            f"plain decoded {runs['plain']['tokens']} tokens") in out
    speed.print_tables(dict(res, stop_at_eos=False))
    assert "always 12 new tokens, past EOS included" in capsys.readouterr().out


def test_fused_triton_kernels_match_reference_in_the_interpreter():
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import torch
        from jetspec_core.engine import fused
        from jetspec_core.model import rms_norm
        x = torch.randn(3, 40); w = torch.randn(40)
        assert torch.allclose(fused.rms_norm_triton(x, w, 1e-6), rms_norm(x, w, 1e-6), atol=1e-5)
        gu = torch.randn(2, 2 * 37)
        assert torch.allclose(fused.silu_mul_triton(gu), fused.silu_mul_ref(gu), atol=1e-5)
        # RoPE + K/V write in place: q heads, k heads (also into the cache), v heads (cache only)
        for n_q, n_kv, d, norm in ((9, 3, 64, False), (8, 2, 128, True), (0, 1, 64, True), (3, 1, 16, False),
                                   (20, 17, 64, True)):  # heads over several programs, ragged last block
            got, ref = (fused.rope_case(torch.device("cpu"), torch.float32, n_q, n_kv, d, norm) for _ in range(2))
            before = got[0].clone()
            fused.rope_kv_reference(*ref)
            fused.rope_kv_triton(*got)
            for i in (0, 6, 7):  # qkv, k_cache, v_cache
                exact = torch.equal(got[i], ref[i])
                assert exact or (norm and torch.allclose(got[i], ref[i], atol=1e-5)), (n_q, n_kv, d, norm, i)
            assert not torch.equal(got[0][:, :n_q + n_kv], before[:, :n_q + n_kv])   # rotated in place
            assert torch.equal(got[0][:, n_q + n_kv:], before[:, n_q + n_kv:])       # v untouched
            rows = 5 + torch.arange(7)
            assert torch.equal(got[6][:, rows], got[0][:, n_q:n_q + n_kv].transpose(0, 1))
            assert torch.equal(got[7][:, rows], before[:, n_q + n_kv:].transpose(0, 1))
            assert torch.equal(got[6][:, :5], ref[6][:, :5])                          # other rows kept
        # no positions given: row i rotates at start + i (a chain), as with pos = start + arange
        for n_q, n_kv, d, norm in ((9, 3, 64, False), (0, 2, 16, True)):
            got, ref = (fused.rope_case(torch.device("cpu"), torch.float32, n_q, n_kv, d, norm) for _ in range(2))
            args = list(ref)
            args[2] = ref[3] + torch.arange(7)
            fused.rope_kv_reference(*args)
            fused.rope_kv_triton(got[0], got[1], None, *got[3:])
            for i in (0, 6, 7):
                assert torch.allclose(got[i], ref[i], atol=1e-5), (n_q, n_kv, d, norm, i)
            again = fused.rope_case(torch.device("cpu"), torch.float32, n_q, n_kv, d, norm)
            fused.rope_kv_reference(again[0], again[1], None, *again[3:])
            assert all(torch.equal(again[i], ref[i]) for i in (0, 6, 7))
        # several layers in one launch (the draft context's append): each layer's heads, with its own
        # norm weights, into its own caches, as one call per layer would write them
        for n_q, n_kv, d, norm in ((0, 3, 64, True), (2, 1, 16, False)):
            got, ref = (fused.rope_case(torch.device("cpu"), torch.float32, n_q, n_kv, d, norm, layers=3)
                        for _ in range(2))
            fused.rope_kv_reference(*ref)
            fused.rope_kv_triton(*got)
            for i in (0, 6, 7):
                assert torch.allclose(got[i], ref[i], atol=1e-5), (n_q, n_kv, d, norm, i)
            one = fused.rope_case(torch.device("cpu"), torch.float32, n_q, n_kv, d, norm, layers=3)
            for li in range(3):
                fused.rope_kv_reference(one[0][:, li], n_q, *one[2:6], one[6][li], one[7][li],
                                        None if one[8] is None else one[8][li], one[9])
            for i in (0, 6, 7):
                assert torch.equal(one[i], ref[i])
            assert not torch.equal(ref[6][0], ref[6][1])   # the layers' caches got different heads
        # argmax + log-sum-exp in one pass: several blocks, a tie across blocks (the first wins),
        # a tie inside a block, a row shorter than a block
        x = torch.randn(4, 9000)
        x[0, 100] = x[0, 8500] = 50.0
        x[1, 4097] = x[1, 4099] = 60.0
        for rows in (x, x[:, :300].contiguous()):
            a, l = fused.row_stats_triton(rows)
            ra, rl = fused.row_stats_reference(rows)
            assert torch.equal(a, ra) and torch.allclose(l, rl, atol=1e-5, rtol=1e-6), (a, ra, l, rl)
        assert fused.row_stats_triton(x)[0][:2].tolist() == [100, 4097]
        fused.Fused._probe(torch.device("cpu"), torch.float32)  # the start-up probe of every kernel passes
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# -- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_rope_kv_kernel_rounds_like_pytorch(dtype):
    """Compiled: the fused RoPE + K/V write gives PyTorch's elementwise result bit for bit (each
    product and the sum rounded to the dtype); with the per-head RMSNorm in front, within one
    rounding step (its sum of squares may add up in another order). The logits' row stats
    (argmax, log-sum-exp) at a Qwen3 vocabulary equal PyTorch's. The several-layer launch and the
    position-free (chain rows) launch equal the per-layer launch with explicit positions, bit for bit."""
    from jetspec_core.engine import fused

    dev = torch.device("cuda")
    for n_q, n_kv, d, norm in ((9, 3, 64, False), (32, 8, 128, True), (0, 1, 64, True), (8, 2, 128, False)):
        for n in (1, 16, 255):
            got, ref = (fused.rope_case(dev, dtype, n_q, n_kv, d, norm, n=n, s=600) for _ in range(2))
            fused.rope_kv_reference(*ref)
            fused.rope_kv_triton(*got)
            for i in (0, 6, 7):
                if norm:
                    assert torch.allclose(got[i].float(), ref[i].float(), atol=0.1, rtol=2e-2), (n_q, d, n, i)
                else:
                    assert torch.equal(got[i], ref[i]), (n_q, n_kv, d, n, i)
    for n in (1, 16):  # several layers in one launch: as one launch per layer, bit for bit
        got, ref = (fused.rope_case(dev, dtype, 0, 3, 64, True, n=n, s=600, layers=3) for _ in range(2))
        fused.rope_kv_triton(*got)
        for li in range(3):
            fused.rope_kv_triton(ref[0][:, li], 0, *ref[2:6], ref[6][li], ref[7][li], ref[8][li], ref[9])
        for i in (0, 6, 7):
            assert torch.equal(got[i], ref[i]), (n, i)
    for n_q, n_kv, d, norm in ((9, 3, 64, False), (32, 8, 128, True)):  # chain rows: positions start + row
        got, ref = (fused.rope_case(dev, dtype, n_q, n_kv, d, norm, n=64, s=600) for _ in range(2))
        fused.rope_kv_triton(got[0], n_q, None, *got[3:])
        fused.rope_kv_triton(ref[0], n_q, ref[3] + torch.arange(64, device=dev), *ref[3:])
        for i in (0, 6, 7):
            assert torch.equal(got[i], ref[i]), (n_q, d, i)
    x = torch.randn(256, 151_936, device=dev)
    x[3, 5] = x[3, 150_000] = 1e3
    a, l = fused.row_stats_triton(x)
    ra, rl = fused.row_stats_reference(x)
    assert torch.equal(a, ra) and a[3].item() == 5 and torch.allclose(l, rl, atol=1e-4, rtol=1e-5)
    assert fused.Fused(dev, torch.bfloat16).kind == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
def test_gpu_graphs_equal_eager_and_plain(arch):
    hf = tiny_hf(arch).cuda()
    target = target_from_hf(hf, name=f"tiny-{arch}")
    ids = [5, 17, 3, 9, 44, 2, 61]
    ref = hf_greedy(hf.cpu(), ids, 48)
    head = random_head(target, num_layers=1, seed=2)
    graphed = FastDecoder(target, HeadDrafter(head, target.model))
    assert graphed.graphs
    s, recs = _gen(graphed, ids, 48, mode="plain")
    assert s.token_ids == ref and graphed.syncs == len(recs)
    for builder in BUILDERS:
        before = graphed.syncs
        s, recs = _gen(graphed, ids, 48, budget=32, builder=builder)
        assert s.token_ids == ref, builder
        assert graphed.syncs - before == len(recs)  # one host sync per round
        assert graphed.capture_error is None
    oracle = FastDecoder(target, OracleDrafter(len(ids), ref, 97))
    s, _ = _gen(oracle, ids, 48, budget=64)
    assert s.token_ids == ref and s.tau > 2.5
    eager = FastDecoder(target, HeadDrafter(head, target.model), graphs=False)
    a = _gen(graphed, ids, 48, budget=16)[1]
    b = _gen(eager, ids, 48, budget=16)[1]
    assert [r.tokens for r in a] == [r.tokens for r in b] and [r.accepted for r in a] == [r.accepted for r in b]


@pytest.mark.gpu
def test_gpu_embedded_fp32_jetspec_equals_plain():
    from jetspec_core.target import load_target

    try:
        target = load_target(None, device="cuda", dtype="float32")
    except JetSpecError as e:
        pytest.skip(f"embedded model not available: {e}")
    dec = FastDecoder(target, HeadDrafter(random_head(target), target.model))
    vocab = target.shape.vocab_size
    for p in PROMPTS[:3]:
        ids = target.encode_prompt(p)
        plain = _gen(dec, ids, 64, mode="plain")[0].token_ids
        for b in (16, 64, 256):
            assert _gen(dec, ids, 64, budget=b)[0].token_ids == plain, b
        s, _ = _gen(FastDecoder(target, OracleDrafter(len(ids), plain, vocab)), ids, 64, budget=64)
        assert s.token_ids == plain and s.tau > 2.5


def test_per_layer_caches_and_device_map_loading(tmp_path):
    """The device_map path: per-layer K/V caches and activations moved between layers (forced
    here on one CPU), and `load_target(folder, device_map="auto")` keeping HF's placement."""
    from jetspec_core.target import load_target

    hf = tiny_hf("qwen3")
    ids = [4, 8, 15, 16, 23, 42]
    ref = hf_greedy(hf, ids, 24)
    hf.save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    target = load_target(str(tmp_path), device="cpu", dtype="float32", device_map="auto")
    dec = FastDecoder(target, OracleDrafter(len(ids), ref, 97), per_layer=True)
    assert isinstance(dec.state, type(None)) and _gen(dec, ids, 24, mode="plain")[0].token_ids == ref
    assert isinstance(dec.state.st.k, list) and len(dec.state.st.k) == target.shape.num_layers
    s, _ = _gen(dec, ids, 24, budget=32)
    assert s.token_ids == ref and s.tau > 2.5


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(97)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   unk_token="t0")
