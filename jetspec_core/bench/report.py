"""The acceptance bench as one self-contained Plotly HTML page (plotly.js inlined, no CDN).

Pure functions from the results dict (what `bench` writes as JSON) to figures and HTML, so a
report can be rebuilt later from the JSON alone (`bench report results.json`) — e.g. on a
machine where the bench ran without plotly.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..errors import JetSpecError


def _runs(results: dict) -> list[dict]:
    runs = results.get("runs")
    if not isinstance(runs, list) or not runs:
        raise JetSpecError("the results hold no runs (is this a file written by `bench`?)")
    return runs


def common_subset_tau(results: dict) -> dict[str, dict[str, float]]:
    """τ of every config of a dataset over the prompts that all its configs ran (fair comparison)."""
    out: dict[str, dict[str, float]] = {}
    by_ds: dict[str, list[dict]] = {}
    for run in _runs(results):
        by_ds.setdefault(run["dataset"], []).append(run)
    for ds, runs in by_ds.items():
        ids = set.intersection(*[{r["id"] for r in run["prompts"]} for run in runs])
        out[ds] = {}
        for run in runs:
            rows = [r for r in run["prompts"] if r["id"] in ids]
            rounds = sum(r["rounds"] for r in rows)
            out[ds][run["config_name"]] = sum(r["tau"] * r["rounds"] for r in rows) / max(1, rounds)
        out[ds]["_prompts"] = len(ids)
    return out


def figures(results: dict) -> list:
    import plotly.graph_objects as go

    runs = _runs(results)
    figs = []
    fig = go.Figure()
    for run in runs:
        cats = run["summary"].get("tau_per_category", {})
        fig.add_bar(name=f"{run['dataset']} · {run['config_name']}", x=list(cats), y=list(cats.values()))
    fig.update_layout(title="τ (acceptance length) per category", yaxis_title="τ", barmode="group")
    figs.append(fig)
    fig = go.Figure()
    for run in runs:
        reach = run["summary"].get("reach_per_depth", [])
        fig.add_scatter(name=f"{run['dataset']} · {run['config_name']}", x=list(range(1, len(reach) + 1)), y=reach,
                        mode="lines+markers")
    fig.update_layout(title="Rounds that accepted at least d draft tokens", xaxis_title="d (depth)",
                      yaxis_title="fraction of rounds", yaxis_range=[0, 1])
    figs.append(fig)
    fig = go.Figure()
    for run in runs:
        fig.add_box(name=f"{run['dataset']} · {run['config_name']}", y=[r["tau"] for r in run["prompts"]],
                    boxpoints="all", jitter=0.4, text=[r["id"] for r in run["prompts"]])
    fig.update_layout(title="τ per prompt", yaxis_title="τ")
    figs.append(fig)
    common = common_subset_tau(results)
    head = ["dataset", "config", "prompts", "τ", "τ (common prompts)", "expected τ", "tokens/s", "rounds"]
    cells = [[], [], [], [], [], [], [], []]
    for run in runs:
        s = run["summary"]
        for col, v in zip(cells, [run["dataset"], run["config_name"], s.get("prompts", 0), f"{s.get('tau', 0):.2f}",
                                  f"{common[run['dataset']][run['config_name']]:.2f} "
                                  f"(n={common[run['dataset']]['_prompts']})",
                                  f"{s.get('expected_tau', 0):.2f}", f"{s.get('tokens_per_s', 0):.1f}",
                                  s.get("rounds", 0)]):
            col.append(v)
    figs.insert(0, go.Figure(go.Table(header={"values": head}, cells={"values": cells})))
    figs[0].update_layout(title="Summary", height=120 + 30 * len(runs))
    return figs


def render_html(results: dict) -> str:
    meta = results.get("meta", {})
    parts = []
    for i, fig in enumerate(figures(results)):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    info = "<br>".join(f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}" for k, v in meta.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>JetSpec acceptance bench</title></head>"
            f"<body style='font-family:sans-serif'><h1>JetSpec acceptance bench</h1><p>{info}</p>"
            + "\n".join(parts) + "</body></html>")


def write_report(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_html(results), encoding="utf-8")
    return path


def load_results(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise JetSpecError(f"results file {p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise JetSpecError(f"{p} is not a results JSON ({e.msg})") from e
