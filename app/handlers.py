"""Event handlers: UI values in, component values out. They validate through `Studio`, stream
runs, and turn every `JetSpecError` into a visible `gr.Error` (never a traceback); anything
else is logged on the server and shown as a short internal-error message.

Generators yield one tuple in the order of `OUTPUTS`; `ui.py` wires components in that order.
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
import traceback
from typing import Callable

import gradio as gr

from jetspec_core.config import DecodeConfig
from jetspec_core.errors import JetSpecError

from . import figures as F
from .session import CPU_SWEEP_MAX_NEW_TOKENS, SWEEP_BUDGETS, Run, Studio, Trace
from .text import agreement_card, live_stats, render_tokens, token_pieces

log = logging.getLogger("jetspec.app")

OUTPUTS = ("out", "plain_out", "stats", "tree", "round", "tau", "hist", "heat", "expected", "timing", "speed",
           "download", "trace")
SETTINGS = ("budget", "width", "depth", "builder", "temperature", "top_k", "top_p", "seed", "max_new_tokens",
            "calibrate")
TEXT_EVERY_S = 0.1     # at most ~10 text updates a second
FIGURES_EVERY_S = 1.0  # the plots redraw about once a second while streaming (the browser's cost), and at the end
PLAIN_PLACEHOLDER = "side by side mode shows plain decoding of the same prompt here"
WARMING = ("preparing {mode}: the first run of this budget and tree setting builds the engine's steps "
           "(on a GPU: compiles kernels and captures CUDA graphs, up to a minute); later runs start at once")


def user_errors(fn: Callable) -> Callable:
    """Wrap a handler (function or generator): JetSpecError → gr.Error with its message."""
    def convert(e: Exception) -> Exception:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, JetSpecError):
            return gr.Error(str(e), title="Cannot do that", print_exception=False)
        log.error("internal error in %s:\n%s", fn.__name__, traceback.format_exc())
        return gr.Error(f"internal error ({type(e).__name__}); the server log has the details. "
                        "Try again or change the settings.", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*a, **k):
            try:
                yield from fn(*a, **k)
            except Exception as e:  # noqa: BLE001 - every error becomes a message
                raise convert(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except Exception as e:  # noqa: BLE001
            raise convert(e) from None
    return wrapper


class Handlers:
    """The app's behaviour, one method per event."""

    def __init__(self, studio: Studio):
        self.studio = studio

    # ------------------------------------------------------------- helpers
    def _configs(self, mode, values: dict) -> dict[str, DecodeConfig]:
        """Validated configs of the runs a UI mode makes (side by side: plain, then JetSpec)."""
        self.studio.check_mode(mode)
        runs = ("plain", "jetspec") if mode == "side_by_side" else (mode,)
        return {m: self.studio.config(m, **values) for m in runs}

    def _tree(self, run: Run | None, index: int | None = None):
        if run is None or not run.records:
            return F.empty_figure("draft tree: press Generate", height=440)
        rec = run.records[-1 if index is None else index]
        title = (f"Step {rec.index}: plain decoding has no draft tree (1 node)" if run.mode == "plain" else None)
        return F.tree_figure(rec, self.studio.token_text, title=title)

    def _view(self, trace: Trace, heavy: bool, download=None, current: Run | None = None,
              note: str | None = None) -> tuple:
        """Component values in `OUTPUTS` order; the light view (text, stats) skips the plots. note:
        the line under the stats (default: "running <mode>…" while a run is on)."""
        s = self.studio
        main = trace.primary
        side = trace.mode == "side_by_side"
        skip = gr.skip()
        out = render_tokens(token_pieces(main.records, s.decode, plain=main.mode == "plain") if main else [],
                            "waiting for plain decoding to finish…" if side else "")
        plain = trace.runs.get("plain") if side else None
        plain_html = (render_tokens(token_pieces(plain.records, s.decode, plain=True), "")
                      if plain else render_tokens([], PLAIN_PLACEHOLDER))
        cur = current or main
        speed = agree = None
        if side and "jetspec" in trace.runs and trace.runs["jetspec"].records and plain and plain.records:
            spec = trace.runs["jetspec"]
            speed = F.speedup(spec.records, plain.records)
            agree = agreement_card(plain.token_ids, spec.token_ids, spec.cfg.greedy, _done(spec), s.token_text)
        stats = live_stats(cur.records if cur else [], cur.mode if cur else "", speed, agreement=agree,
                           note=note if note is not None else f"running {cur.mode}…" if cur and not _done(cur) else "",
                           run_id=trace.id,
                           state="done" if download is not None else "running")
        if not heavy:
            return (out, plain_html, stats) + (skip,) * 8 + (download or skip, trace)
        recs = main.records if main else []
        n = len(recs)
        speed_fig = F.throughput_figure({m: r.records for m, r in trace.runs.items()})
        if not n:  # side by side, plain still running: only the throughput plot has news
            return (out, plain_html, stats) + (skip,) * 7 + (speed_fig, download or skip, trace)
        slider = gr.Slider(minimum=0, maximum=max(n - 1, 1), value=n - 1, step=1,
                           interactive=n > 1, label=f"round (0–{n - 1})")
        return (out, plain_html, stats, self._tree(main), slider, F.tau_figure(recs), F.accept_histogram(recs),
                F.acceptance_heatmap(recs), F.expected_vs_realised(recs), F.time_split_figure(recs), speed_fig,
                download or skip, trace)

    # ------------------------------------------------------------- events
    @user_errors
    def generate(self, prompt, mode, budget, width, depth, builder, temperature, top_k, top_p, seed,
                 max_new_tokens, calibrate=True):
        """Stream a generation (JetSpec, plain, or plain then JetSpec side by side)."""
        s = self.studio
        values = dict(zip(SETTINGS, (budget, width, depth, builder, temperature, top_k, top_p, seed, max_new_tokens,
                                     calibrate)))
        cfgs = self._configs(mode, values)
        ids = s.encode(prompt)
        for c in cfgs.values():
            s.check(ids, c)
        trace = Trace(prompt=prompt, mode=mode)
        for m, cfg in cfgs.items():
            run = Run(m, cfg, ids)
            trace.runs[m] = run
            last_text = last_fig = 0.0
            if s.warming(run):  # say why the first round takes a while
                yield self._view(trace, False, current=run, note=WARMING.format(mode=m))
            for rec in s.stream(run):
                now = time.perf_counter()
                heavy = now - last_fig >= FIGURES_EVERY_S
                if rec.finished or heavy or now - last_text >= TEXT_EVERY_S:
                    last_text = now
                    last_fig = now if heavy else last_fig
                    yield self._view(trace, heavy, current=run)
            if run.stopped == "timeout":
                gr.Warning(f"{m}: stopped at the request time limit ({s.limits.timeout_s:.0f} s)")
        path = str(s.write_trace(trace))
        yield self._view(trace, True, download=gr.DownloadButton(value=path, interactive=True))

    @user_errors
    def select_round(self, index, trace: Trace | None):
        """Draw the tree of the round the slider points at."""
        run = trace.primary if isinstance(trace, Trace) else None
        if run is None or not run.records:
            return F.empty_figure("draft tree: press Generate", height=440)
        i = min(max(int(round(float(index or 0))), 0), len(run.records) - 1)
        return self._tree(run, i)

    @user_errors
    def sweep(self, prompt, budget, width, depth, builder, temperature, top_k, top_p, seed, max_new_tokens,
              calibrate=True, progress=gr.Progress()):
        """Run the prompt at budgets 8..256 (plus a plain baseline); plot τ and tokens/s."""
        s = self.studio
        s.check_mode("jetspec")
        values = dict(zip(SETTINGS, (budget, width, depth, builder, temperature, top_k, top_p, seed, max_new_tokens,
                                     calibrate)))
        cfg0 = s.config("plain", **values)
        if s.device.type == "cpu":
            values["max_new_tokens"] = min(cfg0.max_new_tokens, CPU_SWEEP_MAX_NEW_TOKENS)
        ids = s.encode(prompt)
        plain_cfg = s.config("plain", **values)
        cfgs = [s.config("jetspec", **{**values, "budget": b}) for b in SWEEP_BUDGETS]
        for c in (plain_cfg, *cfgs):
            s.check(ids, c)
        total = len(cfgs) + 1
        progress((0, total), desc="plain baseline", unit="runs")
        plain = s.run("plain", ids, plain_cfg)
        plain_tps = plain.summary()["tokens_per_s"]
        rows = []
        yield F.sweep_figure(rows, plain_tps)
        for i, cfg in enumerate(cfgs):
            progress((i + 1, total), desc=f"budget {cfg.budget}", unit="runs")
            summ = s.run("jetspec", ids, cfg).summary()
            rows.append({"budget": cfg.budget, "tau": summ["tau"], "tokens_per_s": summ["tokens_per_s"]})
            yield F.sweep_figure(rows, plain_tps)


def _done(run: Run) -> bool:
    return bool(run.records and (run.records[-1].finished or run.stopped))


def make_api(studio: Studio) -> Callable[..., dict]:
    """The `generate` API endpoint. Its signature (names, types, defaults) is what gradio_client
    sees; the defaults are this server's device-dependent UI defaults."""
    d = studio.defaults

    def generate(prompt: str, mode: str = "jetspec", budget: int = d.budget, width: int = d.width,
                 depth: int = d.depth, builder: str = d.builder, temperature: float = d.temperature,
                 top_k: int = d.top_k, top_p: float = d.top_p, seed: int = d.seed,
                 max_new_tokens: int = d.max_new_tokens, calibrate: bool = d.calibrate) -> dict:
        """Decode one prompt. mode: jetspec, plain or side_by_side. Returns a JSON object with text,
        token_ids, tau, expected_tau, tokens_per_s, rounds, tpf, time_split, finished, config (and,
        side by side, plain and speedup). calibrate: rank tree nodes by the head's calibration.json
        (when it has one) instead of raw draft log-probs — the output is the same either way."""
        return studio.generate(prompt, mode, budget=budget, width=width, depth=depth, builder=builder,
                               temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                               max_new_tokens=max_new_tokens, calibrate=calibrate)

    return user_errors(generate)
