"""Calibrated tree scores (`jetspec_core.calibration`): the map, its fit, and the trees and
decoders that use it (lossless, raw log-probs recorded, engine = reference)."""
import json
import math
import shutil

import pytest
import torch

from conftest import OracleDrafter, hf_greedy, one_line_error, run_cli, tiny_hf
from jetspec_core.calibration import KNOTS, Calibration, count_pairs, fit
from jetspec_core.config import BUILDERS, DecodeConfig
from jetspec_core.decoder import Decoder
from jetspec_core.drafter import HeadDrafter
from jetspec_core.engine import FastDecoder, bucket_for
from jetspec_core.engine.gpu_tree import build_static
from jetspec_core.errors import JetSpecError
from jetspec_core.loading import DEFAULT_HEAD, random_head
from jetspec_core.target import target_from_hf
from jetspec_core.tree import build_tree


def _deep_favouring(depths: int = 15) -> Calibration:
    """A calibration that makes the head's confident guesses much more certain the deeper they are
    (so trees grow deeper than by raw log-probs)."""
    k = torch.tensor(KNOTS)
    rows = [torch.minimum(k / (1 + 0.5 * d), torch.zeros(())) for d in range(depths)]
    return Calibration(k, torch.stack(rows), {"note": "test"})


def test_apply_is_monotone_strict_bounded_and_keeps_row_order():
    cal = _deep_favouring()
    gen = torch.Generator().manual_seed(0)
    lp = torch.sort(torch.log_softmax(torch.randn(15, 300, generator=gen) * 3, -1), descending=True).values
    lp[:, -1] = -1e4                                  # the engine's floor
    s = cal.apply(lp)
    assert s.shape == lp.shape and s.dtype == torch.float32 and (s <= 0).all()
    assert (s[:, 1:] < s[:, :-1]).all()               # strictly decreasing where lp strictly decreases
    x = torch.linspace(-20, 0, 2001).expand(3, -1)
    y = cal.apply(x)
    assert (y[:, 1:] > y[:, :-1]).all()
    # at the knots, the table's values (+ the small slope that breaks ties)
    kk = torch.tensor(KNOTS)[None].expand(2, -1)
    assert torch.allclose(cal.apply(kk), (cal.values[:2] + 1e-3 * kk).clamp(max=0), atol=1e-5)
    # rows past the table reuse its last row
    assert torch.equal(cal.apply(lp[:1].expand(20, -1))[15:], cal.apply(lp[:1].expand(20, -1))[14:15].expand(5, -1))


def test_bad_tables_are_refused():
    k = torch.tensor(KNOTS)
    with pytest.raises(JetSpecError, match="non-decreasing"):
        Calibration(k, (-k - 20)[None])
    with pytest.raises(JetSpecError, match="strictly increasing"):
        Calibration(k.flip(0), k[None])
    with pytest.raises(JetSpecError, match="non-decreasing|<= 0"):
        Calibration(k, (k + 1)[None])
    with pytest.raises(JetSpecError, match="expected"):
        Calibration(k, k)


def test_count_pairs_counts_a_depth_only_while_the_path_is_in_the_tree():
    # one anchor, 3 depths, K = 2: depth 1 has the target's token at rank 1, depth 2 misses it,
    # so depth 3 is not counted at all (no node of the tree is on the target's path there)
    logp = torch.log(torch.tensor([[[0.6, 0.3], [0.5, 0.2], [0.9, 0.05]]]))
    tokens = torch.tensor([[[4, 7], [1, 2], [8, 9]]])
    target = torch.tensor([[7, 3, 8]])
    n, h, s = count_pairs(logp, tokens, target)
    assert n.sum(1).tolist() == [2.0, 2.0, 0.0]
    assert h.sum(1).tolist() == [1.0, 0.0, 0.0]
    assert math.isclose(float(s[0].sum()), math.log(0.6) + math.log(0.3), rel_tol=1e-6)
    # a target past the answer's end (-1) is not counted either
    n2, _, _ = count_pairs(logp, tokens, torch.tensor([[7, -1, 8]]))
    assert n2.sum(1).tolist() == [2.0, 0.0, 0.0]


def test_fit_recovers_a_known_acceptance_curve():
    """One candidate per depth whose true hit rate is sqrt(p): the fitted table follows sqrt(p),
    not the raw p, at every depth (depth 2 counted only after a depth-1 hit)."""
    gen = torch.Generator().manual_seed(1)
    A, D = 20000, 2
    logp = -torch.rand(A, D, 1, generator=gen) * 6          # log-probs in [-6, 0]
    hit = torch.rand(A, D, generator=gen) < logp[..., 0].exp().sqrt()
    tokens = torch.zeros(A, D, 1, dtype=torch.long)
    target = torch.where(hit, 0, 5)
    n, h, s = count_pairs(logp, tokens, target)
    assert n[0].sum() == A and n[1].sum() == hit[:, 0].sum()
    cal = fit(n, h, s)
    assert (cal.values[:, 1:] >= cal.values[:, :-1]).all()
    for x in (-2.5, -1.0, -0.3):
        got = cal.apply(torch.tensor([[x], [x]])).exp()[:, 0]
        assert (got - math.exp(x / 2)).abs().max() < 0.05, (x, got)
        assert (got > math.exp(x) + 0.05).all()


@pytest.mark.parametrize("builder", BUILDERS)
def test_calibrated_trees_record_raw_logp_and_the_engine_builds_the_same(builder):
    cal = _deep_favouring()
    gen = torch.Generator().manual_seed(7)
    changed = 0
    for trial in range(12):
        d, v = (2, 4, 15)[trial % 3], 40
        lp = torch.log_softmax(torch.randn(d, v, generator=gen) * (1 + trial % 3), -1)
        width, budget = (2, 7)[trial % 2], (5, 16, 37, 64)[trial % 4]
        ref = build_tree(builder, 11, lp, width, 15, budget, cal)
        raw = build_tree(builder, 11, lp, width, 15, budget)
        top = torch.topk(lp, min(width, v), -1).values
        assert torch.equal(ref.draft_logp[1:], top[ref.depth[1:] - 1, ref.rank[1:]])
        for i in range(1, len(ref)):
            assert math.isclose(float(ref.cum_logp[i]), float(ref.draft_logp[ref.path_to(i)].sum()), abs_tol=1e-5)
        assert len(ref) == len(raw) and (ref.parents[1:] < torch.arange(1, len(ref))).all()
        changed += ref.tokens.tolist() != raw.tokens.tolist() or ref.depth.tolist() != raw.depth.tolist()
        got = build_static(builder, lp, torch.tensor(11), width, 15, budget, bucket_for(budget), cal)
        n = int(got.n_valid)
        assert n == len(ref) and got.tokens[:n].tolist() == ref.tokens.tolist()
        assert got.parents[:n].tolist() == ref.parents.tolist() and got.rank[:n].tolist() == ref.rank.tolist()
        assert torch.allclose(got.draft_logp[:n], ref.draft_logp, atol=1e-6)
        assert torch.allclose(got.cum_logp[:n], ref.cum_logp, atol=1e-5)
    if builder != "chain":                            # a chain has one shape whatever the scores
        assert changed > 0


def test_decoders_with_calibration_stay_lossless_and_agree():
    hf = tiny_hf("llama", seed=2)
    target = target_from_hf(hf, name="tiny-llama")
    ids = torch.randint(0, 97, (7,), generator=torch.Generator().manual_seed(4)).tolist()
    plain = hf_greedy(hf, ids, 36)
    cfg = DecodeConfig(max_new_tokens=36, stop_at_eos=False, budget=24, builder="topb", width=4)
    oracle = OracleDrafter(len(ids), plain, 97, width=4)
    raw_s, raw_recs = Decoder(target, oracle).generate(ids, cfg)
    oracle.calibration = _deep_favouring()
    cal_s, cal_recs = Decoder(target, oracle).generate(ids, cfg)
    assert raw_s.token_ids == cal_s.token_ids == plain
    assert [r.tokens for r in raw_recs] != [r.tokens for r in cal_recs]      # the trees did change
    off_s, off_recs = Decoder(target, oracle).generate(ids, DecodeConfig(**{**cfg.to_dict(), "calibrate": False}))
    assert [r.tokens for r in off_recs] == [r.tokens for r in raw_recs]      # calibrate=False: raw scores
    # a head drafter: the engine (eager on CPU) builds the same calibrated trees as the reference
    head = random_head(target, num_layers=1, seed=3)
    head.calibration = _deep_favouring()
    ref_s, ref_recs = Decoder(target, HeadDrafter(head, target.model)).generate(ids, cfg)
    eng_s, eng_recs = FastDecoder(target, HeadDrafter(head, target.model)).generate(ids, cfg)
    assert ref_s.token_ids == eng_s.token_ids == plain
    assert [r.tokens for r in ref_recs] == [r.tokens for r in eng_recs]
    assert [r.new_tokens for r in ref_recs] == [r.new_tokens for r in eng_recs]


def test_config_checks_calibrate():
    with pytest.raises(JetSpecError, match="calibrate"):
        DecodeConfig(calibrate="yes")
    assert DecodeConfig().calibrate is True


def test_save_load_and_stale_files(tmp_path, capsys):
    assert Calibration.load(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    from jetspec_core.calibration import weights_sha256

    cal = _deep_favouring(3)
    cal.meta["head_sha256"] = weights_sha256(tmp_path)
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back is not None and torch.allclose(back.values, cal.values, atol=1e-5) and back.meta["note"] == "test"
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")        # retrained weights: stale table
    assert Calibration.load(tmp_path) is None
    assert "fitted for other head weights" in capsys.readouterr().err
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(JetSpecError, match="not a calibration file"):
        Calibration.load(tmp_path)


@pytest.mark.skipif(not (DEFAULT_HEAD / "model.safetensors").is_file(), reason="assets/head is not trained yet")
def test_train_calibrate_writes_a_table_the_head_loads(tmp_path, capsys, embedded):
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(DEFAULT_HEAD / f, head_dir / f)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"kind": k, "text": t}) + "\n" for k, t in (
        ("chat", "Name three colours of the rainbow."), ("code_task", "Write a Python function that adds two numbers."),
        ("math", "What is 12 times 7?"))))
    rc, out, err = run_cli(capsys, "train", "calibrate", "--head", str(head_dir), "--prompts", str(prompts),
                           "--limit", "2", "--max-new-tokens", "24", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["prompts"] == 2 and res["anchors"] > 10 and set(res["in_sample_tau"]) == {"topb:16 budget 64",
                                                                                        "topb:32 budget 256"}
    from jetspec_core.head import DraftHead

    cal = DraftHead.load(head_dir).calibration
    assert cal is not None and cal.meta["anchors"] == res["anchors"] and cal.depths == 15
    one_line_error(run_cli(capsys, "train", "calibrate", "--head", str(head_dir), "--limit", "0"), "positive")
    one_line_error(run_cli(capsys, "train", "calibrate", "--head", str(head_dir), "--prompts", str(prompts),
                           "--exclude", str(prompts)), "no prompts left")


@pytest.mark.gpu
def test_gpu_calibrated_trees_are_graphed_with_one_sync_per_round():
    """On CUDA the calibration runs inside the captured tree step: no eager fallback, one host sync
    per round, the same trees as the eager engine, output equal to plain."""
    hf = tiny_hf("qwen3").cuda()
    target = target_from_hf(hf, name="tiny-qwen3")
    ids = [5, 17, 3, 9, 44, 2, 61]
    ref = hf_greedy(hf.cpu(), ids, 40)
    head = random_head(target, num_layers=1, seed=2)
    head.calibration = _deep_favouring()
    graphed = FastDecoder(target, HeadDrafter(head, target.model))
    eager = FastDecoder(target, HeadDrafter(head, target.model), graphs=False)
    for builder in BUILDERS:
        cfg = DecodeConfig(max_new_tokens=40, stop_at_eos=False, budget=32, builder=builder)
        before = graphed.syncs
        s, recs = graphed.generate(ids, cfg)
        assert s.token_ids == ref and graphed.syncs - before == len(recs), builder
        assert graphed.graphs and graphed.capture_error is None, graphed.capture_error
        e_recs = eager.generate(ids, cfg)[1]
        assert [r.tokens for r in recs] == [r.tokens for r in e_recs], builder
        assert all(abs(a - b) < 1e-4 for r, q in zip(recs, e_recs) for a, b in zip(r.draft_logp, q.draft_logp))
