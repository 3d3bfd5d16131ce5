"""`python -m jetspec_core <command>`: generate (here), train and bench (their own modules).

Every command turns a JetSpecError into a one-line `error: ...` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import BUILDERS, MAX_BUDGET, MODES, DecodeConfig
from .errors import JetSpecError

_D = DecodeConfig()  # the one place defaults come from


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="HF model id or folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--head", default=None,
                   help="draft head folder; 'random' for an untrained head; default: the shipped assets/head")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default=_D.mode, help=f"one of {', '.join(MODES)}")
    p.add_argument("--budget", type=int, default=_D.budget, help=f"tree nodes incl. root, 1..{MAX_BUDGET}")
    p.add_argument("--width", type=int, default=_D.width, help="candidates per depth (K)")
    p.add_argument("--depth", type=int, default=_D.depth, help="max tree depth (capped by the head)")
    p.add_argument("--builder", default=_D.builder, help=f"one of {', '.join(BUILDERS)}")
    p.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens)
    p.add_argument("--temperature", type=float, default=_D.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=_D.top_k, help="0 = off")
    p.add_argument("--top-p", type=float, default=_D.top_p)
    p.add_argument("--seed", type=int, default=_D.seed)
    add_calibration_arg(p)


def add_calibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-calibration", action="store_true", help="rank tree nodes by the raw draft log-probs, not the head's calibration.json")


def decode_config(a: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(mode=a.mode, budget=a.budget, width=a.width, depth=a.depth, builder=a.builder,
                        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                        top_p=a.top_p, seed=a.seed, calibrate=not a.no_calibration)


def cmd_generate(a: argparse.Namespace) -> int:
    from .loading import load_decoder

    cfg = decode_config(a)  # validate before the slow load
    if not a.prompt or not a.prompt.strip():
        raise JetSpecError("the prompt is empty; pass --prompt TEXT")
    loaded = load_decoder(a.target, a.head if cfg.mode == "jetspec" else "none", a.device, a.dtype,
                          a.trust_remote_code)
    ids = loaded.target.encode_prompt(a.prompt, chat=not a.no_chat)
    summary, records = loaded.decoder.generate(ids, cfg)
    text = loaded.target.decode(summary.token_ids)
    if a.json:
        out = {"text": text, "head": loaded.head_desc, "target": loaded.target.name,
               "config": cfg.to_dict(), "prompt_tokens": len(ids), **summary.to_dict()}
        if a.trace:
            out["trace"] = [r.to_dict() for r in records]
        print(json.dumps(out))
    else:
        print(text)
        print(f"\n[{summary.mode}] head={loaded.head_desc} rounds={summary.rounds} tau={summary.tau:.2f} "
              f"(expected {summary.expected_tau:.2f}) "
              f"tpf={summary.tpf:.2f} tokens/s={summary.tokens_per_s:.1f} ({summary.finished})",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jetspec_core", description="JetSpec speculative decoding")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="decode one prompt and print the text (or --json)")
    g.add_argument("--prompt", required=True)
    add_model_args(g)
    add_decode_args(g)
    g.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--trace", action="store_true", help="with --json: include every round record")
    g.set_defaults(func=cmd_generate)
    for register in _extra_commands():
        register(sub)
    return ap


def _extra_commands():
    """Sub-commands that live in their own modules (each exposes `register(subparsers)`)."""
    import importlib

    for name in ("jetspec_core.train.cli", "jetspec_core.bench.cli"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # that part of the package is not there
            raise
        yield mod.register




def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return a.func(a)
    except JetSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
