"""The CLI: JSON output, agreement with plain decoding, one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jetspec_core", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_generate_json_jetspec_equals_plain():
    common = ["generate", "--prompt", "Name three colours.", "--max-new-tokens", "12", "--json",
              "--device", "cpu"]
    a = cli(*common, "--mode", "plain")
    b = cli(*common, "--mode", "jetspec", "--head", "random", "--budget", "8")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    for key in ("token_ids", "text", "rounds", "tau", "tokens_per_s"):
        assert key in ja and key in jb
    assert ja["token_ids"] == jb["token_ids"] and ja["text"] == jb["text"]
    assert "RANDOMLY INITIALISED" in b.stderr and jb["head"].startswith("random")


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "hi", "--budget", "0"], "budget must be an integer from 1 to 256"),
    (["--prompt", "hi", "--budget", "1000"], "budget must be an integer from 1 to 256"),
    (["--prompt", "hi", "--width", "0"], "width must be"),
    (["--prompt", "hi", "--depth", "0"], "depth must be"),
    (["--prompt", "hi", "--builder", "magic"], "builder must be one of accum_logp, topb, top2gap, chain"),
    (["--prompt", "hi", "--head", "/no/such/head"], "does not exist"),
    (["--prompt", "hi", "--target", "/no/such/model"], "cannot load target"),
    (["--prompt", "word " * 9000, "--head", "random"], "exceed the model's context of 8192"),
])
def test_bad_input_one_line_exit_2(args, message):
    r = cli("generate", "--device", "cpu", *args)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and message in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_missing_model_file(tmp_path):
    import os
    env = dict(os.environ, JETSPEC_GGUF=str(tmp_path / "missing.gguf"))
    r = subprocess.run([sys.executable, "-m", "jetspec_core", "generate", "--prompt", "hi"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "JETSPEC_GGUF points at" in r.stderr and "Traceback" not in r.stderr
