"""Load check of JetSpec Studio: concurrent gradio_client sessions against one server.

    python tests/load_app.py                      # starts `python app.py --head random` itself
    python tests/load_app.py --url http://127.0.0.1:7860/ --head random

Each of --sessions sessions (default 8) has its own client and prompt and sends --requests greedy
requests (default 3) with different budgets. Every answer must equal the CLI's output for that
prompt (`python -m jetspec_core generate --json`, run through its `main` in this process; greedy
JetSpec is lossless, so the budget does not change the answer). Prints requests, errors,
mismatches and p50/p95 latency; exit code 0 only when every request succeeded and matched.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is 17 times 23? Explain step by step.",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning, friends' into French.",
    "Explain what a hash map is in two sentences.",
    "Name three colours.",
    "What is the capital of Italy?",
    "Write a haiku about the sea.",
]
BUDGETS = (4, 8, 16)


def cli_reference(prompt: str, head: str, max_new_tokens: int) -> list[int]:
    """Token ids of the CLI's greedy answer (its `main`, JSON output parsed)."""
    from jetspec_core.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["generate", "--prompt", prompt, "--json", "--device", "cpu", "--head", head,
                     "--max-new-tokens", str(max_new_tokens)])
    if code != 0:
        raise RuntimeError(f"CLI failed on {prompt!r}")
    return json.loads(buf.getvalue())["token_ids"]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_load(url: str, refs: dict[str, list[int]], sessions: int, requests: int, max_new_tokens: int) -> dict:
    from gradio_client import Client

    lat: list[float] = []
    errors: list[str] = []
    mismatches: list[str] = []
    lock = threading.Lock()

    def session(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"session {i}: connect: {e}")
            return
        for j in range(requests):
            budget = BUDGETS[(i + j) % len(BUDGETS)]
            t0 = time.perf_counter()
            try:
                out = client.predict(prompt=prompt, budget=budget, max_new_tokens=max_new_tokens,
                                     temperature=0.0, api_name="/generate")
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"session {i} request {j}: {type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if out.get("token_ids") != refs[prompt]:
                    mismatches.append(f"session {i} request {j} (budget {budget}): {out.get('token_ids')} != "
                                      f"{refs[prompt]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": sessions * requests, "completed": len(lat), "errors": len(errors),
            "mismatches": len(mismatches), "p50_s": percentile(lat, 0.5), "p95_s": percentile(lat, 0.95),
            "max_s": max(lat) if lat else float("nan"), "wall_s": wall, "error_list": errors[:5],
            "mismatch_list": mismatches[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running server; default: start `python app.py` here")
    ap.add_argument("--head", default="random", help="the head the server uses (the CLI uses the same)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    a = ap.parse_args(argv)

    from app_server import running_app

    ctx = contextlib.nullcontext(a.url) if a.url else running_app("--head", a.head)
    with ctx as url:
        t0 = time.perf_counter()
        used = sorted({PROMPTS[i % len(PROMPTS)] for i in range(a.sessions)}, key=PROMPTS.index)
        refs = {p: cli_reference(p, a.head, a.max_new_tokens) for p in used}
        print(f"CLI references for {len(refs)} prompts in {time.perf_counter() - t0:.1f} s", flush=True)
        res = run_load(url, refs, a.sessions, a.requests, a.max_new_tokens)
    print(f"requests {res['requests']}  completed {res['completed']}  errors {res['errors']}  "
          f"mismatches {res['mismatches']}")
    print(f"latency p50 {res['p50_s']:.2f} s  p95 {res['p95_s']:.2f} s  max {res['max_s']:.2f} s  "
          f"wall {res['wall_s']:.1f} s  ({a.sessions} sessions x {a.requests} requests, "
          f"{a.max_new_tokens} new tokens)")
    for line in res["error_list"] + res["mismatch_list"]:
        print("  " + line)
    if a.json:
        print(json.dumps(res))
    ok = res["completed"] == res["requests"] and not res["errors"] and not res["mismatches"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
