"""Lossless sampling (T > 0): the speculative output has exactly the target's distribution.

Exact check: a tiny random target (vocabulary 16) and a deliberately biased drafter; the exact
law of the first 3 generated tokens is enumerated with an independent HF forward and compared
with 20,000 speculative samples per setting by a G-test. The same harness must reject the p − q
residual rule used with deterministic children, so the test is shown able to fail. On the real
model, randomised PIT values of emitted tokens must be uniform (Kolmogorov–Smirnov)."""
from __future__ import annotations

import itertools
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from scipy import stats

from jetspec_core import accept as accept_mod
from jetspec_core import decoder as decoder_mod
from jetspec_core.accept import Acceptance
from jetspec_core.config import DecodeConfig
from jetspec_core.decoder import Decoder
from jetspec_core.sampling import sample, warp
from jetspec_core.target import target_from_hf

VOCAB, N_TOK, PROMPT = 16, 3, [3, 5, 9]
SAMPLES = 20_000


def tiny_target_hf():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                               head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
                               eos_token_id=None, bos_token_id=None, pad_token_id=None)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # sharpen the random model so that its distributions are far from uniform
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    return hf


class BiasedDrafter:
    """Confident, often wrong proposals that depend on the context: a drafter whose marginals are
    far from the target's, so any bias in the acceptance rule shows up."""

    taps: tuple[int, ...] = ()
    max_depth = 3

    def start(self, hidden, committed):
        pass

    def extend(self, hidden, committed):
        pass

    def propose(self, anchor, committed, depth=None):
        g = torch.Generator().manual_seed(97 * anchor + 13 * len(committed))
        return torch.log_softmax(3.0 * torch.randn(self.max_depth, VOCAB, generator=g), -1)


def exact_law(hf, cfg: DecodeConfig) -> torch.Tensor:
    """(V,)*N_TOK probabilities of the first N_TOK tokens under plain sampling, enumerated."""
    law = torch.ones([VOCAB] * 0)
    prefixes = [()]
    probs = {}
    with torch.no_grad():
        for step in range(N_TOK):
            batch = torch.tensor([PROMPT + list(p) for p in prefixes])
            logits = hf(batch).logits[:, -1].double()
            w = warp(logits, cfg.temperature, cfg.top_k, cfg.top_p).double()
            for p, row in zip(prefixes, w):
                probs[p] = row
            prefixes = [p + (t,) for p in prefixes for t in range(VOCAB)]
    law = torch.zeros([VOCAB] * N_TOK, dtype=torch.float64)
    for seq in itertools.product(range(VOCAB), repeat=N_TOK):
        pr = 1.0
        for i in range(N_TOK):
            pr *= float(probs[seq[:i]][seq[i]])
            if pr == 0.0:
                break
        law[seq] = pr
    return law


def _draw(args):
    cfg_dict, seeds, rule = args
    torch.set_num_threads(1)
    if rule == "residual":
        decoder_mod.accept_sampled = residual_rule
    target = target_from_hf(tiny_target_hf(), name="tiny16")
    dec = Decoder(target, BiasedDrafter())
    counts = torch.zeros([VOCAB] * N_TOK, dtype=torch.float64)
    tau, exp_tau = [], []
    for s in seeds:
        cfg = DecodeConfig(**{**cfg_dict, "seed": s})
        summary, records = dec.generate(PROMPT, cfg)
        counts[tuple(summary.token_ids)] += 1
        tau += [r.accept_len for r in records]
        exp_tau += [r.expected_tau for r in records]
    return counts, tau, exp_tau


def speculative_counts(cfg: DecodeConfig, n: int, rule: str = "walk"):
    """n speculative samples of the first N_TOK tokens, drawn by 2 worker processes."""
    base = {**cfg.to_dict(), "max_new_tokens": N_TOK, "stop_at_eos": False}
    half = n // 2
    jobs = [(base, range(0, half), rule), (base, range(half, n), rule)]
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        parts = list(ex.map(_draw, jobs))
    counts = sum(p[0] for p in parts)
    tau = [t for p in parts for t in p[1]]
    exp_tau = [t for p in parts for t in p[2]]
    return counts, tau, exp_tau


def g_test(counts: torch.Tensor, law: torch.Tensor) -> float:
    """p-value of a G-test; cells with expected count < 20 are pooled into one (with many
    cells of expected count 5-20 the G statistic's chi-square approximation is anti-conservative:
    measured here, exact plain sampling itself gave p = 5e-4 with a pooling threshold of 5)."""
    n = counts.sum()
    exp = (law * n).flatten()
    obs = counts.flatten()
    assert float(obs[exp == 0].sum()) == 0, "a sample outside the support of the target"
    small = exp < 20
    o = torch.cat([obs[~small], obs[small].sum()[None]]).numpy()
    e = torch.cat([exp[~small], exp[small].sum()[None]]).numpy()
    keep = e > 0
    o, e = o[keep], e[keep]
    e = e * o.sum() / e.sum()
    return float(stats.power_divergence(o, e, lambda_="log-likelihood").pvalue)


def residual_rule(tree, probs, gen):
    """The biased rule: like chain speculative sampling, accept the rank-0 child with
    min(1, p/q) and on rejection sample from norm(max(p − q, 0)) — wrong here because the child
    was chosen deterministically (top-1), not sampled from q."""
    kids = tree.children()
    tokens, q = tree.tokens.tolist(), tree.draft_logp.exp().tolist()
    path, node = [0], 0
    while True:
        first = kids[node][0] if kids[node] else None
        p = probs[node]
        if first is None:
            y = sample(p, gen)
            break
        x = tokens[first]
        if torch.rand((), generator=gen, device=p.device) < min(1.0, float(p[x]) / max(q[first], 1e-12)):
            path.append(first)
            node = first
            continue
        resid = p.clone()
        resid[x] = max(float(p[x]) - q[first], 0.0)
        y = sample(resid / resid.sum(), gen)
        break
    return Acceptance(path=path, bonus=y, target_top=probs.argmax(-1).tolist(),
                      accept_prob=[1.0] * len(tree))


SETTINGS = [
    dict(temperature=1.0, budget=8, width=3),
    dict(temperature=0.7, top_k=5, budget=16, width=4),
    dict(temperature=1.3, top_p=0.8, budget=4, width=2, builder="topb"),
]


@pytest.fixture(scope="module")
def hf16():
    return tiny_target_hf()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_speculative_law_equals_target_law(hf16, setting):
    cfg = DecodeConfig(**setting)
    law = exact_law(hf16, cfg)
    counts, tau, exp_tau = speculative_counts(cfg, SAMPLES)
    assert counts.sum() == SAMPLES
    p = g_test(counts, law)
    assert p > 1e-3, f"G-test rejects the speculative law: p = {p:.2e}"
    assert g_test(counts.sum(-1), law.sum(-1)) > 1e-3
    # the drafter is useful sometimes: paths are really walked
    assert sum(tau) / len(tau) > 1.05
    # realised τ agrees with expected τ within sampling error
    t, e = torch.tensor(tau, dtype=torch.float64), torch.tensor(exp_tau, dtype=torch.float64)
    se = (t - e).std() / len(t) ** 0.5
    assert abs(float((t - e).mean())) < 4 * float(se) + 1e-9, (float(t.mean()), float(e.mean()), float(se))


def test_residual_rule_with_deterministic_children_is_rejected(hf16):
    cfg = DecodeConfig(**SETTINGS[0])
    law = exact_law(hf16, cfg)
    counts, _, _ = speculative_counts(cfg, 6000, rule="residual")
    # 6,000 samples spread too thin over 3-token cells; the first-two-token law is exact too
    p = g_test(counts.sum(-1), law.sum(-1))
    assert p < 1e-6, f"the known-biased rule was not detected (p = {p:.2e})"


def test_seeds_reproduce_and_greedy_unchanged(hf16):
    target = target_from_hf(hf16, name="tiny16")
    dec = Decoder(target, BiasedDrafter())
    cfg = DecodeConfig(temperature=0.9, top_p=0.9, budget=8, max_new_tokens=20, stop_at_eos=False, seed=7)
    a, b = dec.generate(PROMPT, cfg)[0].token_ids, dec.generate(PROMPT, cfg)[0].token_ids
    assert a == b
    c = dec.generate(PROMPT, DecodeConfig(**{**cfg.to_dict(), "seed": 8}))[0].token_ids
    assert c != a
    # temperature 0 ignores top-k/top-p and the seed: equal to plain greedy
    g = DecodeConfig(temperature=0.0, top_k=3, top_p=0.5, budget=8, max_new_tokens=20, stop_at_eos=False)
    plain = Decoder(target).generate(PROMPT, DecodeConfig(mode="plain", max_new_tokens=20, stop_at_eos=False))
    assert dec.generate(PROMPT, g)[0].token_ids == plain[0].token_ids


def test_warp_is_shared_and_correct():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    p = warp(logits, 1.0, top_k=2)
    assert torch.count_nonzero(p) == 2 and torch.allclose(p.sum(), torch.tensor(1.0))
    p = warp(logits, 1.0, top_p=0.5)
    assert torch.count_nonzero(p) == 1  # the top token alone has mass > 0.5
    p = warp(logits, 0.5)
    assert torch.allclose(p, torch.softmax(logits / 0.5, -1))
    # the decoder's sampling path and plain sampling use this very function
    assert decoder_mod.warp is warp and accept_mod.sample is sample


def test_real_model_pit_uniform(embedded, embedded_hf):
    """Randomised PIT of ≥ 2,000 emitted tokens under an independent plain forward."""
    from jetspec_core.loading import load_head

    head, _ = load_head(None, embedded)  # the shipped head when present
    if head is None:
        from jetspec_core.loading import random_head
        head = random_head(embedded)
    from jetspec_core.drafter import HeadDrafter
    dec = Decoder(embedded, HeadDrafter(head, embedded.model))
    prompts = ["Tell me a short story about a fox.", "List some fruits and their colours.",
               "Write a Python function to add two numbers.", "What is the capital of Italy?",
               "Describe the ocean in a few sentences.", "Give advice on learning to cook.",
               "Explain gravity to a child.", "Write a haiku about rain.",
               "How do I sort a list in Python?", "What should I pack for a beach trip?"]
    pits, accepted = [], 0
    gen = torch.Generator().manual_seed(123)
    for i, text in enumerate(prompts):
        cfg = DecodeConfig(temperature=0.8, top_p=0.95, budget=8, max_new_tokens=210, seed=i, stop_at_eos=False)
        ids = embedded.encode_prompt(text)
        summary, records = dec.generate(ids, cfg)
        accepted += sum(r.accept_len - 1 for r in records)
        seq = torch.tensor([ids + summary.token_ids])
        with torch.no_grad():
            logits = embedded_hf(seq).logits[0, len(ids) - 1: -1].double()
        probs = warp(logits, cfg.temperature, cfg.top_k, cfg.top_p).double()
        toks = torch.tensor(summary.token_ids)
        cdf_before = torch.cumsum(probs, -1).gather(1, toks[:, None])[:, 0] - probs.gather(1, toks[:, None])[:, 0]
        u = torch.rand(len(toks), generator=gen, dtype=torch.float64)
        pits += (cdf_before + u * probs.gather(1, toks[:, None])[:, 0]).tolist()
    assert len(pits) >= 2000
    p = stats.kstest(pits, "uniform").pvalue
    assert p > 1e-3, f"PIT values are not uniform: KS p = {p:.2e}"
