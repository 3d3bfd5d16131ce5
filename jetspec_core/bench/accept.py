"""The acceptance benchmark: prompts through the decoder, τ overall / per category / per depth.

Every prompt runs through `Decoder.generate` (the one streaming generator) under each decode
configuration; each row keeps the per-prompt figures and a histogram of accept lengths, from
which the summary is pooled. τ of a run = Σ accept lengths / Σ rounds (rounds pooled over all
prompts, as DESIGN §3 defines it per generation); `reach[d]` = the fraction of rounds that
accepted at least d draft tokens. Batch-1 decoding leaves a GPU mostly idle, so `workers` > 1
runs prompts in several processes at once: τ is unaffected (greedy is deterministic per
prompt), tokens/s are then per process under contention and are marked so.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, replace

from ..config import DecodeConfig
from ..errors import JetSpecError
from .datasets import BenchPrompt


@dataclass(frozen=True)
class Job:
    index: int
    dataset: str
    config_name: str
    config: DecodeConfig
    prompt: BenchPrompt


def named_configs(base: DecodeConfig, budgets: list[int], chain: bool) -> list[tuple[str, DecodeConfig]]:
    """One config per budget (the tree builder of `base`), plus the chain (K = 1) when asked; "-raw"
    marks runs that rank nodes by raw log-probs (`--no-calibration`)."""
    raw = "" if base.calibrate else "-raw"
    out = [(f"{base.builder}-b{b}{raw}", replace(base, budget=b)) for b in budgets]
    if chain:
        out.append(("chain", replace(base, builder="chain", width=1, budget=base.depth + 1)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise JetSpecError(f"duplicate bench configurations: {names}")
    return out


def run_prompt(loaded, job: Job, chat: bool = True) -> dict:
    """Decode one prompt; return its row of figures."""
    target = loaded.target
    ids = target.encode_prompt(job.prompt.text, chat=chat)
    summary, records = loaded.decoder.generate(ids, job.config)
    hist = [0] * (job.config.depth + 2)   # index = accept length (accepted + 1)
    for r in records:
        hist[min(r.accept_len, len(hist) - 1)] += 1
    return {"index": job.index, "dataset": job.dataset, "config_name": job.config_name, "id": job.prompt.id,
            "category": job.prompt.category, "prompt_tokens": len(ids), "new_tokens": len(summary.token_ids),
            "rounds": summary.rounds, "tau": summary.tau, "expected_tau": summary.expected_tau, "tpf": summary.tpf,
            "tokens_per_s": summary.tokens_per_s, "decode_tokens_per_s": summary.decode_tokens_per_s,
            "elapsed_s": summary.elapsed_s, "prefill_s": summary.prefill_s, "time_split": summary.time_split,
            "finished": summary.finished, "accept_hist": hist}


def summarize_rows(rows: list[dict]) -> dict:
    """Pooled figures of one (dataset, config) run."""
    if not rows:
        return {"prompts": 0}
    rounds = sum(r["rounds"] for r in rows)
    acc = sum(r["tau"] * r["rounds"] for r in rows)
    depth = max(len(r["accept_hist"]) for r in rows)
    hist = [sum(r["accept_hist"][j] for r in rows if j < len(r["accept_hist"])) for j in range(depth)]
    reach = [sum(hist[d + 1:]) / max(1, rounds) for d in range(1, depth - 1)]  # accepted >= d, d = 1..D
    cats: dict[str, list[dict]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    toks = sum(r["new_tokens"] for r in rows)
    secs = sum(r["elapsed_s"] for r in rows)
    return {
        "prompts": len(rows), "rounds": rounds, "new_tokens": toks,
        "tau": acc / max(1, rounds),
        "tau_mean_of_prompts": sum(r["tau"] for r in rows) / len(rows),
        "expected_tau": sum(r["expected_tau"] * r["rounds"] for r in rows) / max(1, rounds),
        "tpf": toks / max(1, rounds),
        "tokens_per_s": toks / max(secs, 1e-9),
        "decode_tokens_per_s": toks / max(sum(r["elapsed_s"] - r["prefill_s"] for r in rows), 1e-9),
        "tau_per_category": {c: sum(r["tau"] * r["rounds"] for r in rs) / max(1, sum(r["rounds"] for r in rs))
                             for c, rs in sorted(cats.items())},
        "accept_hist": hist,
        "reach_per_depth": reach,
        "time_split_s": {k: sum(r["time_split"].get(k, 0.0) for r in rows) for k in ("draft", "tree", "verify", "accept")},
    }


def _warmup(loaded, configs: list[DecodeConfig]) -> None:
    ids = loaded.target.encode_prompt("Say hello.")
    for cfg in configs:
        loaded.decoder.generate(ids, replace(cfg, max_new_tokens=min(8, cfg.max_new_tokens)))


def _load(spec: dict):
    import torch

    from ..loading import load_decoder

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    return load_decoder(spec["target"], spec["head"], spec["device"], spec["dtype"], spec["trust_remote_code"],
                        engine=spec.get("engine", "auto"))


def _worker(spec: dict, jobs, results) -> None:
    """A bench process: load once, warm up, then take jobs until a sentinel or the deadline."""
    try:
        loaded = _load(spec)
        _warmup(loaded, spec["configs"])
        results.put(("ready", loaded.head_desc, loaded.target.name, type(loaded.decoder).__name__))
        while True:
            job = jobs.get()
            if job is None:
                break
            if spec["deadline"] is not None and time.time() > spec["deadline"]:
                results.put(("skipped", job.index))
                continue
            results.put(("row", run_prompt(loaded, job, spec["chat"])))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put(("error", traceback.format_exc()))
    results.put(("done", None))


def run_jobs(jobs: list[Job], spec: dict, workers: int = 1, time_limit_s: float | None = None,
             progress: bool = True) -> tuple[list[dict], dict]:
    """Run the jobs; returns the rows (job order) and facts about the run (head, target, skipped)."""
    from tqdm.auto import tqdm

    if workers < 1:
        raise JetSpecError(f"--workers must be >= 1, got {workers}")
    configs = list({j.config_name: j.config for j in jobs}.values())
    spec = dict(spec, configs=configs, chat=spec.get("chat", True),
                deadline=None if time_limit_s is None else time.time() + time_limit_s)
    rows: list[dict] = []
    bar = tqdm(total=len(jobs), desc="bench", unit="prompt", disable=not progress)
    if workers == 1:
        loaded = _load(spec)
        _warmup(loaded, configs)
        facts = {"head": loaded.head_desc, "target": loaded.target.name, "skipped": 0,
                 "device": str(loaded.target.device), "decoder": type(loaded.decoder).__name__}
        for job in jobs:
            if spec["deadline"] is not None and time.time() > spec["deadline"]:
                facts["skipped"] += 1
                continue
            rows.append(run_prompt(loaded, job, spec["chat"]))
            bar.update(1)
        bar.close()
        return rows, facts
    import multiprocessing as mp

    from ..target import load_target

    load_target(spec["target"], "cpu", "float32", spec["trust_remote_code"])  # builds the model cache once
    ctx = mp.get_context("spawn")
    jq, rq = ctx.Queue(), ctx.Queue()
    spec["threads"] = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker, args=(spec, jq, rq), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    for j in jobs:
        jq.put(j)
    for _ in procs:
        jq.put(None)
    facts = {"skipped": 0, "workers": workers}
    done, error = 0, None
    while done < workers:
        kind, payload, *more = rq.get()
        if kind == "row":
            rows.append(payload)
            bar.update(1)
        elif kind == "skipped":
            facts["skipped"] += 1
        elif kind == "ready":
            facts["head"], facts["target"], facts["decoder"] = payload, more[0], more[1]
        elif kind == "error":
            error = error or payload
        elif kind == "done":
            done += 1
    for p in procs:
        p.join(timeout=30)
    bar.close()
    if error:
        first = error.strip().splitlines()[-1]
        if first.startswith("jetspec_core.errors.JetSpecError: "):
            raise JetSpecError(first.split(": ", 1)[1])
        raise RuntimeError(f"a bench worker failed:\n{error}")
    facts["device"] = spec["device"]
    rows.sort(key=lambda r: r["index"])
    return rows, facts
