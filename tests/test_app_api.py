"""The app through its API (gradio_client against a real `python app.py`), its bad-input
answers, per-request isolation and cancellation (in process), and its startup faults."""
import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from app_server import ROOT, cli_json, running_app

PROMPT = "Name three colours."
SETTINGS = dict(budget=8, width=5, depth=6, builder="accum_logp", max_new_tokens=8)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    with running_app("--head", "random", log_path=log) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def generate(client, **kw):
    return client.predict(api_name="/generate", **kw)


def test_api_answer_equals_cli(client):
    cli = cli_json(PROMPT, "--head", "random", "--budget", "8", "--width", "5", "--depth", "6",
                   "--max-new-tokens", "8")
    out = generate(client, prompt=PROMPT, **SETTINGS)
    assert isinstance(out, dict)
    for key in ("text", "token_ids", "tau", "tokens_per_s", "rounds", "expected_tau", "time_split", "config"):
        assert key in out, key
    assert out["token_ids"] == cli["token_ids"] and out["text"] == cli["text"]
    assert out["rounds"] == cli["rounds"] and out["tau"] == cli["tau"]
    assert out["config"]["budget"] == 8 and out["head"].startswith("random")


def test_api_defaults_and_side_by_side(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in info["parameters"]]
    assert names == ["prompt", "mode", "budget", "width", "depth", "builder", "temperature", "top_k", "top_p",
                     "seed", "max_new_tokens", "calibrate"]
    assert [p["parameter_has_default"] for p in info["parameters"]] == [False] + [True] * 11
    defaults = {p["parameter_name"]: p["parameter_default"] for p in info["parameters"][1:]}
    assert (defaults["budget"], defaults["builder"], defaults["max_new_tokens"]) == (16, "topb", 64)  # CPU
    out = generate(client, prompt=PROMPT, mode="side_by_side", budget=8, max_new_tokens=5)
    assert out["plain"]["token_ids"] == out["token_ids"] and len(out["token_ids"]) == 5
    assert out["plain"]["tau"] == 1.0 and out["plain"]["rounds"] == 5
    assert out["speedup"] == pytest.approx(out["tokens_per_s"] / out["plain"]["tokens_per_s"])
    assert out["first_difference"] is None  # fp32 greedy: the same tokens
    raw = generate(client, prompt=PROMPT, budget=8, max_new_tokens=5, calibrate=False)
    assert raw["config"]["calibrate"] is False and raw["token_ids"] == out["token_ids"]
    sampled = [generate(client, prompt=PROMPT, temperature=0.9, top_p=0.9, seed=7, max_new_tokens=4)["token_ids"]
               for _ in range(2)]
    assert sampled[0] == sampled[1], "a seed reproduces a sampled answer"


def _raw_call(url: str, body: str) -> str:
    """POST a hand-written JSON body to /gradio_api/call/generate; return the event stream text."""
    req = urllib.request.Request(url + "gradio_api/call/generate", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(url + f"gradio_api/call/generate/{event}", timeout=120) as r:
        return r.read().decode()


BAD = [  # (keyword arguments, words the message must contain)
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   \n\t  "), "prompt is empty"),
    (dict(prompt="\u200b\u2060 \ufeff"), "prompt is empty (or only spaces and invisible characters)"),
    (dict(prompt="x" * 100_000), "100,000 characters; the limit is"),
    (dict(prompt="hello\x00world"), "control character (U+0000)"),
    (dict(prompt="ring \x07 bell"), "control character (U+0007)"),
    (dict(prompt="\x1b[31mred"), "control character (U+001B)"),
    (dict(prompt="hi " * 3000), "tokens long; this server takes at most 2,048"),
    (dict(prompt=123), "prompt must be text, got int"),
    (dict(prompt=["a", "b"]), "prompt must be text, got list"),
    (dict(prompt="hi", budget=0), "budget must be an integer from 1 to 256, got 0"),
    (dict(prompt="hi", budget=-1), "budget must be an integer from 1 to 256, got -1"),
    (dict(prompt="hi", budget=10**9), "budget must be an integer from 1 to 256, got 1000000000"),
    (dict(prompt="hi", budget=2.5), "budget must be an integer from 1 to 256, got 2.5"),
    (dict(prompt="hi", budget="abc"), "budget must be an integer from 1 to 256, got 'abc'"),
    (dict(prompt="hi", budget=True), "budget must be an integer"),
    (dict(prompt="hi", temperature=-1), "temperature must be a number from 0 to 10"),
    (dict(prompt="hi", temperature="hot"), "temperature must be a number from 0 to 10, got 'hot'"),
    (dict(prompt="hi", top_p=2), "top_p must be a number in (0, 1]"),
    (dict(prompt="hi", top_p=0), "top_p must be a number in (0, 1]"),
    (dict(prompt="hi", top_k=-5), "top_k must be an integer >= 0"),
    (dict(prompt="hi", width=0), "width must be an integer from 1 to 64"),
    (dict(prompt="hi", depth=100), "depth must be an integer from 1 to 64"),
    (dict(prompt="hi", builder="magic"), "builder must be one of accum_logp, topb, top2gap, chain"),
    (dict(prompt="hi", mode="fast"), "mode must be one of jetspec, plain, side_by_side"),
    (dict(prompt="hi", seed=-1), "seed must be a non-negative integer"),
    (dict(prompt="hi", max_new_tokens=0), "max_new_tokens must be an integer from 1 to 4096"),
    (dict(prompt="hi", max_new_tokens=100_000), "max_new_tokens is limited to 512 on this server, got 100000"),
    (dict(prompt="hi", max_new_tokens=600), "max_new_tokens is limited to 512 on this server"),
]
RAW_BAD = [  # JSON that gradio_client refuses to send (NaN, Infinity), sent by hand with all 12 values
    ('["hi", "jetspec", NaN, 7, 15, "accum_logp", 0.0, 0, 1.0, 0, 8, true]', "budget must be an integer from 1 to 256, got nan"),
    ('["hi", "jetspec", 8, 7, 15, "accum_logp", Infinity, 0, 1.0, 0, 8, true]', "temperature must be a number from 0 to 10"),
    ('["hi", "jetspec", 8, 7, 15, "accum_logp", 0.5, 0, NaN, 0, 8, true]', "top_p must be a number in (0, 1]"),
    ('["hi", "jetspec", 8, 7, 15, "accum_logp", 0.5, 0, 1.0, 0, 8, "yes"]', "calibrate must be true or false"),
]
VALID_ODD = ["Describe 😀🎉 in two words.", "ما هو ٢ + ٢؟", "<script>alert('x')</script> What is HTML?",
             "<b>bold</b> &amp; <i>tags</i>", "Zero\u200bwidth and \u202eright-to-left override"]


def test_bad_input_table_gets_clear_messages_and_server_stays_up(client, url):
    assert len(BAD) + len(RAW_BAD) >= 25
    failures = []
    for kw, message in BAD:
        try:
            generate(client, **kw)
            failures.append((kw, "no error"))
        except Exception as e:  # gradio_client raises AppError with the server's message
            text = str(e)
            if message not in text or "Traceback" in text:
                failures.append((str(kw)[:80], text[:200]))
    for body, message in RAW_BAD:
        stream = _raw_call(url, '{"data": %s}' % body)
        if "event: error" not in stream or message not in stream:
            failures.append((body, stream[:300]))
    assert not failures, failures
    for prompt in VALID_ODD:  # unusual but valid text gets a normal answer
        out = generate(client, prompt=prompt, max_new_tokens=3)
        assert isinstance(out["text"], str) and len(out["token_ids"]) == 3, prompt
    assert generate(client, prompt=PROMPT, max_new_tokens=2)["token_ids"], "a normal request right after works"


def test_listens_on_localhost_and_serves_no_files(url):
    import urllib.error
    from urllib.parse import urlparse

    port = urlparse(url).port
    listening = [ln.split()[1] for ln in open("/proc/net/tcp").read().splitlines()[1:]
                 if ln.split()[3] == "0A" and int(ln.split()[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"], listening  # 127.0.0.1 only
    for path in ("/etc/passwd", str(ROOT / "app.py"), "app.py", "..%2F..%2Fetc%2Fpasswd"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "gradio_api/file=" + path, timeout=30)
        assert e.value.code in (403, 404), path


def test_load_script_8_sessions_x_3_requests(url):
    r = subprocess.run([sys.executable, "tests/load_app.py", "--url", url, "--head", "random", "--json",
                        "--max-new-tokens", "4"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["requests"] == res["completed"] == 24 and res["errors"] == 0 and res["mismatches"] == 0
    assert "latency p50" in r.stdout and "p95" in r.stdout


# ---------------------------------------------------------------- in process: isolation, cancel

@pytest.fixture(scope="module")
def loaded(embedded):
    from jetspec_core.decoder import Decoder
    from jetspec_core.drafter import HeadDrafter
    from jetspec_core.loading import Loaded, random_head

    head = random_head(embedded)
    return Loaded(embedded, Decoder(embedded, HeadDrafter(head, embedded.model)), "random (untrained)")


@pytest.fixture(scope="module")
def studio(loaded):
    from app.session import Studio

    return Studio(loaded)


def test_requests_never_share_decoder_state(studio):
    from app.session import Run

    prompts = ["Write a haiku about rain.", "What is 2 + 2?", "List two fruits."]
    cfgs = [studio.config("jetspec", budget=b, max_new_tokens=5) for b in (2, 4, 8)]
    ids = [studio.encode(p) for p in prompts]
    refs = [studio.run("jetspec", i, c).token_ids for i, c in zip(ids, cfgs)]
    # interleaved round by round in one thread
    runs = [Run("jetspec", c, i) for i, c in zip(ids, cfgs)]
    gens = [studio.stream(r) for r in runs]
    live = list(range(3))
    while live:
        for k in list(live):
            if next(gens[k], None) is None:
                live.remove(k)
    assert [r.token_ids for r in runs] == refs
    # and in three threads at once
    runs = [Run("jetspec", c, i) for i, c in zip(ids, cfgs)]
    threads = [threading.Thread(target=lambda r=r: list(studio.stream(r))) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.token_ids for r in runs] == refs


def test_shared_engine_serves_one_request_at_a_time(loaded, studio):
    """The graphed engine (here forced on CPU, without graphs) is one shared instance: requests
    from several threads take turns, a stopped stream frees it, answers equal the reference."""
    from jetspec_core.loading import Loaded, make_decoder

    from app.session import Run, Studio

    fast = Studio(Loaded(loaded.target, make_decoder(loaded.target, loaded.decoder.drafter, "fast"),
                         loaded.head_desc))
    assert fast.engine is not None and studio.engine is None
    prompts = ["What is 2 + 2?", "List two fruits."]
    cfg = studio.config("jetspec", budget=4, max_new_tokens=4)
    ids = [studio.encode(p) for p in prompts]
    refs = [studio.run("jetspec", i, cfg).token_ids for i in ids]
    runs = [Run("jetspec", cfg, i) for i in ids]
    threads = [threading.Thread(target=lambda r=r: list(fast.stream(r))) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.token_ids for r in runs] == refs
    gen = fast.stream(Run("jetspec", cfg, ids[0]))
    next(gen)
    assert fast._engine_lock.locked()
    gen.close()
    assert not fast._engine_lock.locked()
    assert fast.run("jetspec", ids[0], cfg).token_ids == refs[0]


def test_first_run_of_a_setting_says_it_is_preparing(loaded):
    """The shared engine builds a setting's steps on its first run (on a GPU: kernel compiles and
    graph captures, up to a minute): the UI's first update says so; a repeat starts at once."""
    from jetspec_core.loading import Loaded, make_decoder

    from app.handlers import Handlers
    from app.session import Run, Studio

    fast = Studio(Loaded(loaded.target, make_decoder(loaded.target, loaded.decoder.drafter, "fast"),
                         loaded.head_desc))
    h = Handlers(fast)
    args = ("What is 2 + 2?", "jetspec", 4, 3, 4, "accum_logp", 0.0, 0, 1.0, 0, 3)

    def first_note():
        gen = h.generate(*args)
        stats = next(gen)[2]
        list(gen)
        return stats

    cfg = fast.config("jetspec", budget=4, width=3, depth=4, max_new_tokens=3)
    run = Run("jetspec", cfg, fast.encode("What is 2 + 2?"))
    assert fast.warming(run)
    assert "preparing jetspec" in first_note()
    assert not fast.warming(run)
    assert "preparing" not in first_note()
    assert fast.warming(Run("jetspec", fast.config("jetspec", budget=8, max_new_tokens=3), run.prompt_ids))
    assert not fast.warming(Run("jetspec", fast.config("jetspec", budget=4, width=3, depth=4, max_new_tokens=3,
                                                        temperature=0.8), run.prompt_ids))  # sampling: no steps


@pytest.mark.gpu
def test_shared_graphed_engine_on_gpu():
    """On CUDA the app shares one graphed FastDecoder: requests from several threads (as Gradio
    runs them) and a stopped stream still give the reference decoder's answers."""
    from conftest import tiny_hf
    from jetspec_core.drafter import HeadDrafter
    from jetspec_core.loading import Loaded, make_decoder, random_head
    from jetspec_core.target import target_from_hf

    from app.session import Run, Studio

    t = target_from_hf(tiny_hf("llama").to("cuda"))
    head = random_head(t)
    fast = Studio(Loaded(t, make_decoder(t, HeadDrafter(head, t.model), "auto"), "random"))
    ref = Studio(Loaded(t, make_decoder(t, HeadDrafter(head, t.model), "reference"), "random"))
    assert fast.engine is not None and fast.defaults.budget == 64
    assert any("batch-invariant kernels" in text for text, _ in fast.banners())   # on by default on CUDA
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], [11, 12, 13, 14]]
    for mode, budget in (("plain", 1), ("jetspec", 16), ("jetspec", 64)):
        cfg = fast.config(mode, budget=budget, max_new_tokens=32)
        refs = [ref.run(mode, p, cfg).token_ids for p in prompts]
        runs = [Run(mode, cfg, p) for p in prompts]
        threads = [threading.Thread(target=lambda r=r: list(fast.stream(r))) for r in runs]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert [r.token_ids for r in runs] == refs, (mode, budget)
        gen = fast.stream(Run(mode, cfg, prompts[0]))
        next(gen)
        gen.close()
        assert fast.run(mode, prompts[0], cfg).token_ids == refs[0] and not fast._engine_lock.locked()


def test_cancel_mid_stream_then_generate_equals_fresh_run(studio):
    from app.session import Run

    ids = studio.encode(PROMPT)
    cfg = studio.config("jetspec", budget=4, max_new_tokens=5)
    fresh = studio.run("jetspec", ids, cfg).token_ids
    cancelled = Run("jetspec", cfg, ids)
    gen = studio.stream(cancelled)
    next(gen), next(gen)
    gen.close()  # what Gradio does to a generator when the user presses Stop or disconnects
    assert len(cancelled.records) == 2
    assert studio.run("jetspec", ids, cfg).token_ids == fresh


def test_time_limit_and_out_of_memory_become_messages(loaded, studio):
    from dataclasses import replace

    import torch

    from app.session import Run, Studio
    from jetspec_core.errors import JetSpecError

    ids = studio.encode(PROMPT)
    cfg = studio.config("plain", max_new_tokens=5)
    run = Studio(loaded, limits=replace(studio.limits, timeout_s=0.0)).run("plain", ids, cfg)
    assert len(run.records) == 1 and run.stopped == "timeout" and run.summary()["finished"] == "timeout"

    class Exhausted:
        def stream(self, *a):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            yield

    class OutOfMemory(Studio):
        def new_decoder(self, mode):
            return Exhausted()

    with pytest.raises(JetSpecError, match="out of memory on cpu .*lower the budget"):
        list(OutOfMemory(loaded).stream(Run("plain", cfg, ids)))


def test_parser_defaults_are_safe():
    from app.server import build_parser

    a = build_parser().parse_args([])
    assert a.host == "127.0.0.1" and not a.trust_remote_code and a.concurrency == 1


# ---------------------------------------------------------------- startup faults → exit 2

@pytest.fixture(scope="module")
def bad_heads(embedded, tmp_path_factory):
    from conftest import tiny_hf
    from jetspec_core.head import DraftHead, HeadConfig
    from jetspec_core.loading import random_head
    from jetspec_core.target import target_from_hf

    root = tmp_path_factory.mktemp("heads")
    corrupt = root / "corrupt"
    random_head(embedded, num_layers=1).save(corrupt)
    w = corrupt / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    tiny = target_from_hf(tiny_hf("llama"))
    other = root / "other-target"
    DraftHead(HeadConfig.for_target(tiny.shape, mask_token_id=0, num_layers=1)).save(other)
    return corrupt, other


def test_startup_faults_exit_2_with_a_message(bad_heads, tmp_path):
    import os

    corrupt, other = bad_heads
    cases = [
        (["--head", str(corrupt)], {}, [str(corrupt / "model.safetensors"), "corrupt or truncated", "fix:"]),
        (["--head", str(other)], {}, [str(other), "does not fit the target", "fix:"]),
        (["--head", str(tmp_path / "nope")], {}, ["does not exist", "fix:"]),
        ([], {"JETSPEC_GGUF": str(tmp_path / "missing.gguf")}, ["JETSPEC_GGUF points at", "missing.gguf", "fix:"]),
        (["--concurrency", "0"], {}, ["--concurrency"]),
    ]
    procs = [subprocess.Popen([sys.executable, "app.py", "--device", "cpu", "--port", "9", *args], cwd=ROOT,
                              env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args, env, _ in cases]
    for p, (args, _, words) in zip(procs, cases):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 2, (args, err[-500:])
        line = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and all(w in line[0] for w in words), (args, err[-500:])
        assert "Traceback" not in err and "Running on" not in out


def test_ui_defaults_per_device():
    """The measured defaults: CPU budget 16 with the head's calibrated scores; GPU budget 64, K = 16,
    raw scores (on the H200 the calibrated tree step cost more than its τ gained)."""
    from app.session import ui_defaults

    cpu, gpu = ui_defaults("cpu"), ui_defaults("cuda")
    assert (cpu.budget, cpu.builder, cpu.calibrate) == (16, "topb", True)
    assert (gpu.budget, gpu.builder, gpu.width, gpu.calibrate) == (64, "topb", 16, False)
