"""The kernels changed most often compile for sm_90 (H100/H200) on this GPU-less machine too:
the interpreter tests check what a kernel computes, not that the compiler accepts it (a
loop-carried variable that changes type runs interpreted and fails to compile — it happened, and
only a GPU session found it). `tests/sm90_compile.py` compiles each variant in its own process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "sm90_compile.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0 and rows, res.stderr[-3000:]
    failed = [r for r in rows if not r["ok"]]
    if failed and len(failed) == len(rows) and all("ptxas" in r["error"] or "backend" in r["error"].lower()
                                                   for r in failed):
        pytest.skip(f"no sm_90 code generation here: {failed[0]['error'][:200]}")
    assert not failed, "\n".join(f"{r['kernel']} {r['variant']}: {r['error']}" for r in failed)
    assert {r["kernel"] for r in rows} == {"greedy_record", "pack_bits", "tree_build", "rope_kv", "kv_compact"}
