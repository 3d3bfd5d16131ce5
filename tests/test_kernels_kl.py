"""The fused KL of training (`kernels/fused_kl.py`): per-row loss and gradient against the PyTorch
form, and a training step through it against the PyTorch path. Without a GPU the kernel runs
through the Triton interpreter (this module imports it that way first, like the other kernel files)."""
from __future__ import annotations

import pytest
import torch

from conftest import interpreted

fk, = interpreted("jetspec_core.kernels.fused_kl")

from jetspec_core.errors import JetSpecError  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _logits(rows: int, vocab: int, dtype, seed: int, spread: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=g) * spread).to(DEV, dtype)


@pytest.mark.parametrize("vocab,temperature", [(97, 1.0), (300, 2.0), (4096, 1.0), (5000, 0.7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rows_and_gradient_equal_the_pytorch_form(vocab, temperature, dtype):
    """Vocabularies below, at and past one block (4096, and 5000: a ragged second block), T ≠ 1."""
    s = _logits(5, vocab, dtype, 1).requires_grad_(True)
    t = _logits(5, vocab, dtype, 2)
    got = fk.kl_rows(s, t, temperature)
    weights = torch.arange(1.0, 6.0, device=DEV)          # a non-uniform upstream gradient
    (got * weights).sum().backward()
    g_got = s.grad.clone()
    s.grad = None
    want = fk.kl_rows_reference(s, t, temperature)
    (want * weights).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert g_got.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(g_got, s.grad, **tol)
    assert bool((got >= -1e-5).all())                       # a KL is never negative


def test_equal_distributions_give_zero_and_no_grad_path():
    s = _logits(3, 257, torch.float32, 3)
    got = fk.kl_rows(s, s.clone(), 1.0)                     # no grad wanted: the kernel writes no gradient
    torch.testing.assert_close(got, torch.zeros(3, device=DEV), atol=1e-5, rtol=0)
    assert fk.kl_rows(s[:0], s[:0]).shape == (0,)


def test_bad_input_is_refused():
    s = _logits(2, 10, torch.float32, 4)
    with pytest.raises(ValueError, match="one shape"):
        fk.kl_rows(s, s[:, :9])
    with pytest.raises(ValueError, match="temperature"):
        fk.kl_rows(s, s, 0.0)
    with pytest.raises(ValueError, match="teacher|target"):
        fk.kl_rows(s, s.clone().requires_grad_(True))


def test_training_step_equals_the_pytorch_path(tmp_path):
    """One step of the trainer with --kl-kernel triton: the same loss, the same gradients and the
    same updated weights (up to float rounding) as with the PyTorch KL, on a tiny random target."""
    from test_train import _cfg, _tiny_setup
    from jetspec_core.train.trainer import Trainer

    hf, data = _tiny_setup()
    hf = hf.to(DEV)            # on a GPU the compiled kernel needs CUDA tensors (the trainer follows hf)
    runs = {}
    for kernel in ("torch", "triton"):
        tr = Trainer(hf, data, _cfg(layers=(1,), kl_kernel=kernel, kl_temperature=1.5), 96, tmp_path / kernel,
                     progress=False)
        grads = []            # the gradients the optimizer is about to apply
        tr.opts[1].register_step_pre_hook(
            lambda opt, args, kw: grads.extend(p.grad.detach().clone() for p in tr.heads[1].parameters()))
        loss = tr.train_step()[1]
        runs[kernel] = (loss, grads, [p.detach().clone() for p in tr.heads[1].parameters()],
                        tr.evaluate()[1]["kl"])
    (l0, g0, w0, e0), (l1, g1, w1, e1) = runs["torch"], runs["triton"]
    assert len(g0) == len(g1) > 0
    if not CUDA:
        assert l0 == pytest.approx(l1, rel=1e-5) and e0 == pytest.approx(e1, rel=1e-5)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        # Adam divides by the gradient's own size: rounding shows relatively (the step is lr = 3e-3)
        for a, b in zip(w0, w1):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        return
    # On a GPU the head runs under bf16 autocast: both gradients are bf16-rounded, in different
    # summation orders. The loss agrees to fp32 rounding and the gradients to bf16 rounding; AdamW's
    # first step is about lr * sign(grad), so an element whose gradient is rounding-sized may step
    # the other way (a session-9 H200 run of the old check: loss rel 4e-7, held-out KL rel 5e-4) —
    # the weights must agree except on a small fraction of elements, and the held-out KL closely.
    assert l0 == pytest.approx(l1, rel=1e-4)
    for a, b in zip(g0, g1):
        scale = float(a.abs().max()) + 1e-12
        assert float((a - b).abs().max()) <= 0.02 * scale, "gradients differ by more than bf16 rounding"
    moved = sum(int(((a - b).abs() > 1e-4).sum()) for a, b in zip(w0, w1))
    assert moved <= 0.02 * sum(a.numel() for a in w0), f"{moved} weights differ after one step"
    assert e0 == pytest.approx(e1, rel=5e-3)


def test_auto_takes_the_kernel_on_cuda_only(tmp_path):
    """--kl-kernel auto (the default): the fused kernel for a model on a CUDA device, PyTorch ops
    on a CPU one (even where the interpreter could run the kernel there)."""
    from test_train import _cfg, _tiny_setup
    from jetspec_core.train.trainer import Trainer, TrainConfig

    assert TrainConfig().kl_kernel == "auto"
    hf, data = _tiny_setup()
    cpu = Trainer(hf, data, _cfg(), 96, tmp_path / "cpu", progress=False)
    assert cpu.kl_kernel == "torch" and cpu._kl_rows is None
    if CUDA:
        gpu = Trainer(hf.to(DEV), data, _cfg(), 96, tmp_path / "gpu", progress=False)
        assert gpu.kl_kernel == "triton" and gpu._kl_rows is fk.kl_rows


@pytest.mark.skipif(CUDA, reason="the refusal is for devices without CUDA outside the interpreter")
def test_trainer_refuses_the_kernel_without_cuda(tmp_path, monkeypatch):
    from test_train import _cfg, _tiny_setup
    from jetspec_core.train.trainer import Trainer

    hf, data = _tiny_setup()
    monkeypatch.setattr(fk, "usable", lambda device: False)      # as outside the interpreter on a CPU
    with pytest.raises(JetSpecError, match="needs a CUDA device"):
        Trainer(hf, data, _cfg(kl_kernel="triton"), 96, tmp_path, progress=False)
    with pytest.raises(JetSpecError, match="kl_kernel"):
        _cfg(kl_kernel="fast")
