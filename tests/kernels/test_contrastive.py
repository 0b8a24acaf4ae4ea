"""The tiled Triton losses against their PyTorch references in float64.

On CPU the kernels run under Triton's interpreter (see ``conftest.py``); shapes are kept small so the
whole file runs in seconds there. Sizes are chosen so that B is not a multiple of any block size.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from unimed.kernels import (
    choose_impl,
    clip_loss,
    clip_loss_reference,
    contrastive_ce,
    contrastive_ce_reference,
    dispatch,
    siglip_loss,
    siglip_loss_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_interpreted = getattr(sys.modules.get("unimed.kernels.contrastive"), "INTERPRETED", False)
needs_kernels = pytest.mark.skipif(DEVICE == "cpu" and not _interpreted, reason="needs CUDA or the Triton interpreter")


def _features(n: int, d: int, seed: int, normalize: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        x = F.normalize(x, dim=1)
    return x.to(DEVICE, dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute error relative to the largest reference magnitude (NaN stays NaN)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def _check(
    loss: torch.Tensor, grads: list[torch.Tensor], ref: torch.Tensor, ref_grads: list[torch.Tensor], tol: float = 1e-4
) -> None:
    """Finite, and within ``tol`` (relative) of the float64 reference in the loss and every gradient."""
    assert torch.isfinite(loss), f"loss {float(loss)}"
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "non-finite gradient"
    err = abs(float(loss) - float(ref)) / abs(float(ref))
    assert err < tol, f"loss {float(loss)} vs {float(ref)}"
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert _rel(g, r) < tol, f"gradient {i}: relative error {_rel(g, r):.2e}"


def _grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def _triton_clip(x, y, s):
    return clip_loss(x, y, s, impl="triton")


@needs_kernels
@pytest.mark.parametrize("n,d,scale", [(37, 64, 14.3), (100, 200, 1 / 0.07), (70, 1024, 100.0), (16, 128, 100.0)])
def test_clip_loss_matches_reference_fp32(n, d, scale):
    a, b = _features(n, d, 1), _features(n, d, 2)
    b[: n // 2] = F.normalize(a[: n // 2] * 0.9 + b[: n // 2] * 0.1, dim=1)  # easy positives: peaked softmaxes
    s = torch.tensor([scale], device=DEVICE)
    loss, grads = _grads(_triton_clip, a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    _check(loss, grads, ref, ref_grads)


@needs_kernels
def test_unnormalized_features_at_the_clamp_stay_finite():
    a, b = _features(45, 96, 3, normalize=False) * 3, _features(45, 96, 4, normalize=False) * 3
    s = torch.tensor([100.0], device=DEVICE)  # logits in the tens of thousands: only a stable LSE survives
    loss, grads = _grads(_triton_clip, a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    _check(loss, grads, ref, ref_grads)


@needs_kernels
def test_bf16_inputs_within_bf16_tolerance():
    a, b = _features(48, 128, 5, dtype=torch.bfloat16), _features(48, 128, 6, dtype=torch.bfloat16)
    s = torch.tensor([1 / 0.07], device=DEVICE)
    loss, grads = _grads(_triton_clip, a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    assert grads[0].dtype == grads[1].dtype == torch.bfloat16 and grads[2].dtype == torch.float32
    _check(loss, grads, ref, ref_grads, tol=2e-2)


@needs_kernels
def test_one_direction_rectangular_with_offset():
    """Local rows against gathered columns: the positive of row i is column i + offset."""
    rows, cols = _features(19, 80, 7), _features(57, 80, 8)
    s = torch.tensor([30.0], device=DEVICE)
    loss, grads = _grads(lambda x, y, z: contrastive_ce(x, y, z, offset=19, impl="triton"), rows, cols, s)
    ref, ref_grads = _grads(
        lambda x, y, z: contrastive_ce_reference(x, y, z, offset=19), rows.double(), cols.double(), s.double()
    )
    _check(loss, grads, ref, ref_grads)


@needs_kernels
def test_distributed_composition_equals_the_global_loss():
    """Two ranks: local rows against gathered columns with label offsets give the global loss and grads."""
    n, d, world = 24, 64, 2
    img, txt = _features(n * world, d, 9), _features(n * world, d, 10)
    s = torch.tensor([20.0], device=DEVICE)
    ref, ref_grads = _grads(clip_loss_reference, img.double(), txt.double(), s.double())
    img_l, txt_l, s_l = (t.detach().clone().requires_grad_() for t in (img, txt, s))
    total = 0.0
    for rank in range(world):
        sl = slice(rank * n, (rank + 1) * n)
        # As after all_gather with gradient: the local slice and the gathered whole share one leaf.
        loss = clip_loss(img_l[sl], txt_l[sl], s_l, impl="triton", image_all=img_l, text_all=txt_l, offset=rank * n)
        (loss / world).backward()
        total += float(loss) / world
    _check(torch.tensor(total), [img_l.grad, txt_l.grad, s_l.grad], ref, ref_grads)


@needs_kernels
@pytest.mark.parametrize("n,d", [(33, 64), (80, 512)])
def test_siglip_matches_reference(n, d):
    a, b = _features(n, d, 11), _features(n, d, 12)
    s, bias = torch.tensor([10.0], device=DEVICE), torch.tensor([-10.0], device=DEVICE)
    loss, grads = _grads(lambda w, x, y, z: siglip_loss(w, x, y, z, impl="triton"), a, b, s, bias)
    ref, ref_grads = _grads(siglip_loss_reference, a.double(), b.double(), s.double(), bias.double())
    _check(loss, grads, ref, ref_grads)


@needs_kernels
def test_siglip_distributed_stripe_at_the_clamp():
    img, txt_all = _features(21, 64, 13, normalize=False), _features(63, 64, 14, normalize=False)
    s, bias = torch.tensor([100.0], device=DEVICE), torch.tensor([-5.0], device=DEVICE)
    loss, grads = _grads(
        lambda w, x, y, z: siglip_loss(w, x[:21], y, z, impl="triton", text_all=x, offset=21), img, txt_all, s, bias
    )
    ref, ref_grads = _grads(
        lambda w, x, y, z: siglip_loss_reference(w, x[:21], y, z, text_all=x, offset=21),
        img.double(),
        txt_all.double(),
        s.double(),
        bias.double(),
    )
    _check(loss, grads, ref, ref_grads)


@needs_kernels
def test_nan_inputs_never_pass():
    a, b = _features(20, 64, 15), _features(20, 64, 16)
    a[3, 5] = float("nan")
    s = torch.tensor([10.0], device=DEVICE)
    loss, grads = _grads(_triton_clip, a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.double(), b.double(), s.double())
    with pytest.raises(AssertionError):
        _check(loss, grads, ref, ref_grads)


@needs_kernels
def test_frozen_scale_and_autocast():
    a, b = _features(40, 64, 17), _features(40, 64, 18)
    s = torch.tensor([14.0], device=DEVICE)  # not a leaf that wants a gradient
    x = a.clone().requires_grad_()
    clip_loss(x, b, s, impl="triton").backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        low = clip_loss(a, b, s, impl="triton")
    assert abs(float(low) - float(clip_loss_reference(a.double(), b.double(), s.double()))) < 5e-2


def test_dispatcher_choices(monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.delenv("UNIMED_KERNELS", raising=False)
    assert choose_impl("auto", cpu) == "torch"
    assert choose_impl("torch", cpu) == "torch"
    assert choose_impl("auto", torch.device("cuda"), torch.float64) == "torch"
    monkeypatch.setenv("UNIMED_KERNELS", "torch")
    assert choose_impl("auto", torch.device("cuda")) == "torch"
    monkeypatch.setenv("UNIMED_KERNELS", "tpu")
    with pytest.raises(ValueError, match="UNIMED_KERNELS"):
        choose_impl("auto", cpu)
    with pytest.raises(ValueError, match="impl must be"):
        choose_impl("cuda", cpu)
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    monkeypatch.delenv("UNIMED_KERNELS")
    with caplog.at_level(logging.INFO, logger="unimed.kernels.dispatch"):
        choose_impl("auto", cpu)
        choose_impl("auto", cpu)
    assert sum("contrastive losses use torch (cpu tensors)" in r.message for r in caplog.records) == 1


@needs_kernels
def test_dispatcher_takes_the_kernel_when_asked(monkeypatch):
    monkeypatch.setenv("UNIMED_KERNELS", "triton")
    assert choose_impl("auto", torch.device(DEVICE)) == "triton"
    with pytest.raises(ValueError, match="float64"):
        choose_impl("triton", torch.device(DEVICE), torch.float64)


def test_bad_inputs_are_refused():
    a, s = _features(8, 16, 19).cpu(), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="one value"):
        clip_loss(a, a, s, impl="torch")
    with pytest.raises(ValueError, match="widths differ"):
        dispatch._prepare(a, a[:, :8])


def test_auto_on_cpu_is_the_reference_and_agrees():
    a, b = _features(20, 32, 20).cpu(), _features(20, 32, 21).cpu()
    s = torch.tensor([5.0])
    assert float(clip_loss(a, b, s)) == pytest.approx(float(clip_loss_reference(a, b, s)))


def test_import_needs_neither_gpu_nor_interpreter():
    """Without TRITON_INTERPRET on a CPU machine: the package imports, auto is the reference, triton refuses."""
    code = (
        "import torch, unimed.kernels as k; a = torch.randn(4, 8); s = torch.ones(1)\n"
        "assert 'unimed.kernels.contrastive' not in __import__('sys').modules\n"
        "print(float(k.clip_loss(a, a, s)))\n"
        "try:\n    k.clip_loss(a, a, s, impl='triton')\nexcept ValueError as e:\n    print('refused', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "UNIMED_KERNELS")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused" in out.stdout and "TRITON_INTERPRET" in out.stdout


@pytest.mark.dist
@pytest.mark.skipif(DEVICE != "cpu", reason="the worker runs the kernels under the CPU interpreter")
def test_two_gloo_ranks_with_all_gather_match_the_global_loss():
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_worker.py")
    root = os.path.dirname(os.path.dirname(os.path.dirname(worker)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, worker, "2"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.gpu
def test_gpu_bf16_large_batch_matches_reference():
    a = _features(4099, 512, 22, dtype=torch.bfloat16)
    b = _features(4099, 512, 23, dtype=torch.bfloat16)
    s = torch.tensor([100.0], device=DEVICE)
    loss, grads = _grads(_triton_clip, a, b, s)
    ref, ref_grads = _grads(clip_loss_reference, a.float(), b.float(), s)
    _check(loss, grads, ref, ref_grads, tol=2e-2)
