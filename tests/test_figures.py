"""The app's pure figure and text builders, on rounds recorded from real decoder runs (a tiny
random llama with an oracle drafter, so accepted paths are long and branch off the top-1 chain)."""
import dataclasses
import math

import pytest

from conftest import OracleDrafter, tiny_hf
from jetspec_core.config import DecodeConfig
from jetspec_core.decoder import Decoder
from jetspec_core.target import target_from_hf

from app import figures as F
from app.text import Piece, agreement_card, first_difference, live_stats, render_tokens, token_origins, token_pieces

PROMPT = [3, 14, 15, 92, 65, 35]


@pytest.fixture(scope="module")
def tiny():
    return target_from_hf(tiny_hf("llama", seed=1))


@pytest.fixture(scope="module")
def rounds(tiny):
    """Recorded rounds of three builders (accum_logp, topb, top2gap) plus a plain run."""
    plain = list(Decoder(tiny).stream(PROMPT, DecodeConfig(mode="plain", max_new_tokens=28, stop_at_eos=False)))
    cont = [t for r in plain for t in r.new_tokens]
    out = {"plain": plain}
    for builder in ("accum_logp", "topb", "top2gap"):
        dec = Decoder(tiny, OracleDrafter(len(PROMPT), cont, tiny.shape.vocab_size))
        cfg = DecodeConfig(budget=24, builder=builder, max_new_tokens=28, stop_at_eos=False)
        out[builder] = list(dec.stream(PROMPT, cfg))
    assert max(r.accept_len for r in out["accum_logp"]) >= 3, "the oracle should give long accepted paths"
    return out


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def segments(tr):
    """Line segments of a None-separated lines trace as ((x0, y0), (x1, y1)) pairs."""
    xs, ys = list(tr.x), list(tr.y)
    segs = []
    for i in range(0, len(xs), 3):
        assert xs[i + 2] is None and ys[i + 2] is None
        segs.append(((xs[i], ys[i]), (xs[i + 1], ys[i + 1])))
    return segs


@pytest.mark.parametrize("builder", ["accum_logp", "topb", "top2gap"])
def test_tree_figure_nodes_edges_and_accepted_path(rounds, builder):
    for rec in rounds[builder]:
        fig = F.tree_figure(rec, lambda t: f"tok{t}")
        n = len(rec.tokens)
        nodes = trace(fig, "nodes")
        assert len(nodes.x) == n == len(nodes.y) == fig.layout.meta["nodes"]
        assert list(nodes.customdata) == list(range(n))
        assert list(nodes.x) == [float(d) for d in rec.depth]          # depth on the x axis
        pos = {i: (nodes.x[i], nodes.y[i]) for i in range(n)}
        assert len(set(pos.values())) == n, "two nodes drawn on top of each other"
        # every tree edge is drawn once, between the right nodes
        edges = segments(trace(fig, "edges"))
        assert sorted(edges) == sorted((pos[p], pos[i]) for i, p in enumerate(rec.parents) if p >= 0)
        # highlighted edges are exactly the accepted path
        path = rec.accepted
        took = {1: "1 draft token accepted"}.get(len(path) - 1, f"{len(path) - 1} draft tokens accepted")
        assert f"{n} nodes, {took} (τ = {len(path)})" in fig.layout.title.text
        acc = trace(fig, "accepted path")
        assert [tuple(e) for e in acc.meta["edges"]] == list(zip(path, path[1:]))
        assert segments(acc) == [(pos[a], pos[b]) for a, b in zip(path, path[1:])]
        widths = list(nodes.marker.line.width)
        assert [i for i in range(n) if widths[i] == 3] == sorted(path)
        # the target's choice (bonus) sits one depth past the last accepted node
        bonus = trace(fig, "target's choice")
        assert list(bonus.text) == [f"tok{rec.bonus}"] and bonus.x[0] == rec.depth[path[-1]] + 1


def test_tree_view_shows_nodes_deeper_than_the_accepted_path(rounds):
    """A round whose draft was rejected at depth 1 still shows its whole tree: the x axis reaches
    the deepest node, not only the bonus token one depth past the root."""
    rec = max(rounds["topb"], key=lambda r: max(r.depth))
    assert max(rec.depth) >= 3
    rejected = dataclasses.replace(rec, accepted=[0])
    for r in (rec, rejected):
        fig = F.tree_figure(r)
        lo, hi = fig.layout.xaxis.range
        assert lo < 0 and hi > max(max(r.depth), r.depth[r.accepted[-1]] + 1)
    assert "0 draft tokens accepted (τ = 1)" in F.tree_figure(rejected).layout.title.text


def test_plain_step_draws_no_score_colour_bar(rounds):
    """Plain decoding's root-only tree has no draft scores to colour: no colour bar; a tree has one."""
    assert not trace(F.tree_figure(rounds["plain"][0]), "nodes").marker.showscale
    assert trace(F.tree_figure(rounds["topb"][0]), "nodes").marker.showscale


def test_tree_colours_follow_cumulative_logprob(rounds):
    rec = max(rounds["accum_logp"], key=lambda r: len(set(r.cum_logp)))
    nodes = trace(F.tree_figure(rec), "nodes")
    assert list(nodes.marker.color) == pytest.approx(rec.cum_logp)
    assert nodes.marker.showscale and nodes.marker.colorbar.title.text
    assert nodes.marker.cmax == 0.0 and nodes.marker.cmin == pytest.approx(min(rec.cum_logp))
    # colour order = score order: a child is never brighter than its parent (log-probs <= 0)
    col = list(nodes.marker.color)
    assert all(col[i] <= col[p] + 1e-6 for i, p in enumerate(rec.parents) if p >= 0)


def test_tree_layout_centres_parents_on_children(rounds):
    rec = rounds["topb"][0]
    pos = F.tree_layout(rec.parents, rec.rank)
    kids = {}
    for i, p in enumerate(rec.parents):
        if p >= 0:
            kids.setdefault(p, []).append(i)
    for p, ks in kids.items():
        assert pos[p][1] == pytest.approx(sum(pos[k][1] for k in ks) / len(ks))
        ranks = [rec.rank[k] for k in sorted(ks, key=lambda k: pos[k][1])]
        assert ranks == sorted(ranks), "siblings are drawn in rank order"


def test_hover_makes_whitespace_visible_and_escapes_html(rounds):
    rec = rounds["accum_logp"][0]
    fig = F.tree_figure(rec, lambda t: " <b>x</b>\n")
    hover = trace(fig, "nodes").hovertext[1]
    assert "␣&lt;b&gt;x&lt;/b&gt;⏎" in hover and "<b>x</b>" not in hover
    for field in ("depth", "rank", "draft p", "cum log-prob", "target p"):
        assert field in hover
    i = 1
    assert f"draft p {math.exp(rec.draft_logp[i]):.3f}" in hover and f"target p {rec.target_prob[i]:.3f}" in hover


def test_round_charts_count_what_the_records_say(rounds):
    recs = rounds["accum_logp"]
    taus = [r.accept_len for r in recs]
    bars = F.tau_figure(recs).data[0]
    assert list(bars.y) == taus
    assert F.tau_figure(recs).data[1].y[-1] == pytest.approx(sum(taus) / len(taus))
    hist = F.accept_histogram(recs).data[0]
    assert sum(hist.y) == len(recs) and list(hist.x) == list(range(1, max(taus) + 1))
    assert all(c == taus.count(x) for x, c in zip(hist.x, hist.y))
    present, acc = F.acceptance_grid(recs)
    assert sum(map(sum, present)) == sum(len(r.tokens) - 1 for r in recs)
    assert sum(map(sum, acc)) == sum(t - 1 for t in taus)
    heat = F.acceptance_heatmap(recs).data[0]
    assert heat.z[0][0] == pytest.approx(acc[0][0] / present[0][0])
    exp = F.expected_vs_realised(recs)
    assert list(exp.data[0].y) == [r.expected_tau for r in recs] and list(exp.data[1].y) == taus
    assert "deterministic" in exp.layout.title.text                  # greedy rounds: the two lines coincide
    sampled = [dataclasses.replace(r, expected_tau=r.accept_len - 0.5) for r in recs]
    assert "deterministic" not in F.expected_vs_realised(sampled).layout.title.text
    split = F.time_split_figure(recs)
    assert [t.name for t in split.data] == list(F.PHASES)
    assert sum(split.data[2].y) == pytest.approx(1000 * sum(r.timings["verify"] for r in recs))


def test_throughput_and_speedup_are_measured_from_records(rounds):
    jet, plain = rounds["accum_logp"], rounds["plain"]
    fig = F.throughput_figure({"jetspec": jet, "plain": plain})
    s = fig.layout.meta["speedup"]
    assert s == pytest.approx(F.tokens_per_s(jet) / F.tokens_per_s(plain))
    assert f"speedup ×{s:.2f}" in fig.layout.title.text
    assert fig.data[0].y[-1] == sum(len(r.new_tokens) for r in jet)
    assert "speedup" not in (F.throughput_figure({"jetspec": jet}).layout.meta or {})


def test_sweep_figure_plots_tau_and_tokens_per_s():
    rows = [{"budget": b, "tau": 1 + b / 64, "tokens_per_s": 10 + b / 8} for b in (8, 16, 32)]
    fig = F.sweep_figure(rows, plain_tps=9.0)
    assert list(fig.data[0].x) == [8, 16, 32] and list(fig.data[0].y) == [r["tau"] for r in rows]
    assert list(fig.data[1].y) == [r["tokens_per_s"] for r in rows] and fig.data[2].y[0] == 9.0
    assert fig.layout.yaxis.rangemode == fig.layout.yaxis2.rangemode == "tozero"   # both axes start at 0


def test_empty_inputs_give_placeholders():
    for fn in (F.tau_figure, F.accept_histogram, F.acceptance_heatmap, F.expected_vs_realised,
               F.time_split_figure):
        assert len(fn([]).data) == 0
    assert len(F.throughput_figure({}).data) == 0 and len(F.sweep_figure([]).data) == 0


# ---------------------------------------------------------------- text rendering

def test_token_origins_follow_the_accepted_path(rounds):
    recs = rounds["accum_logp"]
    origins = token_origins(recs)
    assert [o[0] for o in origins] == [t for r in recs for t in r.new_tokens]
    for r in recs:
        mine = [o for o in origins if o[1] == r.index]
        n_draft = min(r.accept_len - 1, len(r.new_tokens))
        assert [o[2] for o in mine] == ["draft"] * n_draft + ["target"] * (len(r.new_tokens) - n_draft)
        assert [o[3] for o in mine[:n_draft]] == list(range(1, n_draft + 1))
    assert {o[2] for o in token_origins(rounds["plain"], plain=True)} == {"plain"}


def test_token_pieces_keep_multibyte_characters_whole(rounds):
    # a byte-level "tokenizer": token t is one byte of this text, so the emoji spans 4 tokens
    data = "hé 😀 <b>".encode()
    recs = rounds["plain"][: len(data)]
    recs = [type(r)(**{**r.to_dict(), "new_tokens": [i]}) for i, r in enumerate(recs)]
    decode = lambda ids: bytes(data[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    pieces = token_pieces(recs, decode, plain=True)
    assert "".join(p.text for p in pieces) == data.decode()
    assert not any("\ufffd" in p.text for p in pieces)
    assert "😀" in [p.text for p in pieces]


def test_render_tokens_escapes_html():
    html = render_tokens([Piece(1, "<script>alert(1)</script>", 0, "target", 0),
                          Piece(2, ' "x" & y', 1, "draft", 1)])
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;x&quot; &amp; y" in html
    assert 'class="tok target r0"' in html and 'class="tok draft r1"' in html
    assert "round 1 · accepted draft token (depth 1)" in html


def test_side_by_side_agreement_card():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1 and first_difference([1, 2], [1, 2, 3]) == 2
    assert agreement_card([1, 2, 3], [1, 2, 3], True, True) == ("vs plain text", "identical", "3 tokens")
    # JetSpec still running: only its prefix so far is compared
    assert agreement_card([1, 2, 3, 4], [1, 2], True, False)[1] == "identical so far"
    label, value, note = agreement_card([1, 2, 3], [1, 9, 3], True, True, token_text=lambda t: f"<{t}>")
    assert value == "differs at token 1" and note == "plain '<2>' · JetSpec '<9>'"
    assert agreement_card([1, 2, 3, 4], [1, 2], True, True)[2] == "one output is longer"
    assert agreement_card([1, 2], [7, 7], False, True)[1] == "sampled"
    card = live_stats([], "jetspec", 1.5, agreement=("vs plain text", "identical", "3 tokens"))
    assert "×1.50" in card and "identical" in card
