"""Per-request generation for the app: input checks, limits, a fresh decoder per request, runs
and their traces. No Gradio here: the handlers turn `JetSpecError` into messages.

The model weights are loaded once and shared read-only. Everything a request mutates (KV cache,
draft context, records) belongs to that request: with the reference engine `Studio.stream`
builds a new `Decoder` (and a new `HeadDrafter` over the shared head) every time, so concurrent
or cancelled requests never see each other's state. The graphed engine (`FastDecoder`, the
default on CUDA) owns static buffers and captured graphs that are too costly to build per
request: one instance serves every request, one request at a time, under a lock that a
finished, stopped or abandoned stream releases.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import shutil
import tempfile
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch

from jetspec_core.config import DecodeConfig
from jetspec_core.decoder import Decoder, RoundRecord, summarize
from jetspec_core.drafter import HeadDrafter
from jetspec_core.errors import JetSpecError
from jetspec_core.loading import Loaded

from .text import first_difference

log = logging.getLogger("jetspec.app")

MODES = ("jetspec", "plain", "side_by_side")
MODE_LABELS = {"jetspec": "JetSpec", "plain": "plain", "side_by_side": "side by side"}
SWEEP_BUDGETS = (8, 16, 32, 64, 128, 256)
CPU_SWEEP_MAX_NEW_TOKENS = 32
_ALLOWED_CONTROL = {"\n", "\t", "\r"}
_OOM = tuple(c for c in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if c)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. CPU limits keep a 2-core machine responsive."""

    max_prompt_chars: int
    max_prompt_tokens: int
    max_new_tokens: int
    timeout_s: float

    @staticmethod
    def for_device(device_type: str) -> "Limits":
        if device_type == "cuda":
            return Limits(max_prompt_chars=32_000, max_prompt_tokens=8192, max_new_tokens=4096, timeout_s=600.0)
        return Limits(max_prompt_chars=32_000, max_prompt_tokens=2048, max_new_tokens=512, timeout_s=300.0)


def ui_defaults(device_type: str) -> DecodeConfig:
    """Device-dependent starting values of the UI and the API (everything else: DecodeConfig's).

    Both use the `topb` builder (the budget's best nodes by cumulative draft log-prob) rather than
    the library's default `accum_logp` (the paper's builder, kept there for comparable figures),
    which gives a popped node all K children at once and spends nodes on unlikely siblings. The
    offline replay of the shipped head's drafts (`bench replay`, 8 + 8 prompts, 192 tokens, CPU fp32,
    docs/measured/cpu-replay-8+8-stage7.log) ranks topb first at every budget: τ HumanEval / MT-Bench
    at budget 16 topb K = 7 3.28 / 2.46 against accum_logp 2.83 / 2.26; at budget 64 topb K = 16
    3.78 / 2.82 against 3.65 / 2.69 (and on the H200 over all 164 + 80 prompts at budget 256:
    4.45 / 3.35 against 4.20 / 3.13)."""
    if device_type == "cuda":
        # the H200's fastest budget (docs/engine.md): 64 (2.84x / 2.26x its plain decoding in the
        # default batch-invariant mode, against 1.91x / 1.56x at 256). Raw draft scores: there the
        # calibrated tree costs 0.06 ms more per round (tree step 0.196 against 0.134 ms) for a τ
        # that moved by +0 / +0.02, 2.75x / 2.21x in all (docs/measured/h200-speed-s11-fused*.log)
        return replace(DecodeConfig(), budget=64, builder="topb", width=16, max_new_tokens=256, calibrate=False)
    # measured on a 2-core CPU: a 16-node verify costs ~2 plain steps; larger trees do not pay
    return replace(DecodeConfig(), budget=16, builder="topb", max_new_tokens=64)


def _as_int(v):
    """UI sliders send floats such as 16.0: accept integral finite floats, leave the rest to
    DecodeConfig's checks (which name the field and the allowed range)."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return v


def _as_float(v):
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


@dataclass
class Run:
    """One decoding of one prompt in one mode; records grow while it streams."""

    mode: str                     # "jetspec" or "plain"
    cfg: DecodeConfig
    prompt_ids: list[int]
    records: list[RoundRecord] = field(default_factory=list)
    stopped: str | None = None    # "timeout" when the request time limit cut it short

    @property
    def token_ids(self) -> list[int]:
        return [t for r in self.records for t in r.new_tokens]

    @property
    def prefill_s(self) -> float:
        if not self.records:
            return 0.0
        first = self.records[0]
        return first.elapsed_s - sum(first.timings.values())

    def summary(self) -> dict:
        s = summarize(self.cfg.mode, self.records, self.prefill_s).to_dict()
        if self.stopped:
            s["finished"] = self.stopped
        return s


@dataclass
class Trace:
    """Everything one generation produced (what the round slider and the download read)."""

    prompt: str
    mode: str = "jetspec"         # the UI mode: jetspec, plain or side_by_side
    runs: dict[str, Run] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def primary(self) -> Run | None:
        """The run the tree and the charts show: JetSpec's, or plain's in plain mode."""
        return self.runs.get("plain" if self.mode == "plain" else "jetspec")


class Studio:
    """The loaded model plus everything requests need: limits, defaults, a decoder factory."""

    def __init__(self, loaded: Loaded, limits: Limits | None = None, trace_dir: str | Path | None = None):
        self.target = loaded.target
        drafter = loaded.decoder.drafter
        self.head = drafter.head if isinstance(drafter, HeadDrafter) else None
        # a stateful engine (anything but the reference Decoder) is shared, one request at a time
        self.engine = None if type(loaded.decoder) is Decoder else loaded.decoder
        self._engine_lock = threading.Lock()
        self.head_desc = loaded.head_desc
        self.device = self.target.device
        self.limits = limits or Limits.for_device(self.device.type)
        self.defaults = ui_defaults(self.device.type)
        if trace_dir is None:
            trace_dir = tempfile.mkdtemp(prefix="jetspec_traces_")
            atexit.register(shutil.rmtree, trace_dir, ignore_errors=True)
        self.trace_dir = Path(trace_dir)

    # ------------------------------------------------------------- facts for the UI
    @property
    def trained_head(self) -> bool:
        return self.head is not None and not self.head_desc.startswith("random")

    def banners(self) -> list[tuple[str, str]]:
        out = []
        if self.head is None:
            out.append(("no draft head: plain decoding only (start with --head FOLDER for JetSpec)", "warn"))
        elif not self.trained_head:
            out.append(("no trained head: untrained random head, acceptance will be ~1 (τ ≈ 1, no speedup). "
                        "Start with --head FOLDER to use a trained one.", "warn"))
        if self.device.type == "cpu":
            out.append((f"running on CPU: CPU-friendly defaults (budget {self.defaults.budget}, "
                        f"{self.defaults.max_new_tokens} new tokens); larger trees pay off on a GPU", "info"))
        engine = "graphed engine" if self.engine is not None else "reference engine"
        if self.engine is not None:
            info = self.engine.describe()
            if info.get("batch_invariant"):
                engine += " · batch-invariant kernels (greedy JetSpec = plain decoding, token for token)"
            elif self.device.type == "cuda" and self.target.model.dtype != torch.float32:
                why = info.get("batch_invariant_note") or "off (JETSPEC_BATCH_INVARIANT=0)"
                engine += (f" · batch-invariant mode {why}: greedy JetSpec may differ from plain at"
                           " bf16 near-ties")
        scores = ""
        if self.head is not None:
            scores = (" · tree scores: calibrated (calibration.json)" if getattr(self.head, "calibration", None)
                      else " · tree scores: raw draft log-probs")
        out.append((f"target: {self.target.name} · head: {self.head_desc}{scores} · device: {self.device} · {engine}",
                    "info"))
        return out

    def token_text(self, token_id: int) -> str:
        return self.target.token_text(int(token_id))

    def decode(self, ids: list[int]) -> str:
        return self.target.decode(ids)

    # ------------------------------------------------------------- input checks
    def config(self, mode: str, **values) -> DecodeConfig:
        """A validated DecodeConfig for one run mode ("jetspec" or "plain"); raises JetSpecError."""
        ints = ("budget", "width", "depth", "top_k", "seed", "max_new_tokens")
        vals = {k: (_as_int(v) if k in ints else _as_float(v) if k in ("temperature", "top_p") else v)
                for k, v in values.items() if v is not None}
        # this server's limit first (on the asked or default value), then DecodeConfig's general checks
        cap, asked = self.limits.max_new_tokens, vals.get("max_new_tokens", DecodeConfig.max_new_tokens)
        if isinstance(asked, int) and asked > cap:
            raise JetSpecError(f"max_new_tokens is limited to {cap} on this server, got {asked}")
        return DecodeConfig(mode=mode, **vals)

    def check_mode(self, mode) -> str:
        if mode not in MODES:
            raise JetSpecError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "plain" and self.head is None:
            raise JetSpecError("this server has no draft head (--head none): use mode plain")
        return mode

    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt after the length and character checks; raises JetSpecError."""
        if not isinstance(prompt, str):
            raise JetSpecError(f"the prompt must be text, got {type(prompt).__name__}")
        if all(c.isspace() or unicodedata.category(c) == "Cf" for c in prompt):   # Cf: zero-width and the like
            raise JetSpecError("the prompt is empty (or only spaces and invisible characters); type some text")
        if len(prompt) > self.limits.max_prompt_chars:
            raise JetSpecError(f"the prompt has {len(prompt):,} characters; the limit is "
                               f"{self.limits.max_prompt_chars:,}")
        bad = next((c for c in prompt if c not in _ALLOWED_CONTROL and unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            raise JetSpecError(f"the prompt contains a control character (U+{ord(bad):04X}); remove it")
        ids = self.target.encode_prompt(prompt)
        cap = min(self.limits.max_prompt_tokens, self.target.max_context)
        if len(ids) > cap:
            raise JetSpecError(f"the prompt is {len(ids):,} tokens long; this server takes at most {cap:,} "
                               f"(the model's context is {self.target.max_context:,})")
        return ids

    def check(self, ids: list[int], cfg: DecodeConfig) -> None:
        """The decoder's own checks (context room, head present) before anything streams."""
        self.new_decoder(cfg.mode).check(ids, cfg)

    # ------------------------------------------------------------- decoding
    def new_decoder(self, mode: str) -> Decoder:
        """A decoder that belongs to one request (its drafter holds that request's context)."""
        if mode == "jetspec" and self.head is not None:
            return Decoder(self.target, HeadDrafter(self.head, self.target.model))
        return Decoder(self.target, None)

    def warming(self, run: Run) -> bool:
        """Whether `run` waits before its first round while the shared engine builds its steps
        (first use of a budget/builder/width on a GPU: Triton compiles and CUDA-graph captures)."""
        ready = getattr(self.engine, "ready", None)
        return ready is not None and not ready(len(run.prompt_ids), run.cfg)

    def stream(self, run: Run) -> Iterator[RoundRecord]:
        """Decode `run`, appending and yielding its records; stops at the time limit. GPU (or
        host) out-of-memory becomes a JetSpecError."""
        if self.engine is None:
            yield from self._stream(self.new_decoder(run.mode), run)
            return
        if not self._engine_lock.acquire(timeout=self.limits.timeout_s):
            raise JetSpecError("the decoder is busy with another request; try again in a moment")
        try:
            yield from self._stream(self.engine, run)
        finally:
            self._engine_lock.release()

    def _stream(self, dec: Decoder, run: Run) -> Iterator[RoundRecord]:
        start = time.perf_counter()
        try:
            for rec in dec.stream(run.prompt_ids, run.cfg):
                run.records.append(rec)
                yield rec
                if rec.finished is None and time.perf_counter() - start > self.limits.timeout_s:
                    run.stopped = "timeout"
                    log.warning("%s run stopped at the time limit after %d rounds", run.mode, len(run.records))
                    return
        except GeneratorExit:  # Stop pressed or the client went away: this request's state is dropped
            log.info("%s run closed after %d rounds (stopped or disconnected)", run.mode, len(run.records))
            raise
        except (*_OOM, MemoryError) as e:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise JetSpecError(f"out of memory on {self.device} ({type(e).__name__}); lower the budget, "
                               "max_new_tokens or the prompt length") from e

    def run(self, mode: str, ids: list[int], cfg: DecodeConfig) -> Run:
        run = Run(mode, cfg, ids)
        for _ in self.stream(run):
            pass
        return run

    # ------------------------------------------------------------- results
    def run_dict(self, run: Run) -> dict:
        return {"text": self.decode(run.token_ids), "prompt_tokens": len(run.prompt_ids),
                "config": run.cfg.to_dict(), **run.summary()}

    def generate(self, prompt, mode: str = "jetspec", **values) -> dict:
        """The API: one prompt, all settings optional, a JSON-ready answer. Side by side adds
        "plain" (the plain run) and "speedup" (JetSpec tok/s ÷ plain tok/s)."""
        mode = self.check_mode(mode)
        settings = {**self.defaults.to_dict(), **{k: v for k, v in values.items() if v is not None}}
        settings.pop("mode")
        settings.pop("stop_at_eos")
        ids = self.encode(prompt)
        cfgs = {m: self.config(m, **settings) for m in (("plain", "jetspec") if mode == "side_by_side" else (mode,))}
        for c in cfgs.values():
            self.check(ids, c)
        runs = {m: self.run(m, ids, c) for m, c in cfgs.items()}
        main = runs.get("jetspec") or runs["plain"]
        out = {**self.run_dict(main), "mode": mode, "head": self.head_desc, "target": self.target.name,
               "device": str(self.device)}
        if mode == "side_by_side":
            out["plain"] = self.run_dict(runs["plain"])
            p = out["plain"]["tokens_per_s"]
            out["speedup"] = out["tokens_per_s"] / p if p > 0 else None
            out["first_difference"] = first_difference(runs["plain"].token_ids, main.token_ids)
        return out

    def write_trace(self, trace: Trace, keep: int = 200) -> Path:
        """The full trace of a generation as a JSON file (for the download button)."""
        doc = {"prompt": trace.prompt, "target": self.target.name, "head": self.head_desc,
               "device": str(self.device), "runs": {}}
        for mode, run in trace.runs.items():
            doc["runs"][mode] = {**self.run_dict(run), "prompt_ids": run.prompt_ids,
                                 "rounds_trace": [r.to_dict() for r in run.records]}
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.trace_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - keep + 1)]:
            p.unlink(missing_ok=True)
        path = self.trace_dir / f"jetspec-trace-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(doc))
        return path
