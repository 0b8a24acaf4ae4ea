"""The tiled Triton losses against their PyTorch references (float64), under TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from unimed.kernels import (
    choose_impl,
    clip_loss,
    clip_loss_reference,
    siglip_loss,
    siglip_loss_reference,
)

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs CUDA or the Triton interpreter")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _features(n: int, d: int, seed: int, normalize: bool = True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        x = F.normalize(x, dim=1)
    return x.to(DEVICE, dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def _check(loss, grads, ref, ref_grads, tol: float = 1e-4) -> None:
    """Finite, and within ``tol`` (relative) of the float64 reference in loss and every gradient."""
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert abs(float(loss) - float(ref)) / abs(float(ref)) < tol
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < tol


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("n,d,scale", [(37, 64, 14.3), (100, 200, 1 / 0.07), (70, 1024, 100.0), (16, 128, 100.0)])
def test_clip_loss_matches_reference_fp32(n, d, scale):
    a, b = _features(n, d, 1), _features(n, d, 2)
    b[: n // 2] = a[: n // 2] * 0.9 + b[: n // 2] * 0.1  # some easy positives, peaked softmax at scale 100
    s = torch.tensor([scale], device=DEVICE)
    loss, grads = _grads(lambda x, y, z: clip_loss(x, y, z, impl="triton"), a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    _check(loss, grads, ref, ref_grads)


def test_unnormalized_features_and_large_logits_stay_finite():
    a, b = _features(45, 96, 3, normalize=False) * 3, _features(45, 96, 4, normalize=False) * 3
    s = torch.tensor([100.0], device=DEVICE)  # logits in the thousands: only a stable LSE survives
    loss, grads = _grads(lambda x, y, z: clip_loss(x, y, z, impl="triton"), a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    _check(loss, grads, ref, ref_grads)


def test_bf16_inputs_within_bf16_tolerance():
    a, b = _features(48, 128, 5, dtype=torch.bfloat16), _features(48, 128, 6, dtype=torch.bfloat16)
    s = torch.tensor([1 / 0.07], device=DEVICE)
    loss, grads = _grads(lambda x, y, z: clip_loss(x, y, z, impl="triton"), a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    assert grads[0].dtype == torch.bfloat16
    assert abs(float(loss) - float(ref)) / abs(float(ref)) < 2e-2
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < 3e-2


def test_distributed_composition_equals_the_global_loss():
    """Two ranks: local rows against gathered columns with label offsets give the global loss and grads."""
    n, d, world = 24, 64, 2
    img, txt = _features(n * world, d, 7), _features(n * world, d, 8)
    s = torch.tensor([20.0], device=DEVICE)
    ref, ref_grads = _grads(clip_loss_reference, img.double(), txt.double(), s.double())
    img_l, txt_l, s_l = (t.detach().clone().requires_grad_() for t in (img, txt, s))
    total = 0.0
    for rank in range(world):
        sl = slice(rank * n, (rank + 1) * n)
        # Gathered features: the local slice keeps its gradient, the others are what all_gather returns.
        loss = clip_loss(img_l[sl], txt_l[sl], s_l, impl="triton", image_all=img_l, text_all=txt_l, offset=rank * n)
        (loss / world).backward()
        total += float(loss) / world
    assert abs(total - float(ref)) < 1e-5
    for g, r in zip((img_l.grad, txt_l.grad, s_l.grad), ref_grads):
        assert _rel(g, r) < 1e-4


@pytest.mark.parametrize("n,d", [(33, 64), (80, 512)])
def test_siglip_matches_reference(n, d):
    a, b = _features(n, d, 9), _features(n, d, 10)
    s, bias = torch.tensor([10.0], device=DEVICE), torch.tensor([-10.0], device=DEVICE)
    loss, grads = _grads(lambda w, x, y, z: siglip_loss(w, x, y, z, impl="triton"), a, b, s, bias)
    ref, ref_grads = _grads(siglip_loss_reference, a.double(), b.double(), s.double(), bias.double())
    assert torch.isfinite(loss)
    assert abs(float(loss) - float(ref)) / abs(float(ref)) < 1e-4
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < 1e-4


def test_dispatcher_choices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("UNIMED_KERNELS", raising=False)
    assert choose_impl("auto", cpu) == "torch"
    assert choose_impl("torch", cpu) == "torch"
    monkeypatch.setenv("UNIMED_KERNELS", "triton")
    assert choose_impl("auto", cpu) == "triton"  # the interpreter is on in these tests
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        choose_impl("triton", cpu)
    with pytest.raises(ValueError, match="impl must be"):
        choose_impl("cuda", cpu)


def test_auto_on_cpu_is_the_reference_and_agrees():
    a, b = _features(20, 32, 11), _features(20, 32, 12)
    s = torch.tensor([5.0])
    assert float(clip_loss(a.cpu(), b.cpu(), s)) == pytest.approx(float(clip_loss_reference(a.cpu(), b.cpu(), s)))
