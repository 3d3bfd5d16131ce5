"""Drafters: what proposes the per-depth distributions of a round.

`HeadDrafter` runs the causal parallel draft head over the fused target hidden states. The
decoder talks to any object with the same three methods, which is how tests plug in drafters
with known behaviour (an oracle with errors, a deliberately biased one).
"""
from __future__ import annotations

import torch

from .head import DraftHead
from .model import TargetModel


class Drafter:
    """Interface. `taps` are the target layers whose hidden states `start`/`extend` receive."""

    taps: tuple[int, ...] = ()
    max_depth: int = 15

    def start(self, hidden: torch.Tensor | None, committed: list[int]) -> None:
        """Prefill done: hidden (P−1, n·H) of the prompt rows in the target cache."""

    def extend(self, hidden: torch.Tensor | None, committed: list[int]) -> None:
        """A round committed: hidden (m, n·H) of the rows just added to the target cache."""

    def propose(self, anchor: int, committed: list[int]) -> torch.Tensor:
        """Log-probs (D, V) for depths 1..D after the anchor (the last committed token)."""
        raise NotImplementedError


class HeadDrafter(Drafter):
    """The draft head: context features grow by the accepted rows; one forward per round."""

    def __init__(self, head: DraftHead, target: TargetModel):
        self.head, self.target = head, target
        c = head.config
        self.taps = tuple(c.target_layer_ids)
        self.max_depth = c.block_size - 1
        self.ctx: torch.Tensor | None = None  # (C, H) fused context features

    def start(self, hidden, committed):
        self.ctx = None
        self.extend(hidden, committed)

    def extend(self, hidden, committed):
        if hidden is None or hidden.shape[0] == 0:
            return
        with torch.no_grad():
            feat = self.head.fuse(hidden)
        self.ctx = feat if self.ctx is None else torch.cat([self.ctx, feat], dim=0)

    @torch.no_grad()
    def propose(self, anchor, committed):
        c = self.head.config
        dev = self.target.device
        n_ctx = 0 if self.ctx is None else self.ctx.shape[0]
        ctx = self.ctx if self.ctx is not None else torch.zeros(0, c.hidden_size, device=dev)
        ids = torch.full((c.block_size,), c.mask_token_id, device=dev, dtype=torch.long)
        ids[0] = anchor
        block = self.target.embed_tokens(ids).to(self.head.fc.weight.dtype)     # (B, H)
        b_pos = torch.arange(n_ctx, n_ctx + c.block_size, device=dev)
        c_pos = torch.arange(n_ctx, device=dev)
        mask = torch.ones(c.block_size, n_ctx + c.block_size, dtype=torch.bool, device=dev)
        mask[:, n_ctx:] = torch.ones(c.block_size, c.block_size, dtype=torch.bool, device=dev).tril()
        out = self.head(block[None], b_pos[None], ctx[None].to(block.dtype), c_pos[None], mask[None])
        logits = self.target.logits(out[0, 1:].to(self.target.dtype))           # (B−1, V)
        return torch.log_softmax(logits, dim=-1)
