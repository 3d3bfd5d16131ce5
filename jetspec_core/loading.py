"""Load a target and a draft head together, checked against each other: what the CLI, the app
and the benchmarks call so that they all resolve defaults the same way."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .decoder import Decoder
from .drafter import HeadDrafter
from .errors import JetSpecError
from .head import DraftHead, HeadConfig
from .target import Target, load_target

DEFAULT_HEAD = Path(__file__).resolve().parent.parent / "assets" / "head"
RANDOM_HEAD = "random"
# The mask token of our heads: a token the chat model never emits. SmolLM2's `<empty_output>`
# (id 16) marks empty Jupyter outputs in its pre-training data and never appears in chat answers.
MASK_TOKEN_TEXT = "<empty_output>"


def pick_mask_token(target: Target) -> int:
    tok = target.tokenizer
    tid = tok.convert_tokens_to_ids(MASK_TOKEN_TEXT) if hasattr(tok, "convert_tokens_to_ids") else None
    if isinstance(tid, int) and tid != getattr(tok, "unk_token_id", None) and 0 <= tid < target.shape.vocab_size:
        return tid
    return target.shape.vocab_size - 1


def random_head(target: Target, num_layers: int = 2, seed: int = 0) -> DraftHead:
    """An untrained head of the default shape (for tests and for trying the CLI)."""
    torch.manual_seed(seed)
    cfg = HeadConfig.for_target(target.shape, pick_mask_token(target), num_layers=num_layers)
    return DraftHead(cfg).to(device=target.device, dtype=target.model.dtype).eval()


def load_head(spec: str | None, target: Target) -> tuple[DraftHead | None, str]:
    """Resolve --head: None → the shipped head when it exists; 'random' → untrained; 'none' →
    plain decoding only; else a folder. Returns (head or None, a description)."""
    if spec in (None, "") and (DEFAULT_HEAD / "model.safetensors").is_file():
        spec = str(DEFAULT_HEAD)
    if spec in (None, "", "none"):
        return None, "none (plain decoding only)"
    if spec == RANDOM_HEAD:
        print("WARNING: using a RANDOMLY INITIALISED draft head: acceptance will be near zero. "
              "Train one with `python -m jetspec_core train` or pass --head FOLDER.", file=sys.stderr)
        return random_head(target), "random (untrained)"
    head = DraftHead.load(spec, device=target.device, dtype=target.model.dtype)
    head.config.check_fits(target.shape)
    return head, str(spec)


@dataclass
class Loaded:
    target: Target
    decoder: Decoder
    head_desc: str


ENGINES = ("auto", "fast", "reference")


def make_decoder(target: Target, drafter, engine: str = "auto") -> Decoder:
    """'auto': the graphed engine (`jetspec_core.engine.FastDecoder`) on CUDA, the reference
    `Decoder` on CPU; 'fast' / 'reference' force one. Both have the same `stream` interface."""
    if engine not in ENGINES:
        raise JetSpecError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    spread = len({p.device for p in target.model.parameters()}) > 1  # an HF device_map
    if spread and engine == "reference":
        raise JetSpecError("a target spread over several devices runs on the fast engine only (engine auto)")
    if engine == "fast" or spread or (engine == "auto" and target.device.type == "cuda"):
        from .engine import FastDecoder

        return FastDecoder(target, drafter)
    return Decoder(target, drafter)


def load_decoder(target: str | None = None, head: str | None = None, device: str | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False, engine: str = "auto") -> Loaded:
    t = load_target(target, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    h, desc = load_head(head, t)
    return Loaded(t, make_decoder(t, HeadDrafter(h, t.model) if h is not None else None, engine), desc)
