"""The frozen target as a batched teacher: an HF model holding the target's weights.

Our own forward (`model.py`) is batch-1 with a static cache, made for decoding. Training needs
batched work over whole sequences: `generate` for self-distillation and one forward per step for
the tapped hidden states and the soft labels. Both come from the HF model of the same
architecture, built from the loaded target's state (no second load from disk or hub).
"""
from __future__ import annotations

import torch

from ..errors import JetSpecError
from ..target import Target


def hf_state_from_target(target: Target) -> dict[str, torch.Tensor]:
    """Our TargetModel's parameters under their Hugging Face names."""
    m = target.model
    state = {"model.embed_tokens.weight": m.embed, "model.norm.weight": m.norm}
    for i, layer in enumerate(m.layers):
        for name, p in layer.items():  # e.g. self_attn_q_proj_weight -> self_attn.q_proj.weight
            dotted = name.replace("_weight", ".weight").replace("_bias", ".bias")
            dotted = dotted.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
            state[f"model.layers.{i}.{dotted}"] = p
    if m.lm_head is not m.embed:
        state["lm_head.weight"] = m.lm_head
    return state


def teacher_model(target: Target, dtype: torch.dtype | None = None):
    """An HF causal LM with the target's weights on the target's device (eval, no grad)."""
    from transformers import AutoModelForCausalLM

    cfg = target.hf_config
    hf = AutoModelForCausalLM.from_config(cfg)
    missing, unexpected = hf.load_state_dict(hf_state_from_target(target), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise JetSpecError(f"cannot rebuild the HF teacher: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(cfg, "tie_word_embeddings", False) or target.model.lm_head is target.model.embed:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    hf = hf.to(device=target.device, dtype=dtype or target.model.dtype).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    return hf


@torch.no_grad()
def teacher_forward(hf, ids: torch.Tensor, attention_mask: torch.Tensor | None, taps: list[int]):
    """ids, attention_mask (b, n), right-padded. Returns the tapped hidden states (b, n, len(taps)·H)
    — outputs of decoder layer L for L in taps, i.e. HF `hidden_states[L + 1]` — and the final-normed
    hidden (b, n, H) whose lm_head gives the target's next-token logits.

    attention_mask None: every row's tokens come before its padding (right padding), so causal
    attention alone keeps real positions from seeing pads — their outputs are those of the masked
    forward (padded positions' are not, and must not be used) — and HF can take its mask-free
    causal attention path instead of materialising a (b, 1, n, n) padding mask."""
    num_layers = hf.config.num_hidden_layers
    if any(not 0 <= t < num_layers - 1 for t in taps):
        # hidden_states[num_layers] is after the final norm in HF models, not the layer output
        raise JetSpecError(f"tap layers {taps} must lie in 0..{num_layers - 2} for training")
    out = hf.model(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    return torch.cat([hs[t + 1] for t in taps], dim=-1), out.last_hidden_state
