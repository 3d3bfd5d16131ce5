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
    calibration = None  # a jetspec_core.calibration.Calibration for the tree builders, if any

    def start(self, hidden: torch.Tensor | None, committed: list[int]) -> None:
        """Prefill done: hidden (P−1, n·H) of the prompt rows in the target cache."""

    def extend(self, hidden: torch.Tensor | None, committed: list[int]) -> None:
        """A round committed: hidden (m, n·H) of the rows just added to the target cache."""

    def propose(self, anchor: int, committed: list[int], depth: int | None = None) -> torch.Tensor:
        """Log-probs (D, V) for depths 1..D after the anchor (the last committed token); with
        `depth`, only the first min(depth, max_depth) rows (the tree will not use more)."""
        raise NotImplementedError


class HeadDrafter(Drafter):
    """The draft head: context features grow by the accepted rows; one forward per round. The
    context rows' keys and values (per head layer) are computed once, when the rows arrive."""

    def __init__(self, head: DraftHead, target: TargetModel):
        self.head, self.target = head, target
        self.calibration = getattr(head, "calibration", None)
        c = head.config
        self.taps = tuple(c.target_layer_ids)
        self.max_depth = c.block_size - 1
        self.n_ctx = 0
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (1, Hkv, C, D)

    def start(self, hidden, committed):
        self.n_ctx, self.kv = 0, None
        self.extend(hidden, committed)

    def extend(self, hidden, committed):
        if hidden is None or hidden.shape[0] == 0:
            return
        with torch.no_grad():
            feat = self.head.fuse(hidden)                                           # (m, H)
            pos = torch.arange(self.n_ctx, self.n_ctx + feat.shape[0], device=feat.device)
            new = self.head.context_kv(feat[None], pos[None])
        self.kv = new if self.kv is None else [(torch.cat([k, k2], dim=2), torch.cat([v, v2], dim=2))
                                               for (k, v), (k2, v2) in zip(self.kv, new)]
        self.n_ctx += feat.shape[0]

    @torch.no_grad()
    def propose(self, anchor, committed, depth=None):
        c = self.head.config
        dev = self.target.device
        dt = self.head.fc.weight.dtype
        # the block is causal: slots after the last wanted depth change nothing before it, so a
        # shallow tree (small budget) runs a shorter block and fewer lm_head rows — same values
        m = c.block_size if depth is None else 1 + max(1, min(int(depth), c.block_size - 1))
        n_ctx = self.n_ctx
        kv = self.kv
        if kv is None:  # no context yet (a one-token prompt): empty keys and values
            empty = torch.zeros(1, c.num_key_value_heads, 0, c.head_dim, device=dev, dtype=dt)
            kv = [(empty, empty)] * c.num_hidden_layers
        ids = torch.full((m,), c.mask_token_id, device=dev, dtype=torch.long)
        ids[0] = anchor
        block = self.target.embed_tokens(ids).to(dt)                                # (m, H)
        b_pos = torch.arange(n_ctx, n_ctx + m, device=dev)
        mask = torch.ones(m, n_ctx + m, dtype=torch.bool, device=dev)
        mask[:, n_ctx:] = torch.ones(m, m, dtype=torch.bool, device=dev).tril()
        out = self.head(block[None], b_pos[None], None, None, mask[None], ctx_kv=kv)
        logits = self.target.logits(out[0, 1:].to(self.target.dtype))           # (m−1, V)
        return torch.log_softmax(logits, dim=-1)
