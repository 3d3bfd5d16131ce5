"""The Gradio layout: components and the wiring of their events, nothing else.

All decoding events share one concurrency group ("decoder"), so the device runs at most
`concurrency` of them at a time and later users wait in the queue (and see their place in it).
"""
from __future__ import annotations

import gradio as gr

from jetspec_core.config import BUILDERS, MAX_BUDGET

from . import figures as F
from .handlers import OUTPUTS, Handlers, make_api
from .session import MODE_LABELS, Studio
from .text import LEGEND, banner, render_tokens

EXAMPLES = [
    ("code", "Write a Python function that returns the n-th Fibonacci number."),
    ("code", "Explain what this does: [x * x for x in range(10) if x % 2 == 0]"),
    ("math", "What is 17 times 23? Explain step by step."),
    ("math", "A train travels 60 km in 45 minutes. What is its average speed in km/h?"),
    ("chat", "Give me three tips for staying focused while studying."),
    ("chat", "Write a short, friendly message inviting a colleague to lunch."),
]
DECODER_GROUP = "decoder"


def build_ui(studio: Studio, concurrency: int = 1) -> gr.Blocks:
    h = Handlers(studio)
    d = studio.defaults
    max_depth = studio.head.config.block_size - 1 if studio.head is not None else d.depth
    with gr.Blocks(title="JetSpec Studio", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# JetSpec Studio\nWatch a JetSpec speculative decoder work round by round: the draft "
                    "tree the head proposed, the path the target accepted, and the speed against plain decoding.")
        gr.HTML("".join(banner(text, kind) for text, kind in studio.banners()), elem_id="banners")
        trace = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, max_lines=12, elem_id="prompt",
                                    placeholder="Type a prompt, or pick an example below")
                gr.Examples([[p] for _, p in EXAMPLES], inputs=[prompt], label="Examples: code, math, chat",
                            example_labels=[f"{k}: {p[:48]}" for k, p in EXAMPLES])
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    sweep = gr.Button("Budget sweep (8 → 256)", elem_id="sweep")
            with gr.Column(scale=2):
                mode = gr.Radio([(MODE_LABELS[m], m) for m in MODE_LABELS],
                                value="plain" if studio.head is None else "jetspec", label="Mode", elem_id="mode")
                budget = gr.Slider(1, MAX_BUDGET, value=d.budget, step=1, label="Draft budget (tree nodes, root included)",
                                   elem_id="budget")
                with gr.Row():
                    width = gr.Slider(1, 32, value=d.width, step=1, label="Width K", elem_id="width")
                    depth = gr.Slider(1, max(max_depth, 1), value=min(d.depth, max_depth), step=1, label="Depth",
                                      elem_id="depth")
                builder = gr.Dropdown(list(BUILDERS), value=d.builder, label="Tree builder", elem_id="builder")
                has_cal = getattr(studio.head, "calibration", None) is not None
                calibrate = gr.Checkbox(value=d.calibrate and has_cal, interactive=has_cal, elem_id="calibrate",
                                        label="Calibrated tree scores" + ("" if has_cal else " (this head has none)"),
                                        info="rank nodes by the chance they are accepted (the head's calibration."
                                             "json), not by raw draft log-probs; same output either way")
                with gr.Accordion("Sampling and length", open=False):
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=d.temperature, step=0.05, label="Temperature (0 = greedy)")
                        top_k = gr.Number(value=d.top_k, precision=0, label="Top-k (0 = off)", elem_id="top-k")
                    with gr.Row():
                        top_p = gr.Slider(0.05, 1, value=d.top_p, step=0.05, label="Top-p")
                        seed = gr.Number(value=d.seed, precision=0, label="Seed", elem_id="seed")
                max_new = gr.Slider(1, studio.limits.max_new_tokens, value=d.max_new_tokens, step=1,
                                    label="Max new tokens", elem_id="max-new-tokens")

        stats = gr.HTML(elem_id="stats")
        gr.HTML(LEGEND)
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Output** (JetSpec, or plain in plain mode)")
                out = gr.HTML(render_tokens([], "the answer streams here"), elem_id="output")
            with gr.Column():
                gr.Markdown("**Plain decoding** (side by side)")
                plain_out = gr.HTML(render_tokens([], "side by side mode shows plain decoding here"),
                                    elem_id="plain-output")
        with gr.Row():
            with gr.Column(scale=3):
                tree = gr.Plot(F.empty_figure("draft tree: press Generate", height=440), label="Draft tree",
                               elem_id="tree-plot")
                round_ = gr.Slider(0, 1, value=0, step=1, label="round", interactive=False, elem_id="round")
            with gr.Column(scale=2):
                speed = gr.Plot(F.empty_figure("tokens/s"), label="Throughput and speedup", elem_id="speed-plot")
                timing = gr.Plot(F.empty_figure("time split of a round"), label="Time split", elem_id="timing-plot")
        with gr.Row():
            tau = gr.Plot(F.empty_figure("τ per round"), label="τ per round", elem_id="tau-plot")
            hist = gr.Plot(F.empty_figure("acceptance length"), label="Acceptance lengths", elem_id="hist-plot")
        with gr.Row():
            heat = gr.Plot(F.empty_figure("depth × rank acceptance"), label="Depth × rank", elem_id="heat-plot")
            expected = gr.Plot(F.empty_figure("expected vs realised τ"), label="Expected vs realised τ",
                               elem_id="expected-plot")
        sweep_plot = gr.Plot(F.sweep_figure([]), label="Budget sweep", elem_id="sweep-plot")
        download = gr.DownloadButton("Download trace (JSON)", elem_id="download", interactive=False)

        comps = dict(out=out, plain_out=plain_out, stats=stats, tree=tree, round=round_, tau=tau, hist=hist,
                     heat=heat, expected=expected, timing=timing, speed=speed, download=download, trace=trace)
        outputs = [comps[k] for k in OUTPUTS]
        settings = [budget, width, depth, builder, temperature, top_k, top_p, seed, max_new, calibrate]
        run_ev = gen_btn.click(h.generate, [prompt, mode, *settings], outputs, api_name="ui_generate",
                          api_visibility="private", concurrency_id=DECODER_GROUP, concurrency_limit=concurrency)
        sweep_ev = sweep.click(h.sweep, [prompt, *settings], [sweep_plot], api_name="ui_sweep",
                               api_visibility="private", concurrency_id=DECODER_GROUP, concurrency_limit=concurrency)
        stop.click(None, None, None, cancels=[run_ev, sweep_ev], api_visibility="private")
        round_.input(h.select_round, [round_, trace], [tree], api_name="ui_round", api_visibility="private",
                     concurrency_limit=None, show_progress="hidden")
        gr.api(make_api(studio), api_name="generate", concurrency_id=DECODER_GROUP, concurrency_limit=concurrency)
    return demo
