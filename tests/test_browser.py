"""The app in a real browser: Playwright (PyPI) driving Debian's Chromium (DESIGN §5).

Type a prompt, generate, check the drawn tree (nodes, accepted path, target's choice), scrub the
round slider, change the budget and see the node count follow, run side by side and see the
speedup, stop a run mid-stream and generate again, download the trace, run a budget sweep.
Works with the shipped head or the untrained fallback: nothing asserts acceptance lengths.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from app_server import running_app

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 300_000  # generous: CI machines are small and may be busy
PROMPT = "Name three colours."

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    log = tmp_path_factory.mktemp("app") / "app.log"
    with running_app(log_path=log) as u:  # default head resolution: shipped head, else random
        yield u, log


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def open_page(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 2200}, accept_downloads=True)
    pg.set_default_timeout(WAIT_MS)
    pg.goto(url)
    pg.wait_for_selector("#prompt textarea")
    return pg


def set_number(page, elem_id: str, value) -> None:
    """Type into a slider's or number's box; retried, since a component that is still mounting
    (an accordion just opened) can drop the first value."""
    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(20):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(200)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} did not take the value {value}")


def generate(page) -> str:
    """Click Generate and wait for the final update of this new generation; return its id."""
    before = page.get_attribute("#stats .js-live", "data-run") if page.locator("#stats .js-live").count() else ""
    page.click("#generate")
    page.wait_for_function(
        "prev => { const s = document.querySelector('#stats .js-live');"
        " return s && s.dataset.run !== prev && s.dataset.state === 'done'; }", arg=before)
    return page.get_attribute("#stats .js-live", "data-run")


def plot(page, elem_id: str) -> dict:
    """The data and layout Plotly drew in a gr.Plot (once the lazy plot has settled)."""
    return page.evaluate(
        """id => { const d = document.querySelector('#' + id + ' .js-plotly-plot');
                   if (!d || !d.data) return null;
                   return {names: d.data.map(t => t.name), layout: {title: d.layout.title && d.layout.title.text,
                           meta: d.layout.meta}, traces: d.data.map(t => ({name: t.name, n: (t.x || []).length,
                           meta: t.meta || null, widths: t.marker && t.marker.line ? t.marker.line.width : null}))}; }""",
        elem_id)


def wait_plot(page, elem_id: str, js_condition: str) -> dict:
    page.wait_for_function(
        "([id, cond]) => { const d = document.querySelector('#' + id + ' .js-plotly-plot');"
        " if (!d || !d.data || !d.layout) return false; return Function('d', 'return ' + cond)(d); }",
        arg=[elem_id, js_condition])
    return plot(page, elem_id)


def output_text(page, elem_id="output") -> str:
    return page.evaluate(f"() => Array.from(document.querySelectorAll('#{elem_id} .tok'))"
                         ".map(s => s.textContent).join('')")


def closed_runs(log) -> int:
    """Server log lines of runs whose generator was closed early (Stop or a dropped client)."""
    return Path(log).read_text().count("closed after")


def test_studio_in_the_browser(server, browser, tmp_path):
    url, log = server
    page = open_page(browser, url)
    shot = tmp_path / "studio.png"
    try:
        _flow(page, log)
        _disconnect(browser, url, log)
        if os.environ.get("JETSPEC_SCREENSHOT"):
            _showcase(page)
    finally:
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("JETSPEC_SCREENSHOT"):  # refresh docs/screenshot.png on demand
            shutil.copy(shot, Path(__file__).resolve().parent.parent / "docs" / "screenshot.png")
    assert shot.stat().st_size > 10_000


def _flow(page, log):
    from jetspec_core.loading import DEFAULT_HEAD

    shipped = (DEFAULT_HEAD / "model.safetensors").is_file()
    banners = page.inner_text("#banners")
    assert ("no trained head" in banners) != shipped and "device: cpu" in banners
    page.click("text=Sampling and length")  # open the accordion first: its fields mount lazily
    page.wait_for_selector("#seed input[type=number]")
    page.wait_for_timeout(1000)

    # bad input answers with a visible message and the page stays usable
    page.click("#generate")
    page.wait_for_selector(".toast-body:has-text('the prompt is empty')")
    page.fill("#prompt textarea", "hi " * 3000)
    page.click("#generate")
    page.wait_for_selector(".toast-body:has-text('tokens long; this server takes at most')")
    page.fill("#prompt textarea", PROMPT)
    set_number(page, "seed", -3)
    page.click("#generate")
    page.wait_for_selector(".toast-body:has-text('seed must be a non-negative integer, got -3')")
    set_number(page, "seed", 0)

    # 1. generate: the tree of the latest round is drawn from the verifier's arrays
    set_number(page, "max-new-tokens", 8)
    set_number(page, "budget", 16)
    generate(page)
    tree = wait_plot(page, "tree-plot", "d.layout.meta && d.layout.meta.nodes === 16")
    nodes = next(t for t in tree["traces"] if t["name"] == "nodes")
    assert nodes["n"] == 16
    accepted = tree["layout"]["meta"]["accepted"]
    path = next(t for t in tree["traces"] if t["name"] == "accepted path")
    assert path["meta"]["edges"] == [list(e) for e in zip(accepted, accepted[1:])]
    assert [i for i, w in enumerate(nodes["widths"]) if w == 3] == sorted(accepted)
    assert "target's choice" in tree["names"]
    assert page.locator("#tree-plot .scatterlayer .point").count() >= 17  # 16 nodes + the target's star
    first = output_text(page)
    assert first.strip() and page.locator("#output .tok").count() == 8
    for chart in ("tau-plot", "hist-plot", "heat-plot", "expected-plot", "timing-plot", "speed-plot"):
        assert plot(page, chart)["traces"], chart

    # 2. the round slider scrubs back to round 0
    rounds = tree["layout"]["meta"]["round"] + 1
    page.locator("#round input[type=range]").focus()
    page.keyboard.press("Home")
    tree0 = wait_plot(page, "tree-plot", "d.layout.meta.round === 0")
    assert tree0["layout"]["title"].startswith("Round 0") and rounds >= 1

    # 3. a smaller budget draws a smaller tree; greedy output does not change
    set_number(page, "budget", 8)
    generate(page)
    wait_plot(page, "tree-plot", "d.layout.meta.nodes === 8")
    assert output_text(page) == first

    # 4. side by side: plain then JetSpec, and the measured speedup
    page.click("#mode label:has-text('side by side')")
    generate(page)
    speed = wait_plot(page, "speed-plot", "d.layout.meta && d.layout.meta.speedup > 0")
    assert "speedup ×" in speed["layout"]["title"]
    assert output_text(page, "plain-output") == first == output_text(page)
    assert "speedup" in page.inner_text("#stats")
    assert "identical" in page.inner_text("#stats")  # greedy fp32: JetSpec gave plain's tokens

    # 5. stop mid-stream, then a new generation equals a fresh run
    page.click("#mode label:has-text('JetSpec')")
    set_number(page, "max-new-tokens", 64)
    page.click("#generate")
    page.wait_for_function("() => document.querySelectorAll('#output .tok').length >= 2 && "
                           "document.querySelector('#stats .js-live').dataset.state === 'running'")
    page.click("#stop")
    page.wait_for_timeout(1500)
    stopped = page.locator("#output .tok").count()
    assert 2 <= stopped < 64 and page.get_attribute("#stats .js-live", "data-state") == "running"
    wait_for(lambda: closed_runs(log) == 1, "the stopped run's state was not dropped")
    set_number(page, "max-new-tokens", 8)
    generate(page)
    assert output_text(page) == first

    # 6. the full trace of the last generation downloads as JSON
    with page.expect_download() as dl:
        page.click("#download")
    doc = json.loads(Path(dl.value.path()).read_text())
    run = doc["runs"]["jetspec"]
    assert len(run["token_ids"]) == 8 and len(run["rounds_trace"]) == run["rounds"]
    assert run["rounds_trace"][0]["tokens"] and "accepted" in run["rounds_trace"][0]

    # 7. budget sweep: τ and tokens/s for budgets 8..256 (4 new tokens each, to keep CI short)
    set_number(page, "max-new-tokens", 4)
    page.click("#sweep")
    sweep = wait_plot(page, "sweep-plot", "d.data.length >= 2 && d.data[0].x && d.data[0].x.length === 6")
    assert sweep["traces"][0]["name"] == "τ" and sweep["traces"][1]["name"] == "tokens/s"


def _showcase(page):
    """For docs/screenshot.png only: a code prompt, side by side, long enough to show the charts."""
    page.fill("#prompt textarea", "Write a Python function that returns the n-th Fibonacci number.")
    page.click("#mode label:has-text('side by side')")
    set_number(page, "budget", 16)
    set_number(page, "max-new-tokens", 32)
    page.click("#sweep")
    wait_plot(page, "sweep-plot", "d.data.length >= 2 && d.data[0].x && d.data[0].x.length === 6")
    set_number(page, "max-new-tokens", 96)
    generate(page)
    wait_plot(page, "speed-plot", "d.layout.meta && d.layout.meta.speedup > 0")


def _disconnect(browser, url, log):
    """A tab closed mid-stream: the server drops that request's run."""
    before = closed_runs(log)
    tab = open_page(browser, url)
    tab.fill("#prompt textarea", PROMPT)
    set_number(tab, "max-new-tokens", 64)
    tab.click("#generate")
    tab.wait_for_function("() => document.querySelectorAll('#output .tok').length >= 2")
    tab.close()
    wait_for(lambda: closed_runs(log) == before + 1, "the closed tab's run was not dropped")


def wait_for(cond, message: str, timeout: float = 60.0) -> None:
    import time

    end = time.time() + timeout
    while not cond():
        assert time.time() < end, message
        time.sleep(0.5)
