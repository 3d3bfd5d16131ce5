"""Self-distillation data: the target's own answers to the prompt set (batched HF `generate`).

Prompts are wrapped in the chat template exactly as the decoder does (`Target.encode_prompt`),
bucketed by length, left-padded and generated in large batches (greedy by default, as the
benchmark decodes). Each response is cut after its first EOS. The result keeps the token ids of
prompt + response, so training never re-tokenises text.
"""
from __future__ import annotations

import random
import time

import torch

from ..errors import JetSpecError
from ..target import Target
from .data import DistillData, tokenizer_fingerprint
from .prompts import Prompt


def encode_prompts(target: Target, prompts: list[Prompt], max_prompt_tokens: int) -> tuple[list[list[int]], list[str]]:
    """Chat-template ids of each prompt; prompts longer than max_prompt_tokens are skipped."""
    ids, kinds = [], []
    for p in prompts:
        x = target.encode_prompt(p.text)
        if len(x) <= max_prompt_tokens:
            ids.append(x)
            kinds.append(p.kind)
    if not ids:
        raise JetSpecError(f"no prompt fits in {max_prompt_tokens} tokens")
    return ids, kinds


def _cut(resp: list[int], eos: frozenset[int]) -> list[int]:
    for j, t in enumerate(resp):
        if t in eos:
            return resp[: j + 1]
    return resp


@torch.no_grad()
def generate_responses(hf, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int,
                       pad_id: int, eos: frozenset[int], temperature: float = 0.0, seed: int = 0,
                       time_limit_s: float | None = None, progress: bool = True) -> list[list[int] | None]:
    """Responses per prompt (None where the time limit stopped generation before its batch). A batch is
    started only if it should end within the time limit, judged by the slowest batch so far: a run under
    an outer timeout then keeps what it made instead of being killed mid-batch."""
    from tqdm.auto import tqdm

    if batch_size < 1 or max_new_tokens < 1:
        raise JetSpecError("batch_size and max_new_tokens must be positive")
    dev = next(hf.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)  # a time limit then cuts a random, not the longest, part
    out: list[list[int] | None] = [None] * len(prompt_ids)
    start = time.perf_counter()
    slowest = 0.0
    bar = tqdm(batches, desc="distill", unit="batch", disable=not progress)
    for bi, batch in enumerate(bar):
        t_batch = time.perf_counter()
        if time_limit_s is not None and t_batch - start + slowest > time_limit_s:
            bar.write(f"[distill] time limit: stopped after {bi} of {len(batches)} batches "
                      f"({t_batch - start:.0f} s; the slowest took {slowest:.0f} s)")
            break
        width = max(len(prompt_ids[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):  # left padding
            p = prompt_ids[i]
            ids[r, width - len(p):] = torch.tensor(p)
            att[r, width - len(p):] = 1
        kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 \
            else dict(do_sample=False)
        torch.manual_seed(seed * 100_003 + bi)
        gen = hf.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max_new_tokens,
                          pad_token_id=pad_id, eos_token_id=sorted(eos) or None, **kw)
        new = gen[:, width:].tolist()
        for r, i in enumerate(batch):
            out[i] = _cut(new[r], eos)
        slowest = max(slowest, time.perf_counter() - t_batch)
        bar.set_postfix(done=sum(o is not None for o in out))
    return out


def distill(target: Target, hf, prompts: list[Prompt], max_new_tokens: int = 320, batch_size: int = 512,
            temperature: float = 0.0, seed: int = 0, time_limit_s: float | None = None,
            max_prompt_tokens: int = 512, progress: bool = True, meta: dict | None = None,
            samples: int = 1) -> DistillData:
    """Encode, generate, and pack the answers of `target` to `prompts` as DistillData. With
    temperature > 0, `samples` passes (seeds seed, seed+1, …) give each prompt several answers."""
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise JetSpecError(f"samples must be 1, or more with a temperature > 0 (got {samples} at T={temperature})")
    t0 = time.perf_counter()
    ids, kinds = encode_prompts(target, prompts, max_prompt_tokens)
    tok = target.tokenizer
    eos = target.eos_ids
    pad = getattr(tok, "pad_token_id", None)
    pad = pad if pad is not None else (min(eos) if eos else 0)
    seqs, plens, ks = [], [], []
    for j in range(samples):
        left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            break
        resp = generate_responses(hf, ids, max_new_tokens, batch_size, pad, eos, temperature, seed + j,
                                  left, progress)
        for p, r, k in zip(ids, resp, kinds):
            if r:  # None: not reached before the time limit; []: cannot happen (max_new_tokens >= 1)
                seqs.append(p + r)
                plens.append(len(p))
                ks.append(k)
    if not seqs:
        raise JetSpecError("no response was generated (time limit too short?)")
    info = dict(meta or {})
    info.update(target=target.name, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, samples=samples,
                prompts_offered=len(prompts), answers=len(seqs),
                ended_with_eos=sum(s[-1] in eos for s in seqs), seconds=round(time.perf_counter() - t0, 1),
                device=str(target.device), dtype=str(target.model.dtype).replace("torch.", ""))
    return DistillData(seqs, plens, ks, tokenizer_fingerprint(tok, target.shape.vocab_size), info)
