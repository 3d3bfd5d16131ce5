"""The draft's per-depth top-K (`kernels/depth_topk.py`) against torch.topk of torch.log_softmax:
the same tokens (on exact ties the lower token id first) and log-probs equal up to fp32 rounding,
for fp32 and bf16 logits, ragged last chunks, -inf columns (whole chunks of them), and rows with
fewer finite logits than K. Without a GPU the kernels run through the Triton interpreter."""
from __future__ import annotations

import pytest
import torch

from conftest import interpreted

dt, = interpreted("jetspec_core.kernels.depth_topk")

from jetspec_core import backend  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
pytestmark = pytest.mark.usefixtures("triton_interpreter", "small_chunks")


@pytest.fixture
def small_chunks(monkeypatch):
    """The interpreter sorts slowly: without a GPU, 32-candidate merge blocks (several per row
    where ties or -inf make many candidates)."""
    if not CUDA:
        monkeypatch.setattr(dt, "MB", 32)


def _logits(d: int, v: int, seed: int, kind: str = "random") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, v, generator=g) * 3
    if kind == "ties":          # many exactly equal logits, -0.0 among them
        x = torch.round(x * 2) / 2
        x[0, 5] = -0.0
    elif kind == "inf":         # mostly impossible tokens; row 1 has fewer finite logits than K
        x = x.masked_fill(torch.rand(d, v, generator=g) < 0.9, float("-inf"))
        x[1, :] = float("-inf")
        x[1, [3, v - 1]] = torch.tensor([0.5, 1.5])
        x[2, : min(v - 1, 2 * dt.CHUNK)] = float("-inf")  # whole chunks of -inf
        x[2, -1] = 0.0
    return x


def _want(x: torch.Tensor, k: int):
    """Top-k of log_softmax, ties broken by the lower column (a stable sort); in float64, which
    keeps the fp32/bf16 inputs' ties and order and has no fp32 summation error over wide rows (the
    CPU's fp32 log_softmax over 151k columns is itself ~2e-5 off)."""
    lp = torch.log_softmax(x.double(), -1)
    order = torch.sort(-lp, dim=-1, stable=True).indices[:, :k]
    return lp.gather(-1, order).float(), order


def _check(x: torch.Tensor, k: int):
    lp, tok = dt.depth_topk_triton(x.to(DEV), k)
    want_lp, want_tok = _want(x, k)
    assert lp.dtype == torch.float32 and tok.dtype == torch.int64 and lp.shape == tok.shape == (x.shape[0], k)
    assert torch.equal(tok.cpu(), want_tok)
    torch.testing.assert_close(lp.cpu(), want_lp, atol=3e-6, rtol=3e-6)


@pytest.mark.parametrize("v,k", [(97, 1), (97, 7), (300, 16), (1000, 16), (400, 64), (1500, 3)])
@pytest.mark.parametrize("kind", ["random", "ties", "inf"])
def test_topk_equals_log_softmax_topk(v, k, kind):
    _check(_logits(4, v, 1, kind), k)


def test_bf16_logits_and_strided_rows():
    x = _logits(3, 500, 2).to(torch.bfloat16)
    _check(x, 16)
    wide = _logits(3, 600, 3)[:, :500]             # rows with a stride wider than V
    lp, tok = dt.depth_topk_triton(wide.to(DEV), 7)
    assert torch.equal(tok.cpu(), _want(wide, 7)[1])


def test_plan_keeps_at_least_k_chunks():
    assert dt.plan(151936, 16) == dict(C=2048, NC=75, NCB=128, KB=16, MB_=dt.MB)
    p = dt.plan(49152, 64)
    assert p["C"] == 512 and p["NC"] == 96 >= 64 and p["KB"] == 64
    assert dt.plan(97, 7)["NC"] >= 7 and dt.plan(97, 64)["C"] == 16  # tiny vocabularies: 16-column chunks


def test_nan_rows_stay_in_their_row():
    """A NaN logit (a broken draft) must not make the kernel read outside the row: the other
    rows are exact and the NaN rows' tokens are valid ids."""
    x = _logits(4, 700, 6)
    x[1, :] = float("nan")
    x[2, 10] = float("nan")
    lp, tok = dt.depth_topk_triton(x.to(DEV), 16)
    lp, tok = lp.cpu(), tok.cpu()
    want_lp, want_tok = _want(x[[0, 3]], 16)
    assert torch.equal(tok[[0, 3]], want_tok)
    torch.testing.assert_close(lp[[0, 3]], want_lp, atol=3e-6, rtol=3e-6)
    assert bool(((tok >= 0) & (tok < 700)).all())
    assert bool(torch.isnan(lp[1]).all())


def test_backend_picks_the_kernel_only_where_it_runs():
    x = _logits(2, 300, 5)
    with backend.forced("reference"):
        lp_r, tok_r = backend.depth_topk(x, 5)
    with backend.forced("triton"):
        lp_t, tok_t = backend.depth_topk(x.to(DEV), 5)
    assert torch.equal(tok_t.cpu(), tok_r)
    torch.testing.assert_close(lp_t.cpu(), lp_r, atol=3e-6, rtol=3e-6)


def test_bad_arguments():
    x = torch.zeros(2, 10, device=DEV)
    with pytest.raises(ValueError, match="k must be"):
        dt.depth_topk_triton(x, 11)
    with pytest.raises(ValueError, match="up to 64"):
        dt.depth_topk_triton(torch.zeros(2, 100, device=DEV), 65)
    with pytest.raises(ValueError, match="contiguous"):
        dt.depth_topk_triton(torch.zeros(10, 2, device=DEV).t(), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("v", [49152, 151669])
@pytest.mark.parametrize("k", [7, 16, 64])
def test_gpu_model_vocabularies(v, k):
    """The engine's shapes: 15 depths of SmolLM2's and Qwen3's vocabularies, bf16 logits."""
    x = (torch.randn(15, v, generator=torch.Generator().manual_seed(v + k)) * 4).to(torch.bfloat16)
    _check(x, k)
