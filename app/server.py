"""`python app.py`: parse the flags, load the model once, build the UI and serve it.

Startup problems (missing model, corrupt or mismatched head, bad flags) print one `error:` line
that names the file and the fix, and exit with code 2. The server listens on 127.0.0.1 unless
--host says otherwise and never creates a public share link.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace

from jetspec_core.errors import JetSpecError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python app.py", description="JetSpec Studio: watch speculative decoding live")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--target", default=None, help="HF model folder or id (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--head", default=None,
                    help="draft head folder; 'random' (untrained) or 'none' (plain only). Default: the shipped "
                         "assets/head, or an untrained random head when none is shipped")
    ap.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda[:N]")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16")
    ap.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")
    ap.add_argument("--engine", default="auto", help="auto (graphed engine on CUDA, reference on CPU), fast, reference")
    ap.add_argument("--concurrency", type=int, default=1, help="decoding requests run at once (others queue)")
    ap.add_argument("--queue-size", type=int, default=64, help="requests that may wait in the queue")
    ap.add_argument("--max-new-tokens-limit", type=int, default=None, help="cap on max_new_tokens per request")
    ap.add_argument("--max-prompt-chars", type=int, default=None, help="cap on prompt length in characters")
    ap.add_argument("--timeout", type=float, default=None, help="request time limit in seconds")
    return ap


def resolve_head(spec: str | None) -> str | None:
    """No --head and no shipped head → an untrained random head (the UI says so in a banner)."""
    from jetspec_core.loading import DEFAULT_HEAD, RANDOM_HEAD

    if spec in (None, "") and not (DEFAULT_HEAD / "model.safetensors").is_file():
        return RANDOM_HEAD
    return spec


def load(a: argparse.Namespace):
    """Target, then head, each failure with what to do about it, then the decoder
    (`loading.make_decoder`, as `load_decoder` does). Returns (Loaded, Studio)."""
    from jetspec_core.drafter import HeadDrafter
    from jetspec_core.loading import Loaded, load_head, make_decoder
    from jetspec_core.target import load_target

    from .session import Limits, Studio

    try:
        target = load_target(a.target, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code)
    except JetSpecError as e:
        raise JetSpecError(f"{e} (fix: pass --target FOLDER with a local llama/qwen2/qwen3 model)") from e
    head_spec = resolve_head(a.head)
    try:
        head, desc = load_head(head_spec, target)
    except JetSpecError as e:
        raise JetSpecError(f"draft head {head_spec or 'assets/head'}: {e} (fix: pass --head FOLDER with a head "
                           "trained for this target, --head random, or --head none)") from e
    decoder = make_decoder(target, HeadDrafter(head, target.model) if head is not None else None, a.engine)
    loaded = Loaded(target, decoder, desc)
    limits = Limits.for_device(target.device.type)
    over = {k: v for k, v in (("max_new_tokens", a.max_new_tokens_limit), ("max_prompt_chars", a.max_prompt_chars),
                              ("timeout_s", a.timeout)) if v is not None}
    if any(v <= 0 for v in over.values()):
        raise JetSpecError("--max-new-tokens-limit, --max-prompt-chars and --timeout must be positive")
    return loaded, Studio(loaded, replace(limits, **over))


def main(argv: list[str] | None = None) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="[jetspec] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    a = build_parser().parse_args(argv)
    if a.concurrency < 1 or a.queue_size < 1:
        print("error: --concurrency and --queue-size must be at least 1", file=sys.stderr)
        return 2
    try:
        _, studio = load(a)
    except JetSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for text, _ in studio.banners():
        print(f"[jetspec] {text}", flush=True)

    from .text import CSS
    from .ui import build_ui

    import gradio as gr

    demo = build_ui(studio, concurrency=a.concurrency)
    demo.queue(max_size=a.queue_size, default_concurrency_limit=a.concurrency)
    try:
        demo.launch(server_name=a.host, server_port=a.port, share=False, show_error=False, theme=gr.themes.Soft(),
                    css=CSS, footer_links=["api", "gradio"], state_session_capacity=256)
    except OSError as e:  # port taken, bad host
        print(f"error: cannot listen on {a.host}:{a.port} ({e}); pick another --port", file=sys.stderr)
        return 2
    return 0
