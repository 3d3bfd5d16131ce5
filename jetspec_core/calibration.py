"""Calibrated tree scores: what a draft log-prob at depth d says about acceptance.

The head gives one distribution per depth, a *marginal* over the tokens it did not see: at depth 3 it
cannot know which depth-1 and depth-2 tokens came first. A tree node is accepted only when its whole
path is, so what a builder wants for a node is P(token is the target's | its parent's path is the
target's) — and for a parallel head that is larger than the marginal at depth > 1 (once the path so
far is right, the head's top guesses deeper down are right more often than their marginal says) and
differs by depth. Ranking nodes by the product of marginals therefore spends the budget on too many
shallow siblings and too few deep nodes.

A `Calibration` maps each depth's log-probs to calibrated log-probs: a non-decreasing piecewise-linear
curve per depth over a fixed grid of log-prob knots, fitted on held-out drafts (`fit`): for every
anchor of a greedy answer and every depth whose path so far is in the top-K tree, each of the K
candidates is one (log-prob, was-it-the-target's-token) pair. A monotone map keeps each depth's
candidate order, so the builders (`topb`, `accum_logp`, ...) run unchanged on the calibrated scores and
the tree they return is still prefix-closed. Lossless either way: the scores only choose which nodes
the target verifies. Stored next to the head as `calibration.json`; `python -m jetspec_core train
calibrate` fits one.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import JetSpecError

FILE = "calibration.json"
# Knots (natural log): dense near 0, where the top candidates live.
KNOTS = (-16.0, -12.0, -9.0, -7.0, -6.0, -5.0, -4.5, -4.0, -3.5, -3.0, -2.5, -2.0, -1.6, -1.3, -1.0, -0.8,
         -0.6, -0.45, -0.3, -0.2, -0.1, -0.04, 0.0)
SLOPE = 1e-3     # added × log-prob, so that the map is strictly increasing (no ties between siblings)
FLOOR = -30.0    # calibrated log-probs never go below this


@dataclass
class Calibration:
    """knots (B,) ascending log-probs; values (D, B) calibrated log-probs at the knots, non-decreasing
    along B, per depth 1..D; meta: how it was fitted."""

    knots: torch.Tensor
    values: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        k, v = self.knots.float(), self.values.float()
        if k.dim() != 1 or v.dim() != 2 or v.shape[1] != k.numel() or k.numel() < 2:
            raise JetSpecError(f"calibration: knots (B,) and values (D, B) expected, got {tuple(k.shape)} and "
                               f"{tuple(v.shape)}")
        if not bool((k[1:] > k[:-1]).all()):
            raise JetSpecError("calibration: knots must be strictly increasing")
        if not bool(torch.isfinite(v).all()) or bool((v > 0).any()) or not bool((v[:, 1:] >= v[:, :-1]).all()):
            raise JetSpecError("calibration: values must be finite log-probs (<= 0), non-decreasing along the knots")
        self.knots, self.values = k.contiguous(), v.contiguous()
        self._lo, self._hi = float(k[0]), float(k[-1])   # host floats: `apply` never reads the device
        self._dev: dict = {}

    @property
    def depths(self) -> int:
        return int(self.values.shape[0])

    def prepare(self, dev: torch.device | str):
        """The tables on `dev` (copied once; call before capturing a CUDA graph that applies them —
        the graphed engine does — since a host-to-device copy cannot be captured)."""
        key = str(torch.device(dev))
        if key not in self._dev:
            self._dev[key] = (self.knots.to(dev), self.values.to(dev))
        return self._dev[key]

    def apply(self, lp: torch.Tensor) -> torch.Tensor:
        """lp (d, K) per-depth log-probs (row i = depth i + 1) → calibrated scores (d, K) fp32 on the
        same device; depths past the table use its last row. Tensor ops only, no host sync (once
        `prepare`d for the device: CUDA-graph safe)."""
        knots, values = self.prepare(lp.device)
        x = lp.float()
        d = x.shape[0]
        rows = values[torch.arange(d, device=lp.device).clamp(max=self.depths - 1)]      # (d, B)
        xc = x.clamp(min=self._lo, max=self._hi)
        hi = torch.bucketize(xc.contiguous(), knots).clamp(1, knots.numel() - 1)         # (d, K)
        x0, x1 = knots[hi - 1], knots[hi]
        y0, y1 = torch.gather(rows, 1, hi - 1), torch.gather(rows, 1, hi)
        y = y0 + (y1 - y0) * (xc - x0) / (x1 - x0)
        return (y + SLOPE * x).clamp(min=FLOOR, max=0.0)

    def to_json(self) -> dict:
        return {"format": "jetspec-calibration-1", "knots": self.knots.tolist(),
                "values": [[round(v, 5) for v in row] for row in self.values.tolist()], "meta": self.meta}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @staticmethod
    def load(folder: str | Path) -> "Calibration | None":
        """The folder's calibration.json, or None when it has none — or when it was fitted for other
        weights than the folder's model.safetensors (a warning then: refit with `train calibrate`)."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            cal = Calibration(torch.tensor(raw["knots"]), torch.tensor(raw["values"]), raw.get("meta", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise JetSpecError(f"{path}: not a calibration file ({e})") from None
        want, weights = cal.meta.get("head_sha256"), Path(folder) / "model.safetensors"
        if want and weights.is_file() and weights_sha256(folder) != want:
            print(f"WARNING: {path} was fitted for other head weights; tree scores stay uncalibrated "
                  "(refit: python -m jetspec_core train calibrate)", file=sys.stderr)
            return None
        return cal


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a head folder's model.safetensors (what a calibration was fitted for)."""
    h = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_pairs(logp: torch.Tensor, tokens: torch.Tensor, target: torch.Tensor,
                knots: torch.Tensor = torch.tensor(KNOTS)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fitting statistics of one answer. logp, tokens (A, D, K): the head's top-K at A anchors;
    target (A, D): the target's own next tokens after each anchor (-1 past the answer's end).
    Returns per depth and knot interval: candidate count, hits, and the sum of their log-probs —
    counting a depth only while the target's path so far is among the top-K at every depth above."""
    A, D, K = logp.shape
    hit = tokens == target[..., None]                                   # (A, D, K)
    found = hit.any(-1)                                                 # (A, D)
    reach = torch.ones(A, D, dtype=torch.bool)
    if D > 1:
        reach[:, 1:] = torch.cumprod(found[:, :-1].long(), dim=1).bool()  # path above is in the tree
    reach &= target >= 0
    B = knots.numel()
    idx = torch.bucketize(logp.float().clamp(knots[0], knots[-1]).contiguous(), knots).clamp(1, B - 1) - 1
    w = reach[..., None].expand(A, D, K).float()
    flat = (torch.arange(D)[None, :, None] * (B - 1) + idx).reshape(-1)
    n = torch.zeros(D * (B - 1)).index_add_(0, flat, w.reshape(-1)).view(D, B - 1)
    h = torch.zeros(D * (B - 1)).index_add_(0, flat, (w * hit.float()).reshape(-1)).view(D, B - 1)
    s = torch.zeros(D * (B - 1)).index_add_(0, flat, (w * logp.float()).reshape(-1)).view(D, B - 1)
    return n, h, s


def fit(n: torch.Tensor, h: torch.Tensor, s: torch.Tensor, knots: torch.Tensor = torch.tensor(KNOTS),
        prior: float = 4.0, meta: dict | None = None) -> Calibration:
    """Calibration from summed `count_pairs` statistics. Each interval's hit rate, shrunk towards its
    candidates' own mean probability with `prior` pseudo-counts (sparse intervals stay near the raw
    log-prob), is placed at the interval's mean log-prob; the knots' values interpolate those points
    and are made non-decreasing (pool-adjacent-violators, weighted by count)."""
    D, I = n.shape
    mid = (knots[1:] + knots[:-1]) / 2
    mean_lp = torch.where(n > 0, s / n.clamp(min=1e-9), mid.expand(D, I))
    rate = (h + prior * mean_lp.exp()) / (n + prior)
    values = torch.empty(D, knots.numel())
    for d in range(D):
        r = _pava(rate[d].tolist(), (n[d] + prior).tolist())
        xs, ys = mean_lp[d].tolist(), [math.log(max(v, 1e-12)) for v in r]
        values[d] = torch.tensor([_interp(float(k), xs, ys) for k in knots])
    values = torch.cummax(values.clamp(max=0.0), dim=1).values
    return Calibration(knots.clone(), values, dict(meta or {}))


def _pava(y: list[float], w: list[float]) -> list[float]:
    """Non-decreasing least-squares fit of y with weights w (pool adjacent violators)."""
    blocks: list[list[float]] = []          # [value, weight, length]
    for yi, wi in zip(y, w):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, l2 = blocks.pop()
            v1, w1, l1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, l1 + l2])
    return [v for v, _, length in blocks for _ in range(int(length))]


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0] + (x - xs[0])      # below the data: follow the raw log-prob's slope
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / max(xs[i] - xs[i - 1], 1e-9)
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]
