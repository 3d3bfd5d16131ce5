"""Typed, validated settings of one generation. Each default is declared here once.

The CLI and the app build `DecodeConfig` objects and never restate the defaults.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import JetSpecError

MODES = ("jetspec", "plain")
BUILDERS = ("accum_logp", "topb", "top2gap", "chain")
MAX_BUDGET = 256
MAX_NEW_TOKENS = 4096


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise JetSpecError(msg)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode one prompt.

    budget counts the root (budget 1 = no draft tokens); depth is capped by the head's
    block_size - 1 at run time; width is K, the candidates per depth.
    """

    mode: str = "jetspec"
    budget: int = 32
    width: int = 7
    depth: int = 15
    builder: str = "accum_logp"
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True
    calibrate: bool = True    # rank tree nodes by the head's calibration.json when it has one


    def __post_init__(self) -> None:
        _check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _check(_is_int(self.budget) and 1 <= self.budget <= MAX_BUDGET,
               f"budget must be an integer from 1 to {MAX_BUDGET}, got {self.budget!r}")
        _check(_is_int(self.width) and 1 <= self.width <= 64,
               f"width must be an integer from 1 to 64, got {self.width!r}")
        _check(_is_int(self.depth) and 1 <= self.depth <= 64,
               f"depth must be an integer from 1 to 64, got {self.depth!r}")
        _check(self.builder in BUILDERS,
               f"builder must be one of {', '.join(BUILDERS)}, got {self.builder!r}")
        _check(_is_int(self.max_new_tokens) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
               f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {self.max_new_tokens!r}")
        _check(_is_num(self.temperature) and 0.0 <= self.temperature <= 10.0,
               f"temperature must be a number from 0 to 10, got {self.temperature!r}")
        _check(_is_int(self.top_k) and self.top_k >= 0,
               f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        _check(_is_num(self.top_p) and 0.0 < self.top_p <= 1.0,
               f"top_p must be a number in (0, 1], got {self.top_p!r}")
        _check(_is_int(self.seed) and 0 <= self.seed < 2**63,
               f"seed must be a non-negative integer, got {self.seed!r}")
        _check(isinstance(self.calibrate, bool), f"calibrate must be true or false, got {self.calibrate!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
