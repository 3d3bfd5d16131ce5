"""Draft-head training: prompt set, teacher, batches, loss falls, exact resume, data checks."""
import math
import random
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli
import torch

from conftest import tiny_hf
from jetspec_core.errors import JetSpecError
from jetspec_core.target import target_from_hf
from jetspec_core.train import prompts as P
from jetspec_core.train.data import DistillData, tokenizer_fingerprint
from jetspec_core.train.distill import _cut, generate_responses
from jetspec_core.train.teacher import teacher_forward, teacher_model
from jetspec_core.train.trainer import Trainer, TrainConfig, make_batch, pick_best

ROOT = Path(__file__).resolve().parent.parent


# -- prompt set ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prompt_set():
    return P.build_prompts(1500, seed=0)


def test_prompts_diverse_and_free_of_evaluation_prompts(prompt_set):
    kinds = {}
    for p in prompt_set:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    assert len(prompt_set) == 1500 and len({p.text for p in prompt_set}) == 1500
    assert {"code_stub", "code_task", "code_explain", "math", "reasoning", "chat", "writing", "extraction"} <= set(kinds)
    assert sum(kinds[k] for k in ("code_stub", "code_task", "code_explain")) > 300
    entry, shingles = P.evaluation_guard()
    assert len(entry) >= 150 and len(shingles) > 1000
    assert not any(P.is_evaluation_like(p.text, entry, shingles) for p in prompt_set)


def test_humaneval_layout_stubs_from_module_level_functions():
    """Module-level stdlib functions also appear as completion stubs laid out like HumanEval-style
    tasks (header, two blank lines, signature, docstring opening with a space), and nothing else."""
    stubs = [p.text for p in P._stdlib_prompts(random.Random(0)) if p.kind == "code_stub"]
    styled = [t for t in stubs if '"""' + " " in t.split(":\n", 1)[-1][:12]]
    assert len(styled) > 100
    for t in styled:
        head, _, rest = t.partition("def ")
        assert head in ("", "from typing import List, Optional\n\n\n", "from typing import Any, Dict, List\n\n\n") \
            or (head.startswith("import ") and head.endswith("\n\n\n"))
        assert t.endswith('\n    """\n')
        assert not any(ln.strip() == "" and ln for ln in t.splitlines())  # blank docstring lines stay empty
        compile(t + "    pass\n", "<stub>", "exec")


def test_extraction_prompts_from_generated_records():
    """Structured-extraction prompts: all distinct, deterministic for a seed, each an instruction
    followed by at least two generated records, and part of the built set."""
    a = P._extraction(random.Random(5), 300)
    assert a == P._extraction(random.Random(5), 300) and a != P._extraction(random.Random(6), 300)
    assert len({p.text for p in a}) == 300 and {p.kind for p in a} == {"extraction"}
    asks = P._EXTRACT_ASKS + P._QUESTION_ASKS
    for p in a:
        ask, _, body = p.text.partition("\n\n")
        assert any(ask.startswith(t.split("{")[0]) for t in asks), ask
        assert len(body) > 80 and any(c.isdigit() for c in body)
    numbered = [p for p in a if "\n1. " in p.text and "\n2. " in p.text]
    assert 50 < len(numbered) < 250                     # both layouts: numbered lists and running prose
    built = [p for p in P.build_prompts(3000, seed=0) if p.kind == "extraction"]
    assert len(built) > 60


def test_guard_catches_evaluation_prompts():
    from jetspec_core.bench.datasets import load_dataset

    entry, shingles = P.evaluation_guard()
    he = load_dataset("humaneval")[5]
    mt = load_dataset("mtbench")[7]
    assert P.is_evaluation_like(he.text, entry, shingles)
    assert P.is_evaluation_like("Please help: " + mt.text, entry, shingles)
    assert not P.is_evaluation_like("Write a haiku about tea.", entry, shingles)


def test_prompts_deterministic_and_round_trip(tmp_path):
    a = P._templated(random.Random(3), 200) + P._own_stubs(random.Random(3))
    b = P._templated(random.Random(3), 200) + P._own_stubs(random.Random(3))
    assert a == b and P._templated(random.Random(4), 200) != a[:200]
    digest = P.save_prompts(a, tmp_path / "p.jsonl")
    back, digest2 = P.load_prompts(tmp_path / "p.jsonl")
    assert back == a and digest == digest2
    with pytest.raises(JetSpecError, match="does not exist"):
        P.load_prompts(tmp_path / "missing.jsonl")


def test_prompt_selection_kinds_limit_and_shards(prompt_set):
    """Shards are contiguous, disjoint and cover the selection; kinds filter first; bad input is one line."""
    shards = [P.select_prompts(prompt_set, shard=(i, 3)) for i in range(3)]
    assert [len(x) for x in shards] == [500, 500, 500] and sum(shards, []) == prompt_set
    code = P.select_prompts(prompt_set, kinds=["code_stub", "code_task"])
    assert code and {p.kind for p in code} == {"code_stub", "code_task"}
    halves = [P.select_prompts(prompt_set, kinds=["code_stub", "code_task"], limit=101, shard=(i, 2)) for i in (0, 1)]
    assert halves[0] + halves[1] == code[:101] and len(halves[0]) == 50
    with pytest.raises(JetSpecError, match="no prompts of kind poetry"):
        P.select_prompts(prompt_set, kinds=["poetry"])
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(JetSpecError, match="--shard"):
            P.parse_shard(bad)
    assert P.parse_shard("1/4") == (1, 4)


# -- teacher, generation, batches ---------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_teacher_matches_our_forward(arch):
    target = target_from_hf(tiny_hf(arch), name="tiny")
    hf = teacher_model(target)
    ids = torch.randint(0, 97, (2, 14), generator=torch.Generator().manual_seed(1))
    taps, fin = teacher_forward(hf, ids, torch.ones_like(ids), [1, 3])
    for row in range(2):
        cache = target.model.new_cache(20)
        logits, ours = target.model(ids[row], torch.arange(14), cache, torch.ones(14, 14, dtype=torch.bool).tril(),
                                    taps=(1, 3))
        torch.testing.assert_close(taps[row], ours, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hf.lm_head(fin[row]), logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(JetSpecError, match="tap layers"):
        teacher_forward(hf, ids, torch.ones_like(ids), [5])  # the last layer is not tappable from HF


def test_teacher_without_a_mask_equals_the_masked_forward_on_real_positions():
    """Right-padded rows: causal attention alone gives the real positions the masked forward's
    outputs (the trainer passes no mask); a row shorter than the batch is the case that matters."""
    hf = teacher_model(target_from_hf(tiny_hf("llama"), name="tiny"))
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(2))
    lens = torch.tensor([12, 7, 3])
    att = (torch.arange(12) < lens[:, None]).long()
    ids = ids * att                                               # pads: token 0 after each row's end
    t_mask, f_mask = teacher_forward(hf, ids, att, [1, 3])
    t_none, f_none = teacher_forward(hf, ids, None, [1, 3])
    real = att.bool()
    torch.testing.assert_close(t_none[real], t_mask[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_none[real], f_mask[real], atol=1e-5, rtol=1e-5)
    alone, _ = teacher_forward(hf, ids[1:2, :7], None, [1, 3])   # and those of the row on its own
    torch.testing.assert_close(t_none[1, :7], alone[0], atol=1e-5, rtol=1e-5)


def test_generation_left_padding_is_batch_invariant():
    hf = teacher_model(target_from_hf(tiny_hf("llama"), name="tiny"))
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [20]]
    batched = generate_responses(hf, prompts, 12, batch_size=3, pad_id=0, eos=frozenset(), progress=False)
    alone = [generate_responses(hf, [p], 12, batch_size=1, pad_id=0, eos=frozenset(), progress=False)[0]
             for p in prompts]
    assert batched == alone and all(len(r) == 12 for r in batched)
    assert _cut([4, 5, 2, 7, 2], frozenset({2})) == [4, 5, 2] and _cut([4, 5], frozenset({2})) == [4, 5]


def test_generation_time_limit_skips_a_batch_that_would_overrun(monkeypatch):
    """A batch is started only if it should end within the limit (judged by the slowest so far): with
    batches of ~0.3 s and a 0.5-s limit the first runs, the second would end past it and is not begun."""
    import time as _time
    hf = teacher_model(target_from_hf(tiny_hf("llama"), name="tiny"))
    real = hf.generate

    def slow(*a, **k):
        _time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(hf, "generate", slow)
    prompts = [[5, 6, 7], [9, 10], [20, 21], [30]]
    out = generate_responses(hf, prompts, 4, batch_size=1, pad_id=0, eos=frozenset(), time_limit_s=0.5,
                             progress=False)
    assert sum(r is not None for r in out) == 1
    out = generate_responses(hf, prompts, 4, batch_size=1, pad_id=0, eos=frozenset(), time_limit_s=60,
                             progress=False)
    assert all(r is not None and len(r) == 4 for r in out)


def test_make_batch_masks_positions_and_labels():
    seqs = [list(range(10, 30)), list(range(40, 51))]  # lengths 20 and 11
    plens = [6, 9]
    B, k = 4, 3
    bt = make_batch(seqs, plens, k, B, mask_id=99, gen=torch.Generator().manual_seed(0), max_len=64)
    n = 20
    mask = bt.mask_on("cpu")
    assert mask.shape == (2, k * B, n + k * B)
    for i, (s, p) in enumerate(zip(seqs, plens)):
        for j in range(k):
            if not bt.valid[i, j].any():
                continue
            a = int(bt.block_pos[i, j * B])
            assert p - 1 <= a <= len(s) - 2
            assert bt.block_ids[i, j * B] == s[a] and (bt.block_ids[i, j * B + 1:(j + 1) * B] == 99).all()
            assert bt.block_pos[i, j * B:(j + 1) * B].tolist() == list(range(a, a + B))
            for slot in range(B):
                row = mask[i, j * B + slot]
                assert row[:n].tolist() == [c < a for c in range(n)]          # context rows before the anchor
                blk = row[n:].view(k, B)
                assert blk[j].tolist() == [c <= slot for c in range(B)]        # causal inside its block
                assert not blk[[x for x in range(k) if x != j]].any()          # blind to the other blocks
            for d in range(1, B):
                assert bool(bt.valid[i, j, d - 1]) == (a + d <= len(s) - 1)
                if bt.valid[i, j, d - 1]:
                    assert int(bt.label_pos[i, j, d - 1]) == a + d - 1
    # the second sequence has only 2 anchor positions (8 and 9): its third block is unused
    assert bt.valid[0].any(-1).all() and bt.valid[1].any(-1).tolist() == [True, True, False]
    assert sorted(int(bt.block_pos[1, j * B]) for j in range(2)) == [8, 9]


# -- training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setup():
    return _tiny_setup()


def _tiny_setup():
    torch.set_num_threads(1)  # tiny shapes: threads only add overhead on a shared 2-core box
    hf = teacher_model(target_from_hf(tiny_hf("llama"), name="tiny"))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 96, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist()
               for _ in range(24)]
    resp = generate_responses(hf, prompts, 24, 24, 0, frozenset(), progress=False)
    data = DistillData([p + r for p, r in zip(prompts, resp)], [len(p) for p in prompts], ["t"] * 24,
                       tokenizer_fingerprint(None, 97))
    return hf, data


def _cfg(**kw):
    base = dict(layers=(1,), steps=30, batch_size=6, anchors=4, lr=3e-3, warmup=3, holdout=0.2, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_training_loss_falls_and_agreement_is_reported(tiny_setup, tmp_path):
    hf, data = tiny_setup
    tr = Trainer(hf, data, _cfg(layers=(1, 2)), 96, tmp_path, progress=False)
    before = tr.evaluate()
    report = tr.run()
    losses = [row["loss_L1"] for row in report["log"]]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3, losses
    for L in (1, 2):
        held = report["heldout"][f"L{L}"]
        assert len(held["top1_per_depth"]) == 15 and held["kl"] < before[L]["kl"]
    assert pick_best(report) in (1, 2)
    paths = tr.export()
    from jetspec_core.head import DraftHead

    head = DraftHead.load(paths[2])
    assert head.config.num_hidden_layers == 2 and head.config.target_layer_ids == [1, 2, 2, 2, 3]
    assert head.config.mask_token_id == 96 and head.config.block_size == 16


def test_profile_splits_the_step_time(tiny_setup, tmp_path):
    hf, data = tiny_setup
    report = Trainer(hf, data, _cfg(steps=4, layers=(1, 2), profile=True), 96, tmp_path, progress=False).run()
    prof = report["profile_s"]
    assert set(prof) == {"batch_wait", "teacher", "student_L1", "student_L2", "update"}, prof
    assert all(v >= 0 for v in prof.values()) and report["profiled_steps"] == report["steps_here"] == 4
    assert sum(prof.values()) <= report["seconds_per_step"] * 4 + 2e-3  # rounding: 4 decimals each
    assert "profile_s" not in Trainer(hf, data, _cfg(steps=1), 96, tmp_path / "b", progress=False).run()


def test_resume_continues_exactly(tiny_setup, tmp_path):
    hf, data = tiny_setup
    straight = Trainer(hf, data, _cfg(steps=6), 96, tmp_path / "a", progress=False)
    straight.run()
    part = Trainer(hf, data, _cfg(steps=6), 96, tmp_path / "b", progress=False)
    for _ in range(3):
        part.train_step()
    part.save_checkpoint()
    resumed = Trainer(hf, data, _cfg(steps=6), 96, tmp_path / "b", progress=False)
    assert resumed.load_checkpoint() and resumed.step == 3
    resumed.run()
    for (name, x), (_, y) in zip(straight.heads[1].state_dict().items(), resumed.heads[1].state_dict().items()):
        torch.testing.assert_close(x, y, atol=0, rtol=0, msg=name)
    longer = Trainer(hf, data, _cfg(steps=8), 96, tmp_path / "b", progress=False)
    assert longer.load_checkpoint() and longer.total_steps == 8  # a finished run continues with more steps
    assert longer.run()["step"] == 8
    other = Trainer(hf, data, _cfg(steps=6, layers=(2,)), 96, tmp_path / "b", progress=False)
    with pytest.raises(JetSpecError, match="checkpoint .* is for layers"):
        other.load_checkpoint()


def _data_parallel_worker(rank: int, world: int, tmp: Path) -> None:
    """One rank of a CPU (gloo) data-parallel run; rank 0 saves its head and loss log."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp / 'pg'}", rank=rank, world_size=world)
    hf, data = _tiny_setup()
    tr = Trainer(hf, data, _cfg(steps=5), 96, tmp / f"rank{rank}", progress=False, rank=rank, world=world)
    report = tr.run()
    if rank == 0:
        torch.save({"head": tr.heads[1].state_dict(), "log": report["log"], "heldout": report["heldout"]}, tmp / "dp.pt")
    dist.barrier()                 # as `train fit` does: rank 0 works on after the loop; leave together
    dist.destroy_process_group()


def test_data_parallel_training_equals_one_process(tiny_setup, tmp_path):
    """Two ranks, each on half of every batch, take the same steps as one process on the whole
    batch (gradients summed over ranks, the KL normalised by the whole batch's rows)."""
    hf, data = tiny_setup
    one = Trainer(hf, data, _cfg(steps=5), 96, tmp_path / "one", progress=False)
    single = one.run()
    torch.multiprocessing.spawn(_data_parallel_worker, args=(2, tmp_path), nprocs=2)
    dp = torch.load(tmp_path / "dp.pt", weights_only=False)
    assert [r["loss_L1"] for r in dp["log"]] == pytest.approx([r["loss_L1"] for r in single["log"]], rel=1e-4)
    for name, x in one.heads[1].state_dict().items():
        torch.testing.assert_close(dp["head"][name], x, atol=1e-4, rtol=1e-4, msg=name)
    assert dp["heldout"]["L1"]["kl"] == pytest.approx(single["heldout"]["L1"]["kl"], rel=1e-4)
    assert not (tmp_path / "rank1" / "checkpoint.pt").exists()  # rank 0 alone writes


def test_init_from_a_published_head(tiny_setup, tmp_path):
    hf, data = tiny_setup
    tr = Trainer(hf, data, _cfg(steps=5, holdout=0.0), 96, tmp_path / "a", progress=False)
    tr.run()
    folder = tr.export()[1]
    warm = Trainer(hf, data, _cfg(steps=5, holdout=0.0, seed=7), 96, tmp_path / "b", progress=False)
    assert any(not torch.equal(x, y) for x, y in zip(warm.heads[1].state_dict().values(),
                                                     tr.heads[1].state_dict().values()))
    warm.init_from(folder)
    for (name, x), y in zip(warm.heads[1].state_dict().items(), tr.heads[1].state_dict().values()):
        # the published file is bf16: equal up to that rounding
        torch.testing.assert_close(x, y.to(torch.bfloat16).float(), atol=0, rtol=0, msg=name)
    # a deeper head grows from it: the published layer first, extra layers pass the stream through
    grown = Trainer(hf, data, _cfg(steps=5, holdout=0.0, layers=(2, 3)), 96, tmp_path / "c", progress=False)
    grown.init_from(folder)
    bt = warm.batch_at(0)
    taps, _, valid = warm._teacher(bt)
    want = warm._student(warm.heads[1], bt, taps, valid)
    for L in (2, 3):
        torch.testing.assert_close(grown._student(grown.heads[L], bt, taps, valid), want, atol=0, rtol=0)
    grown.train_step()
    assert grown.heads[2].layers[1].o_proj.weight.abs().sum() > 0   # training moves the new layer
    deep = grown.export()[3]
    shrink = Trainer(hf, data, _cfg(steps=5, layers=(2,)), 96, tmp_path / "d", progress=False)
    with pytest.raises(JetSpecError, match="that head has 3 layers.*never shrink"):
        shrink.init_from(deep)


def test_depth_decay_weighs_the_loss_by_depth(tiny_setup, tmp_path):
    """--depth-decay γ: depth d's KL weighs exp(−(d−1)/γ) in a weighted mean over the labelled rows;
    a tiny γ leaves depth 1 alone, and γ = 0 is the uniform mean."""
    hf, data = tiny_setup
    assert torch.equal(_cfg().depth_weights(), torch.ones(15))
    torch.testing.assert_close(_cfg(depth_decay=7.0).depth_weights()[:3],
                               torch.tensor([1.0, math.exp(-1 / 7), math.exp(-2 / 7)]))
    tr = Trainer(hf, data, _cfg(), 96, tmp_path, progress=False)
    bt = tr.batch_at(0)
    taps, t_logits, valid = tr._teacher(bt)
    s_logits = tr._student(tr.heads[1], bt, taps, valid)
    logp, logq = torch.log_softmax(t_logits.float(), -1), torch.log_softmax(s_logits.float(), -1)
    per_row = (logp.exp() * (logp - logq)).sum(-1)                           # KL(target ‖ head) per row
    depth = torch.arange(1, 16).expand(valid.shape)[valid]                   # each labelled row's depth
    for gamma in (0.0, 3.0, 1e-3):
        tr.cfg = _cfg(depth_decay=gamma)
        w = tr._row_weights(valid)
        assert (w is None) == (gamma == 0)
        want = per_row.mean() if gamma == 0 else (per_row * torch.exp(-(depth - 1) / gamma)).sum() / \
            torch.exp(-(depth - 1) / gamma).sum()
        torch.testing.assert_close(tr._kl(s_logits, t_logits, None, w), want, rtol=1e-5, atol=1e-6)
        _, rows = tr._share(bt)                          # what a step divides by: the batch's total weight
        assert rows == pytest.approx(valid.sum().item() if w is None else w.sum().item())
    torch.testing.assert_close(tr._kl(s_logits, t_logits, None, tr._row_weights(valid)),
                               per_row[depth == 1].mean(), rtol=1e-5, atol=1e-6)   # γ → 0: depth 1 only
    tr.cfg = _cfg(depth_decay=5.0, steps=3)
    assert all(math.isfinite(tr.train_step()[1]) for _ in range(3))
    with pytest.raises(JetSpecError, match="depth_decay"):
        _cfg(depth_decay=-1.0)


def test_config_validation():
    for bad in (dict(layers=()), dict(layers=(1, 1)), dict(steps=0), dict(holdout=1.0), dict(lr=0.0)):
        with pytest.raises(JetSpecError):
            TrainConfig(**bad)


# -- data file and bad input --------------------------------------------------------------------
def test_data_round_trip_and_tokenizer_check(tmp_path):
    d = DistillData([[1, 2, 3, 4], [5, 6, 7]], [2, 1], ["math", "chat"], "v97-abc", {"note": "x"})
    d.save(tmp_path / "d.safetensors")
    back = DistillData.load(tmp_path / "d.safetensors")
    assert back.seqs == d.seqs and back.prompt_lens == d.prompt_lens and back.kinds == d.kinds
    assert back.meta == {"note": "x"} and back.response_tokens == 4
    back.check_tokenizer("v97-abc")
    with pytest.raises(JetSpecError, match="different tokenizer"):
        back.check_tokenizer("v97-other")
    with pytest.raises(JetSpecError, match="does not fit"):
        DistillData([[1, 2]], [2], ["x"], "f")


def test_joined_data_and_split_by_prompt():
    a = DistillData([[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]], [2, 1, 1], ["m", "c", "c"], "v97-abc", {"t": 0})
    b = DistillData([[1, 2, 9, 9], [5, 7, 7]], [2, 1], ["m", "c"], "v97-abc", {"t": 1})
    both = DistillData.concat([a, b], ["a", "b"])
    assert len(both) == 5 and both.seqs[3] == [1, 2, 9, 9] and [p["t"] for p in both.meta["parts"]] == [0, 1]
    for seed in range(20):  # the two answers of a prompt are never split apart
        train, hold = both.split(0.34, seed)
        assert sorted(train + hold) == list(range(5)) and len(hold) >= 1
        for i, j in ((0, 3), (1, 4)):
            assert (i in hold) == (j in hold)
    with pytest.raises(JetSpecError, match="different tokenizer"):
        DistillData.concat([a, DistillData([[1, 2]], [1], ["x"], "v97-other")], ["a", "c"])


def test_cli_refuses_data_from_another_tokenizer(tmp_path, embedded, capsys):
    real = tokenizer_fingerprint(embedded.tokenizer, embedded.shape.vocab_size)
    assert real.startswith("v49152-") and real != tokenizer_fingerprint(None, 49152)
    DistillData([[1, 2, 3]], [1], ["x"], "v32000-0123456789abcdef").save(tmp_path / "other.safetensors")
    common = ["--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]
    one_line_error(run_cli(capsys, "train", "fit", "--data", str(tmp_path / "other.safetensors"), *common),
                    "was made with a different tokenizer")
    one_line_error(run_cli(capsys, "train", "fit", "--data", str(tmp_path / "none.safetensors"), *common),
                    "does not exist")
    one_line_error(run_cli(capsys, "train", "fit", "--data", str(tmp_path / "other.safetensors"), *common,
                         "--layers", "0"), "layers must be")
    P.save_prompts([P.Prompt("chat", "Hello there.")], tmp_path / "p.jsonl")
    data = ["train", "data", "--prompts", str(tmp_path / "p.jsonl"), *common]
    one_line_error(run_cli(capsys, *data, "--shard", "2/2"), "need 0 <= I < N")
    one_line_error(run_cli(capsys, *data, "--kinds", "poetry"), "no prompts of kind poetry")
    one_line_error(run_cli(capsys, *data, "--shard", "0/2"), "no prompts left")  # one prompt: slice 0 of 2 is empty


def test_cli_help_lists_subcommands(capsys):
    rc, out, _ = run_cli(capsys, "train", "--help")
    assert rc == 0 and all(w in out for w in ("prompts", "data", "fit"))
    rc, out, _ = run_cli(capsys, "train", "fit", "--help")
    assert rc == 0 and "--resume" in out and "--time-limit" in out


def test_trained_head_drafts_for_the_decoder(tiny_setup, tmp_path):
    """End to end: a head trained on the target's own answers makes the real decoder accept
    several tokens per round on those prompts, and an untrained one does not (catches any
    misalignment of positions, context rows or labels between training and decoding)."""
    from jetspec_core.config import DecodeConfig
    from jetspec_core.decoder import Decoder
    from jetspec_core.drafter import HeadDrafter

    hf, data = tiny_setup
    target = target_from_hf(tiny_hf("llama"), name="tiny")
    cfg = DecodeConfig(budget=16, max_new_tokens=20, stop_at_eos=False)

    def mean_tau(head):
        dec = Decoder(target, HeadDrafter(head.eval(), target.model))
        return sum(dec.generate(data.seqs[i][:data.prompt_lens[i]], cfg)[0].tau for i in range(4)) / 4

    tr = Trainer(hf, data, _cfg(steps=120, batch_size=8, anchors=8, holdout=0.0), 96, tmp_path, progress=False)
    untrained = mean_tau(tr.heads[1])
    tr.run()
    trained = mean_tau(tr.heads[1])
    assert trained >= 2.0 and trained > untrained + 0.6, (untrained, trained)


def test_cli_fit_joins_data_files_and_starts_from_the_shipped_head(tmp_path, embedded, capsys):
    """`train fit --data A B --init-from assets/head` on the real target: both files are used and
    the run starts from the shipped weights (a couple of tiny steps on CPU)."""
    import json

    from jetspec_core.loading import DEFAULT_HEAD

    fp = tokenizer_fingerprint(embedded.tokenizer, embedded.shape.vocab_size)
    ids = embedded.encode_prompt("Add two numbers in Python.")
    answer = embedded.tokenizer.encode("def add(a, b):\n    return a + b\n", add_special_tokens=False)
    DistillData([ids + answer], [len(ids)], ["code"], fp).save(tmp_path / "a.safetensors")
    DistillData([ids + answer[::-1], ids[:5] + answer], [len(ids), 5], ["code", "x"], fp).save(tmp_path / "b.safetensors")
    out = tmp_path / "run"
    layers = json.loads((DEFAULT_HEAD / "config.json").read_text())["num_hidden_layers"]
    rc, stdout, err = run_cli(capsys, "train", "fit", "--data", str(tmp_path / "a.safetensors"),
                              str(tmp_path / "b.safetensors"), "--out", str(out), "--layers", str(layers), "--steps", "2",
                              "--batch-size", "2", "--anchors", "2", "--holdout", "0", "--init-from",
                              str(DEFAULT_HEAD), "--device", "cpu", "--no-progress")
    assert rc == 0, err
    assert "start from the weights in" in err
    report = json.loads((out / "train_report.json").read_text())
    assert report["data_sequences"] == 3 and report["step"] == 2
    assert len(report["data_meta"]["parts"]) == 2
    assert (out / "head" / "model.safetensors").is_file()


def test_distill_several_sampled_answers_per_prompt(embedded):
    from jetspec_core.train.distill import distill
    from jetspec_core.train.prompts import Prompt

    hf = teacher_model(embedded)
    prompts = [Prompt("chat", "Name a colour."), Prompt("math", "What is 2 + 3?")]
    data = distill(embedded, hf, prompts, max_new_tokens=6, batch_size=2, temperature=1.0, seed=3,
                   samples=3, progress=False)
    assert len(data) == 6 and data.meta["samples"] == 3 and data.meta["answers"] == 6
    firsts = {tuple(s[:p]) for s, p in zip(data.seqs, data.prompt_lens)}
    assert len(firsts) == 2  # three answers for each of the two prompts
    answers = [tuple(s[p:]) for s, p in zip(data.seqs, data.prompt_lens)]
    assert len(set(answers)) > 2, answers  # the passes use different seeds
    with pytest.raises(JetSpecError, match="samples must be 1"):
        distill(embedded, hf, prompts, max_new_tokens=2, samples=2)  # greedy answers would repeat
