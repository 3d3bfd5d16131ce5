"""Pure functions from round records to Plotly figures (no Gradio, no model).

Every figure is drawn from the exact arrays of the `RoundRecord`s that the decoder yielded: the
tree figure plots `tokens/parents/depth` as the verifier saw them, highlights `accepted`, and
colours nodes by `cum_logp`. Tests call these functions on recorded rounds without a server.
"""
from __future__ import annotations

import html
import math
from typing import Callable, Iterable, Sequence

import networkx as nx
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from jetspec_core.decoder import RoundRecord

TokenText = Callable[[int], str]
PHASES = ("draft", "tree", "verify", "accept")
PHASE_COLOURS = {"draft": "#8b5cf6", "tree": "#f59e0b", "verify": "#0ea5e9", "accept": "#10b981"}
ACCEPTED_COLOUR = "#dc2626"
BONUS_COLOUR = "#f97316"
NODE_SCALE = "Viridis"
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=360)


def visible_ws(text: str) -> str:
    """Whitespace made visible (space ␣, newline ⏎, tab ⇥), for labels and hover text."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "↵")


def _label(token_text: TokenText | None, tid: int) -> str:
    try:
        s = token_text(tid) if token_text else str(tid)
    except Exception:  # a label must never break a figure
        s = str(tid)
    return html.escape(visible_ws(s))


def empty_figure(title: str, height: int = 360) -> go.Figure:
    """A placeholder with a message (before the first run, or when there is nothing to show)."""
    fig = go.Figure()
    fig.update_layout(**{**_LAYOUT, "height": height}, title=title,
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


# ---------------------------------------------------------------- tree of one round

def tree_layout(parents: Sequence[int], rank: Sequence[int]) -> dict[int, tuple[float, float]]:
    """(x, y) per node: x = depth; leaves spaced 1 apart in depth-first order (siblings by rank),
    every inner node centred on its children. Built on a networkx DiGraph of the tree."""
    g = nx.DiGraph()
    g.add_nodes_from(range(len(parents)))
    g.add_edges_from((p, i) for i, p in enumerate(parents) if p >= 0)
    by_rank = lambda nodes: sorted(nodes, key=lambda n: (rank[n], n))  # noqa: E731
    y: dict[int, float] = {}
    depth: dict[int, int] = {0: 0}
    for p, c in nx.dfs_edges(g, 0, sort_neighbors=by_rank):
        depth[c] = depth[p] + 1
    leaf = 0
    for n in nx.dfs_postorder_nodes(g, 0, sort_neighbors=by_rank):
        kids = list(g.successors(n))
        if kids:
            y[n] = sum(y[k] for k in kids) / len(kids)
        else:
            y[n] = float(leaf)
            leaf += 1
    return {n: (float(depth[n]), y[n]) for n in range(len(parents))}


def _segments(pairs: Iterable[tuple[int, int]], pos) -> tuple[list, list]:
    xs, ys = [], []
    for a, b in pairs:
        xs += [pos[a][0], pos[b][0], None]
        ys += [pos[a][1], pos[b][1], None]
    return xs, ys


def tree_figure(rec: RoundRecord, token_text: TokenText | None = None, title: str | None = None) -> go.Figure:
    """The draft tree of one round.

    Traces (by name): "edges" (all parent→child links), "accepted path" (exactly the accepted
    edges, highlighted), "nodes" (one marker per tree node, coloured by cumulative draft
    log-prob, with a colour bar) and "target's choice" (the bonus token the target picked after
    the accepted path, where it diverged from the draft). `customdata` of "nodes" is the node
    index; `meta` of "accepted path" lists its edges as [parent, child] pairs.
    """
    n = len(rec.tokens)
    pos = tree_layout(rec.parents, rec.rank)
    accepted = set(rec.accepted)
    acc_edges = [(rec.accepted[i - 1], rec.accepted[i]) for i in range(1, len(rec.accepted))]
    all_edges = [(p, i) for i, p in enumerate(rec.parents) if p >= 0]

    fig = go.Figure()
    ex, ey = _segments(all_edges, pos)
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", name="edges", hoverinfo="skip",
                             line=dict(color="#cbd5e1", width=1)))
    ax, ay = _segments(acc_edges, pos)
    fig.add_trace(go.Scatter(x=ax, y=ay, mode="lines", name="accepted path", hoverinfo="skip",
                             line=dict(color=ACCEPTED_COLOUR, width=4),
                             meta={"edges": [list(e) for e in acc_edges]}))

    labels = [_label(token_text, t) for t in rec.tokens]
    hover = []
    for i in range(n):
        if i == 0:
            hover.append(f"<b>root</b> (anchor) {labels[0]}<br>position {rec.past_len}<br>"
                         f"target's choice here: {_label(token_text, rec.target_top[0])}")
            continue
        hover.append(
            f"<b>{labels[i]}</b> (id {rec.tokens[i]})<br>depth {rec.depth[i]} · rank {rec.rank[i]}<br>"
            f"draft p {math.exp(rec.draft_logp[i]):.3f} · cum log-prob {rec.cum_logp[i]:.2f}<br>"
            f"target p {rec.target_prob[i]:.3f}<br>"
            f"target's choice here: {_label(token_text, rec.target_top[i])}<br>"
            + ("<b>accepted</b>" if i in accepted else "not accepted"))
    size = 16 if n <= 24 else 11 if n <= 80 else 7
    show_text = n <= 40
    cmin = min(rec.cum_logp) if n > 1 else -1.0
    fig.add_trace(go.Scatter(
        x=[pos[i][0] for i in range(n)], y=[pos[i][1] for i in range(n)],
        mode="markers+text" if show_text else "markers", name="nodes",
        text=labels if show_text else None, textposition="middle right", textfont=dict(size=10),
        customdata=list(range(n)), hovertext=hover, hoverinfo="text",
        marker=dict(size=size, color=list(rec.cum_logp), colorscale=NODE_SCALE, cmin=min(cmin, -1e-6),
                    cmax=0.0, showscale=n > 1,   # a root-only tree (plain decoding) has no draft scores
                    colorbar=dict(title=dict(text="cum. draft<br>log-prob"), thickness=12),
                    line=dict(color=[ACCEPTED_COLOUR if i in accepted else "#ffffff" for i in range(n)],
                              width=[3 if i in accepted else 1 for i in range(n)]))))

    # the bonus token sits in its own lane below the tree, one depth past the accepted path
    last = rec.accepted[-1]
    bx, by = pos[last][0] + 1, max(y for _, y in pos.values()) + 1.0
    blabel = _label(token_text, rec.bonus)
    fig.add_trace(go.Scatter(x=[pos[last][0], bx], y=[pos[last][1], by], mode="lines", showlegend=False,
                             hoverinfo="skip", line=dict(color=BONUS_COLOUR, width=2, dash="dot")))
    fig.add_trace(go.Scatter(
        x=[bx], y=[by], mode="markers+text", name="target's choice", text=[blabel],
        textposition="middle right", hovertext=[f"<b>{blabel}</b> (id {rec.bonus})<br>the target's token "
                                                "after the accepted path (bonus)"],
        hoverinfo="text", marker=dict(symbol="star", size=18, color=BONUS_COLOUR,
                                      line=dict(color="#7c2d12", width=1))))
    tau = len(rec.accepted)
    lanes = by + 1
    drafted = f"{tau - 1} draft token{'' if tau == 2 else 's'}"
    fig.update_layout(
        **{**_LAYOUT, "height": int(min(820, max(440, 22 * lanes + 120)))},
        title=title or f"Round {rec.index}: {n} nodes, {drafted} accepted (τ = {tau})",
        xaxis=dict(title="depth", dtick=1, zeroline=False, range=[-0.3, max(bx, max(rec.depth)) + 0.9]),
        yaxis=dict(visible=False, autorange="reversed"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        meta={"round": rec.index, "nodes": n, "accepted": list(rec.accepted)})
    return fig


# ---------------------------------------------------------------- charts over rounds

def tau_figure(records: Sequence[RoundRecord]) -> go.Figure:
    """τ (accepted + 1) of every round, with its running mean."""
    if not records:
        return empty_figure("τ per round")
    x = [r.index for r in records]
    tau = [r.accept_len for r in records]
    mean = [sum(tau[: i + 1]) / (i + 1) for i in range(len(tau))]
    fig = go.Figure([go.Bar(x=x, y=tau, name="τ of the round", marker_color="#0ea5e9"),
                     go.Scatter(x=x, y=mean, name="mean so far", mode="lines", line=dict(color="#111827"))])
    fig.update_layout(**_LAYOUT, title=f"τ per round (mean {mean[-1]:.2f})", xaxis_title="round",
                      yaxis_title="τ", legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def accept_histogram(records: Sequence[RoundRecord]) -> go.Figure:
    """How many rounds reached each acceptance length τ."""
    if not records:
        return empty_figure("acceptance length")
    tau = [r.accept_len for r in records]
    xs = list(range(1, max(tau) + 1))
    counts = [tau.count(v) for v in xs]
    fig = go.Figure(go.Bar(x=xs, y=counts, marker_color="#6366f1", name="rounds"))
    fig.update_layout(**_LAYOUT, title="acceptance length histogram", xaxis=dict(title="τ", dtick=1),
                      yaxis_title="rounds")
    return fig


def acceptance_grid(records: Sequence[RoundRecord]) -> tuple[list[list[int]], list[list[int]]]:
    """(present, accepted) counts indexed [rank][depth-1] over all non-root nodes of all rounds."""
    nodes = [(r.depth[i], r.rank[i], i in set(r.accepted)) for r in records for i in range(1, len(r.tokens))]
    if not nodes:
        return [], []
    d_max = max(d for d, _, _ in nodes)
    k_max = max(k for _, k, _ in nodes) + 1
    present = [[0] * d_max for _ in range(k_max)]
    acc = [[0] * d_max for _ in range(k_max)]
    for d, k, a in nodes:
        present[k][d - 1] += 1
        acc[k][d - 1] += int(a)
    return present, acc


def acceptance_heatmap(records: Sequence[RoundRecord]) -> go.Figure:
    """Share of drafted nodes at (depth, rank) that the target accepted."""
    present, acc = acceptance_grid(records)
    if not present:
        return empty_figure("depth × rank acceptance (no draft nodes)")
    z = [[(a / p if p else None) for a, p in zip(ra, rp)] for ra, rp in zip(acc, present)]
    text = [[f"{a}/{p}" for a, p in zip(ra, rp)] for ra, rp in zip(acc, present)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, len(present[0]) + 1)), y=list(range(len(present))), zmin=0, zmax=1,
        colorscale=[[0, "#fecaca"], [0.5, "#93c5fd"], [1, "#1e3a8a"]], text=text, colorbar=dict(title=dict(text="accepted"), thickness=12),
        hovertemplate="depth %{x} · rank %{y}<br>accepted %{text} (%{z:.2f})<extra></extra>"))
    fig.update_layout(**_LAYOUT, title="depth × rank acceptance", xaxis=dict(title="depth", dtick=1),
                      yaxis=dict(title="rank", dtick=1, autorange="reversed"))
    return fig


def expected_vs_realised(records: Sequence[RoundRecord]) -> go.Figure:
    """Expected τ of each tree (under the target's probabilities) next to the realised τ."""
    if not records:
        return empty_figure("expected vs realised τ")
    x = [r.index for r in records]
    exp_t = [r.expected_tau for r in records]
    real = [r.accept_len for r in records]
    fig = go.Figure([
        go.Scatter(x=x, y=exp_t, name="expected τ", mode="lines+markers", line=dict(color="#f59e0b")),
        go.Scatter(x=x, y=real, name="realised τ", mode="lines+markers", line=dict(color="#0ea5e9"))])
    title = f"expected τ {sum(exp_t) / len(exp_t):.2f} vs realised τ {sum(real) / len(real):.2f}"
    layout = dict(_LAYOUT)
    if all(abs(e - r) < 1e-6 for e, r in zip(exp_t, real)):  # greedy: each node is taken or not for sure
        title += "<br><sup>greedy acceptance is deterministic: the lines coincide (sample to compare)</sup>"
        layout["margin"] = dict(layout["margin"], t=85)
    fig.update_layout(**layout, xaxis_title="round", yaxis_title="τ", title=title,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def time_split_figure(records: Sequence[RoundRecord]) -> go.Figure:
    """Milliseconds per round spent in each phase (stacked), shares of the total in the title."""
    if not records:
        return empty_figure("time split of a round")
    x = [r.index for r in records]
    total = {p: sum(r.timings[p] for r in records) for p in PHASES}
    whole = sum(total.values()) or 1.0
    fig = go.Figure([go.Bar(x=x, y=[1000 * r.timings[p] for r in records], name=p,
                            marker_color=PHASE_COLOURS[p]) for p in PHASES])
    shares = " · ".join(f"{p} {100 * total[p] / whole:.0f}%" for p in PHASES)
    fig.update_layout(**_LAYOUT, barmode="stack", title=f"time split: {shares}", xaxis_title="round",
                      yaxis_title="ms", legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def throughput_curve(records: Sequence[RoundRecord]) -> tuple[list[float], list[int]]:
    """(elapsed seconds, tokens generated so far) after each round."""
    xs, ys, n = [], [], 0
    for r in records:
        n += len(r.new_tokens)
        xs.append(r.elapsed_s)
        ys.append(n)
    return xs, ys


def tokens_per_s(records: Sequence[RoundRecord]) -> float:
    if not records:
        return 0.0
    return sum(len(r.new_tokens) for r in records) / max(records[-1].elapsed_s, 1e-9)


def throughput_figure(runs: dict[str, Sequence[RoundRecord]]) -> go.Figure:
    """Tokens generated vs wall time for each run ("jetspec", "plain"); with both, the measured
    speedup (JetSpec tok/s ÷ plain tok/s) is in the title and in `layout.meta`."""
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return empty_figure("tokens/s")
    colours = {"jetspec": "#0ea5e9", "plain": "#9ca3af"}
    fig = go.Figure()
    parts = []
    for mode, recs in runs.items():
        xs, ys = throughput_curve(recs)
        tps = tokens_per_s(recs)
        parts.append(f"{mode} {tps:.1f} tok/s")
        fig.add_trace(go.Scatter(x=[0.0] + xs, y=[0] + ys, mode="lines+markers", name=f"{mode} ({tps:.1f} tok/s)",
                                 line=dict(color=colours.get(mode, "#111827"), width=3)))
    meta = {}
    if "jetspec" in runs and "plain" in runs:
        s = speedup(runs["jetspec"], runs["plain"])
        meta["speedup"] = s
        parts.append(f"speedup ×{s:.2f}")
    fig.update_layout(**_LAYOUT, title=" · ".join(parts), xaxis_title="seconds (prefill included)",
                      yaxis_title="tokens generated", meta=meta,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def speedup(jetspec: Sequence[RoundRecord], plain: Sequence[RoundRecord]) -> float:
    """Wall-clock tok/s of JetSpec ÷ tok/s of plain decoding (DESIGN §3)."""
    p = tokens_per_s(plain)
    return tokens_per_s(jetspec) / p if p > 0 else float("nan")


def sweep_figure(rows: Sequence[dict], plain_tps: float | None = None) -> go.Figure:
    """τ and tokens/s against the draft budget; rows are {budget, tau, tokens_per_s}."""
    if not rows:
        return empty_figure("budget sweep: press “Budget sweep”")
    b = [r["budget"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=b, y=[r["tau"] for r in rows], name="τ", mode="lines+markers",
                             line=dict(color="#0ea5e9", width=3)), secondary_y=False)
    fig.add_trace(go.Scatter(x=b, y=[r["tokens_per_s"] for r in rows], name="tokens/s", mode="lines+markers",
                             line=dict(color="#f97316", width=3)), secondary_y=True)
    if plain_tps:
        fig.add_trace(go.Scatter(x=[min(b), max(b)], y=[plain_tps, plain_tps], name="plain tokens/s",
                                 mode="lines", line=dict(color="#9ca3af", dash="dash")), secondary_y=True)
    fig.update_layout(**_LAYOUT, title="budget sweep: τ and tokens/s",
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    fig.update_xaxes(title_text="draft budget (nodes, root included)", type="log", tickvals=b, ticktext=[str(v) for v in b])
    fig.update_yaxes(title_text="τ", rangemode="tozero", secondary_y=False)   # from 0: small moves look small
    fig.update_yaxes(title_text="tokens/s", rangemode="tozero", secondary_y=True)
    return fig
