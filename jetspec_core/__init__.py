"""jetspec_core: a lossless JetSpec speculative decoder (causal parallel draft head + tree verify).

Import what you need from the submodules; nothing happens at import time.
"""
from .config import DecodeConfig
from .decoder import Decoder, RoundRecord, Summary, summarize
from .errors import JetSpecError

__all__ = ["DecodeConfig", "Decoder", "RoundRecord", "Summary", "summarize", "JetSpecError"]
