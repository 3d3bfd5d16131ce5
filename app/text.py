"""HTML for the output text (each token tagged with its origin and round), the live stats and
the banners. Pure functions; every piece of user or model text is HTML-escaped here."""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from jetspec_core.decoder import RoundRecord

Decode = Callable[[list[int]], str]

CSS = """
.js-out { white-space: pre-wrap; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px;
          line-height: 1.7; min-height: 3em; padding: 8px; border-radius: 8px; border: 1px solid #e5e7eb; }
.js-out .tok { border-radius: 3px; padding: 1px 0; }
.js-out .draft.r0 { background: #bae6fd; } .js-out .draft.r1 { background: #a7f3d0; }
.js-out .target.r0 { background: #fed7aa; } .js-out .target.r1 { background: #fde68a; }
.js-out .plain { background: #e5e7eb; }
.js-legend { font-size: 13px; margin: 4px 0; } .js-legend span { padding: 1px 6px; border-radius: 3px; margin-right: 8px; }
.js-stats { display: flex; gap: 10px; flex-wrap: wrap; }
.js-stat { border: 1px solid #e5e7eb; border-radius: 8px; padding: 6px 12px; min-width: 90px; }
.js-stat b { display: block; font-size: 20px; } .js-stat small { color: #6b7280; }
.js-banner { padding: 10px 14px; border-radius: 8px; margin: 4px 0; font-weight: 600; }
.js-banner.warn { background: #fef3c7; border: 1px solid #f59e0b; color: #78350f; }
.js-banner.info { background: #e0f2fe; border: 1px solid #0ea5e9; color: #0c4a6e; }
"""

LEGEND = ('<div class="js-legend">'
          '<span class="tok draft r0" style="background:#bae6fd">accepted draft token</span>'
          '<span class="tok target r0" style="background:#fed7aa">target\'s bonus token</span>'
          '<span style="background:#e5e7eb">plain decoding</span> shades alternate by round; '
          'hover a token for its round</div>')


@dataclass(frozen=True)
class Piece:
    """One committed token: its text, which round made it and where it came from."""

    token: int
    text: str
    round: int
    origin: str          # "draft" (accepted draft token), "target" (bonus) or "plain"
    depth: int           # tree depth of a draft token (0 for a target token)


def token_origins(records: Sequence[RoundRecord], plain: bool = False) -> list[tuple[int, int, str, int]]:
    """(token, round, origin, depth) of every committed token, in order. A round commits the
    accepted draft tokens (depths 1..τ−1) and then the target's bonus token."""
    out = []
    for r in records:
        n_draft = len(r.accepted) - 1
        for j, t in enumerate(r.new_tokens):
            if plain:
                out.append((t, r.index, "plain", 0))
            elif j < n_draft:
                out.append((t, r.index, "draft", j + 1))
            else:
                out.append((t, r.index, "target", 0))
    return out


def token_pieces(records: Sequence[RoundRecord], decode: Decode, plain: bool = False, window: int = 8) -> list[Piece]:
    """Split the decoded text into per-token pieces. Each piece is decode(last w tokens) minus
    decode(the w−1 before), so characters that span several tokens (emoji) come out whole on the
    token that completes them, and the pieces concatenate to the decoded text."""
    origins = token_origins(records, plain)
    ids = [o[0] for o in origins]
    last = len(ids) - 1

    def text_of(lo: int, hi: int) -> str:  # an unfinished multi-byte character waits for its end
        s = decode(ids[lo:hi]) if hi > lo else ""
        return s if hi - 1 == last else s.rstrip("\ufffd")

    pieces = []
    for i, (t, rnd, origin, depth) in enumerate(origins):
        lo = max(0, i - window)
        before, now = text_of(lo, i), text_of(lo, i + 1)
        pieces.append(Piece(t, now[len(os.path.commonprefix([before, now])):], rnd, origin, depth))
    return pieces


def render_tokens(pieces: Sequence[Piece], placeholder: str = "") -> str:
    """The output as HTML: one escaped <span> per token, class by origin, shade by round parity."""
    if not pieces:
        return f'<div class="js-out"><i>{html.escape(placeholder)}</i></div>'
    spans = []
    for p in pieces:
        where = (f"round {p.round} · accepted draft token (depth {p.depth})" if p.origin == "draft"
                 else f"round {p.round} · target's bonus token" if p.origin == "target"
                 else f"step {p.round} · plain decoding")
        spans.append(f'<span class="tok {p.origin} r{p.round % 2}" title="{html.escape(where)} · id {p.token}">'
                     f'{html.escape(p.text)}</span>')
    return '<div class="js-out">' + "".join(spans) + "</div>"


def stats_html(items: Sequence[tuple[str, str, str]]) -> str:
    """Stat cards: (label, value, note)."""
    cards = "".join(f'<div class="js-stat"><small>{html.escape(k)}</small><b>{html.escape(v)}</b>'
                    f'<small>{html.escape(n)}</small></div>' for k, v, n in items)
    return f'<div class="js-stats">{cards}</div>'


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where two token lists differ (a length difference counts at
    the shorter one's end); None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement_card(plain: Sequence[int], spec: Sequence[int], greedy: bool, spec_done: bool,
                   token_text=str) -> tuple[str, str, str]:
    """Side by side: does JetSpec's output equal plain decoding's? (label, value, note) for a stat
    card. Greedy decoding must give the same tokens (exactly in fp32; bf16 may round a near-tie
    differently); sampled decoding has the target's distribution, not the same draws."""
    if not greedy:
        return ("vs plain text", "sampled", "same distribution, other draws")
    k = first_difference(plain[: len(spec)] if not spec_done else plain, spec)
    if k is None:
        return ("vs plain text", "identical" if spec_done else "identical so far", f"{len(spec)} tokens")
    if k >= len(spec) or k >= len(plain):
        return ("vs plain text", f"differs at token {k}", "one output is longer")
    return ("vs plain text", f"differs at token {k}",
            f"plain {token_text(plain[k])!r} · JetSpec {token_text(spec[k])!r}")


def live_stats(records: Sequence[RoundRecord], mode: str, speedup: float | None = None,
               note: str = "", run_id: str = "", state: str = "running",
               agreement: tuple[str, str, str] | None = None) -> str:
    """tokens/s, τ so far, rounds, tokens and (side by side) the measured speedup and whether the
    two outputs agree. The wrapper carries the generation's id and state ("running"/"done") for
    scripts and browser tests."""
    n_tok = sum(len(r.new_tokens) for r in records)
    el = records[-1].elapsed_s if records else 0.0
    tps = n_tok / el if el > 0 else 0.0
    tau = sum(r.accept_len for r in records) / len(records) if records else 0.0
    items = [("tokens/s", f"{tps:.1f}", mode), ("τ so far", f"{tau:.2f}", "accepted + 1"),
             ("rounds", str(len(records)), "target forwards"), ("tokens", str(n_tok), f"{el:.2f} s")]
    if speedup is not None:
        items.append(("speedup", f"×{speedup:.2f}", "vs plain, measured"))
    if agreement is not None:
        items.append(agreement)
    html_ = stats_html(items)
    if note:
        html_ += f'<div class="js-legend">{html.escape(note)}</div>'
    return (f'<div class="js-live" data-run="{html.escape(run_id)}" data-state="{html.escape(state)}">'
            f'{html_}</div>')


def banner(text: str, kind: str = "warn") -> str:
    return f'<div class="js-banner {kind}">{html.escape(text)}</div>'
