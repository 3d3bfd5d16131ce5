"""Draft head checkpoints: published format, exact round trip, clear errors on mismatch."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_hf
from jetspec_core.errors import JetSpecError
from jetspec_core.head import DraftHead, HeadConfig, default_tap_layers
from jetspec_core.loading import load_head
from jetspec_core.target import target_from_hf


def test_default_taps():
    assert default_tap_layers(36, 5) == [1, 9, 17, 25, 33]  # Qwen3-8B, as published
    assert default_tap_layers(30, 1) == [15]
    assert default_tap_layers(30, 5) == [1, 8, 14, 20, 27]


@pytest.fixture
def tiny():
    return target_from_hf(tiny_hf("llama"), name="tiny")


def make_head(tiny, **kw):
    cfg = HeadConfig.for_target(tiny.shape, mask_token_id=96, num_layers=2, **kw)
    cfg.dtype = "float32"
    torch.manual_seed(0)
    return DraftHead(cfg)


def test_round_trip_exact_and_published_names(tiny, tmp_path):
    head = make_head(tiny)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    head.save(tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.weight",
            "layers.1.self_attn.k_norm.weight", "layers.0.mlp.down_proj.weight",
            "layers.1.input_layernorm.weight", "layers.1.post_attention_layernorm.weight"} <= names
    assert not any(n.startswith("model.") or "embed" in n or "lm_head" in n for n in names)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dflash_config"]["causal_head"] is True
    assert cfg["dflash_config"]["target_layer_ids"] == head.config.target_layer_ids
    assert cfg["block_size"] == 16 and cfg["num_target_layers"] == 6
    back = DraftHead.load(tmp_path)
    for (k, a), (k2, b) in zip(head.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_published_style_config_loads(tmp_path, tiny):
    head = make_head(tiny)
    head.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("hidden_act")
    cfg["torch_dtype"] = cfg.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert DraftHead.load(tmp_path).config.num_hidden_layers == 2


def test_mismatched_head_names_the_problem(tmp_path, tiny):
    other = target_from_hf(tiny_hf("llama", vocab=120), name="other")
    make_head(tiny).save(tmp_path)
    with pytest.raises(JetSpecError, match=r"vocab_size 97 != target vocab 120"):
        load_head(str(tmp_path), other)


def test_bad_head_folders(tmp_path, tiny):
    with pytest.raises(JetSpecError, match="does not exist"):
        DraftHead.load(tmp_path / "nope")
    make_head(tiny).save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(JetSpecError, match="corrupt or truncated"):
        DraftHead.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(JetSpecError, match="no model.safetensors"):
        DraftHead.load(tmp_path)


def test_shallow_proposal_equals_the_first_rows_of_the_full_one(tiny):
    """The block is causal: proposing only d depths gives the first d rows of the full proposal."""
    from jetspec_core.drafter import HeadDrafter

    target = tiny
    head = make_head(tiny).eval()
    drafter = HeadDrafter(head, target.model)
    g = torch.Generator().manual_seed(0)
    width = len(head.config.target_layer_ids) * target.shape.hidden_size
    drafter.start(torch.randn(7, width, generator=g), [1] * 8)
    full = drafter.propose(5, [1] * 8)
    assert full.shape[0] == head.config.block_size - 1
    for d in (1, 3, 15, 40):
        part = drafter.propose(5, [1] * 8, depth=d)
        assert part.shape[0] == min(d, 15)
        torch.testing.assert_close(part, full[: part.shape[0]], atol=1e-5, rtol=1e-5)


def test_cpu_logits_padding_keeps_every_row(tiny):
    """On a CPU 5–15 lm_head rows are padded to 16 for speed: each row's logits stay its own."""
    from jetspec_core.model import CPU_PAD_ROWS

    m = tiny.model
    h = torch.randn(20, tiny.shape.hidden_size, generator=torch.Generator().manual_seed(3))
    want = torch.nn.functional.linear(h, m.lm_head).float()
    for n in range(1, 21):
        got = m.logits(h[:n])
        assert got.shape == (n, tiny.shape.vocab_size) and got.dtype == torch.float32
        torch.testing.assert_close(got, want[:n], atol=1e-5, rtol=1e-5, msg=f"{n} rows")
    assert CPU_PAD_ROWS[0] < 15 < CPU_PAD_ROWS[1]                 # the draft's 15 depths are padded


def test_cpu_decoder_stores_linear_weights_column_major():
    """A Decoder on a CPU re-lays the target's and the head's projection matrices column-major
    (faster small-row GEMMs there): same values and shapes, embedding / lm_head untouched, and the
    forward gives the same logits as before."""
    from jetspec_core.decoder import Decoder
    from jetspec_core.drafter import HeadDrafter

    target = target_from_hf(tiny_hf("llama"), name="tiny")
    head = make_head(target).eval()
    m = target.model
    before = {id(p): p.detach().clone() for p in m.linear_weights() + list(head.parameters())}
    ids, pos = torch.tensor([3, 9, 27, 81, 4]), torch.arange(5)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    want, _ = m(ids, pos, m.new_cache(8), causal)
    Decoder(target, HeadDrafter(head, m))
    mats = m.linear_weights() + [p for p in head.layers.parameters() if p.dim() == 2]
    assert mats and all(p.stride() == (1, p.shape[0]) for p in mats)
    assert m.embed.is_contiguous() and m.lm_head.is_contiguous() and head.fc.weight.is_contiguous()
    for p in m.linear_weights() + list(head.parameters()):
        assert torch.equal(p, before[id(p)])
    got, _ = m(ids, pos, m.new_cache(8), causal)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_drafter_cached_context_equals_a_full_forward(tiny):
    """The drafter keeps the context rows' keys/values from round to round; its proposal must
    equal one head forward over the whole fused context (as training computes it)."""
    from jetspec_core.drafter import HeadDrafter

    head = make_head(tiny).eval()
    drafter = HeadDrafter(head, tiny.model)
    g = torch.Generator().manual_seed(1)
    width = len(head.config.target_layer_ids) * tiny.shape.hidden_size
    chunks = [torch.randn(n, width, generator=g) for n in (5, 1, 3, 2)]
    drafter.start(chunks[0], [])
    for ch in chunks[1:]:
        drafter.extend(ch, [])
    got = drafter.propose(7, [])
    with torch.no_grad():
        ctx = head.fuse(torch.cat(chunks))                                         # (11, H)
        B, C = head.config.block_size, ctx.shape[0]
        ids = torch.full((B,), head.config.mask_token_id)
        ids[0] = 7
        mask = torch.cat([torch.ones(B, C, dtype=torch.bool), torch.ones(B, B, dtype=torch.bool).tril()], 1)
        out = head(tiny.model.embed_tokens(ids)[None], torch.arange(C, C + B)[None], ctx[None],
                   torch.arange(C)[None], mask[None])
        want = torch.log_softmax(tiny.model.logits(out[0, 1:]), -1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    empty = HeadDrafter(head, tiny.model)  # a one-token prompt: no context rows at all
    empty.start(None, [])
    assert torch.isfinite(empty.propose(7, [], depth=4)).all()
