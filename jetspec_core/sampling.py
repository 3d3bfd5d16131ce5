"""Warping of target logits into the distribution that is sampled from.

One function, shared by plain sampling and the speculative walk, so both draw from the very
same distribution: temperature, then top-k, then top-p (the order Hugging Face applies them).
"""
from __future__ import annotations

import torch


def warp(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits (..., V) → probabilities (..., V) in fp32. temperature must be > 0."""
    x = logits.float() / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sx, idx = torch.sort(x, dim=-1, descending=True)
        sp = torch.softmax(sx, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keep >= 1 token)
        before = torch.cumsum(sp, dim=-1) - sp
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.softmax(x, dim=-1)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def sample(probs: torch.Tensor, gen: torch.Generator) -> int:
    """One draw from probs (V,)."""
    return int(torch.multinomial(probs, 1, generator=gen))
