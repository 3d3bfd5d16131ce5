"""Shared fixtures: the embedded model (fp32, CPU), tiny random targets, test drafters."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is 17 times 23? Explain step by step.",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning, friends' into French.",
    "Explain what a hash map is in two sentences.",
]


def interpreted(*modules: str) -> list:
    """Import kernel modules (dotted names) so that, without CUDA, their kernels run through the
    Triton interpreter: the switch must be on when triton is first imported and when the
    @triton.jit decorators run, so each module is (re)imported with TRITON_INTERPRET=1 (in case
    another test imported it compiled before) and the switch is put back afterwards, not leaked
    into other modules' imports. The kernel test files (tests/test_kernels*.py) call this before
    anything else imports triton, and run in their own process (see README)."""
    import importlib

    if torch.cuda.is_available():
        return [importlib.import_module(m) for m in modules]
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        return [importlib.reload(importlib.import_module(m)) for m in modules]
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Triton checks the switch again at launch time: keep it on during a kernel test (CPU)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded():
    from jetspec_core.target import load_target

    return load_target(None, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def embedded_hf(embedded):
    """An HF LlamaForCausalLM holding the same weights, for `generate` comparisons."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(embedded.hf_config)
    from jetspec_core.train.teacher import hf_state_from_target

    hf.load_state_dict(hf_state_from_target(embedded), strict=False)
    hf.tie_weights()
    return hf.eval()


def run_cli(capsys, *args):
    """Run the CLI in-process (no interpreter start-up); returns (exit code, stdout, stderr)."""
    from jetspec_core.cli import main

    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(res, message):
    """The CLI failed with exit code 2 and exactly one `error:` line containing `message`."""
    rc, _, err = res
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def tiny_hf(arch: str, seed: int = 0, vocab: int = 97):
    """A tiny random HF model of the given architecture (fp32, CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        arch, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None,
        pad_token_id=None)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # make the tiny model peaky enough that greedy has no near-ties
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return hf


class OracleDrafter:
    """Knows the plain greedy continuation; proposes it with deliberate errors.

    At depth d the true token is put at rank 0, 1 or 2 (so accepted paths branch off the
    top-1 chain), and some depths are wrong outright (the true token is not in the top K),
    so accepted paths are long but end at varied depths."""

    taps: tuple[int, ...] = ()
    max_depth = 15

    def __init__(self, prompt_len: int, continuation: list[int], vocab: int, width: int = 7):
        self.p, self.cont, self.vocab, self.width = prompt_len, continuation, vocab, width

    def start(self, hidden, committed):
        pass

    def extend(self, hidden, committed):
        pass

    def propose(self, anchor, committed, depth=None):
        g = len(committed) - self.p
        gen = torch.Generator().manual_seed(1000 + g)
        logits = torch.randn(self.max_depth, self.vocab, generator=gen)
        for d in range(self.max_depth):
            if g + d >= len(self.cont):
                break
            true = self.cont[g + d]
            order = torch.argsort(logits[d], descending=True)
            u = (g * 7 + d * 3) % 10
            rank = 0 if u < 5 else 1 if u < 7 else 2 if u < 9 else self.width + 3  # last: a wrong depth
            target_val = logits[d, order[rank]].item()
            logits[d, true], logits[d, order[rank]] = target_val + 1e-3 * (rank == 0), logits[d, true].item()
        return torch.log_softmax(logits, -1)
