"""`python -m jetspec_core bench [accept|speed|kernels|replay|report] ...`.

    bench --dataset humaneval mtbench --budget 256 64 --chain --max-new-tokens 256   # acceptance
    bench report runs/bench/results.json                                             # HTML again
    bench speed ... / bench kernels ... / bench replay ...   # handed to jetspec_core.bench.speed / .kernels / .replay

The acceptance bench writes results.json (per-prompt rows + summaries) and report.html into --out.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import platform
import random
import sys
import time
from pathlib import Path

from ..cli import add_calibration_arg, add_model_args
from ..config import BUILDERS, DecodeConfig
from ..errors import JetSpecError
from .datasets import DATASETS

_D = DecodeConfig()  # the one place decode defaults come from
WHAT = ("accept", "speed", "kernels", "replay", "report")


def add_accept_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", nargs="+", default=["humaneval"], help=f"one or more of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default=None, help="folder holding HumanEval.jsonl.gz / question.jsonl "
                                                      "(default: the installed packages, $JETSPEC_HUMANEVAL/MTBENCH)")
    p.add_argument("--limit", type=int, default=None, help="N prompts per dataset, spread evenly over the file")
    p.add_argument("--budget", type=int, nargs="+", default=[_D.budget], help="tree budgets (one run each)")
    p.add_argument("--chain", action="store_true", help="also run the chain (K = 1) for comparison")
    p.add_argument("--width", type=int, default=_D.width, help="candidates per depth (K)")
    p.add_argument("--depth", type=int, default=_D.depth, help="max tree depth (capped by the head)")
    p.add_argument("--builder", default=_D.builder, help=f"one of {', '.join(BUILDERS)}")
    add_calibration_arg(p)
    p.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens)
    p.add_argument("--temperature", type=float, default=_D.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=_D.top_k)
    p.add_argument("--top-p", type=float, default=_D.top_p)
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--workers", type=int, default=1, help="decoding processes at once (GPU: several pay)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds; prompts not started by then are skipped (and reported as skipped)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-<time>)")
    p.add_argument("--engine", default="auto", help="auto (graphed engine on CUDA, reference on CPU), fast, reference")
    p.add_argument("--no-report", action="store_true", help="write only results.json")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)


def _jobs(a: argparse.Namespace):
    from .accept import Job, named_configs
    from .datasets import check_name, load_dataset, spread

    for name in a.dataset:
        check_name(name)
    base = DecodeConfig(budget=a.budget[0], width=a.width, depth=a.depth, builder=a.builder,
                        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                        top_p=a.top_p, seed=a.seed, calibrate=not a.no_calibration)
    configs = named_configs(base, a.budget, a.chain)
    prompts = {name: spread(load_dataset(name, a.data_dir), a.limit) for name in a.dataset}
    pairs = [(name, p) for name in a.dataset for p in prompts[name]]
    random.Random(a.seed).shuffle(pairs)  # a time limit then cuts a random subset, not the last category
    jobs = []
    for cname, cfg in configs[:1]:  # the first config runs on everything first ...
        for name, p in pairs:
            jobs.append(Job(len(jobs), name, cname, cfg, p))
    for name, p in pairs:  # ... then the others side by side, so any cut leaves them the same prompts
        for cname, cfg in configs[1:]:
            jobs.append(Job(len(jobs), name, cname, cfg, p))
    return jobs, configs, prompts


def cmd_accept(a: argparse.Namespace) -> int:
    from .accept import run_jobs, summarize_rows

    jobs, configs, prompts = _jobs(a)  # validates everything before the slow load
    out = Path(a.out or f"runs/bench-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    spec = {"target": a.target, "head": a.head, "device": a.device, "dtype": a.dtype,
            "trust_remote_code": a.trust_remote_code, "chat": not a.no_chat, "engine": a.engine}
    t0 = time.perf_counter()
    rows, facts = run_jobs(jobs, spec, a.workers, a.time_limit, progress=not a.no_progress)
    runs = []
    for cname, cfg in configs:
        for name in a.dataset:
            mine = [r for r in rows if r["config_name"] == cname and r["dataset"] == name]
            runs.append({"dataset": name, "config_name": cname, "config": cfg.to_dict(),
                         "summary": summarize_rows(mine), "complete": len(mine) == len(prompts[name]),
                         "prompt_count": len(prompts[name]), "prompts": mine})
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "host": platform.node(), "python": platform.python_version(), "wall_s": round(time.perf_counter() - t0, 1),
            "workers": a.workers, "chat": not a.no_chat, "engine": a.engine, **facts, **_device_facts(facts.get("device", ""))}
    results = {"meta": meta, "runs": runs}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if not a.no_report:
        try:
            from .report import write_report

            write_report(results, out / "report.html")
        except ModuleNotFoundError as e:
            print(f"[bench] no HTML report ({e.name} missing); later: bench report {out / 'results.json'}",
                  file=sys.stderr)
    for run in runs:
        s = run["summary"]
        if s.get("prompts"):
            print(f"{run['dataset']:9s} {run['config_name']:16s} prompts={s['prompts']:3d}/{run['prompt_count']} "
                  f"tau={s['tau']:.2f} tokens/s={s['tokens_per_s']:.1f} "
                  f"per-category={json.dumps({k: round(v, 2) for k, v in s['tau_per_category'].items()})}")
    print(f"[bench] wrote {out / 'results.json'}", file=sys.stderr)
    return 0


def _device_facts(device: str) -> dict:
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
        return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    except Exception:  # noqa: BLE001 - facts are best effort
        return {}


def cmd_report(argv: list[str]) -> int:
    from .report import load_results, write_report

    p = argparse.ArgumentParser(prog="python -m jetspec_core bench report",
                                description="rebuild report.html from a results.json")
    p.add_argument("results")
    p.add_argument("--out", default=None, help="HTML path (default: report.html beside the results)")
    a = p.parse_args(argv)
    path = write_report(load_results(a.results), a.out or Path(a.results).with_name("report.html"))
    print(path)
    return 0


def _delegate(what: str, argv: list[str]) -> int:
    """`bench speed|kernels|replay ...`: hand the remaining arguments to that module's main(argv)."""
    try:
        mod = importlib.import_module(f"jetspec_core.bench.{what}")
    except ModuleNotFoundError as e:
        if e.name and f"jetspec_core.bench.{what}".startswith(e.name):
            raise JetSpecError(f"bench {what} is not available (jetspec_core.bench.{what} is not installed)") from e
        raise
    rc = mod.main(argv)
    return int(rc or 0)


def cmd_bench(a: argparse.Namespace) -> int:
    if a.what in ("speed", "kernels", "replay"):
        return _delegate(a.what, a.rest)
    if a.what == "report":
        return cmd_report(a.rest)
    if a.rest:  # `bench accept --dataset ...`: the options came after the word
        p = argparse.ArgumentParser(prog="python -m jetspec_core bench accept")
        add_accept_args(p)
        a = p.parse_args(a.rest)
    return cmd_accept(a)


def register(sub) -> None:
    """Add `bench` to the top-level parser."""
    p = sub.add_parser("bench", help="acceptance bench on HumanEval / MT-Bench (or: speed, kernels, replay, report)",
                       description="Acceptance bench (default). `bench speed ...` and `bench kernels ...` run "
                                   "the speed and kernel benchmarks, `bench replay ...` compares tree builders "
                                   "offline; `bench report RESULTS.json` rebuilds the HTML.")
    p.add_argument("what", nargs="?", default="accept", choices=WHAT, help="which benchmark (default accept)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    add_accept_args(p)
    p.set_defaults(func=cmd_bench)
