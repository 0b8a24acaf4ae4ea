"""The DALI pipeline itself (the GPU path's graph, run here on CPU operators): uint8 CHW output, 16-bit
PNGs, grey to RGB, flips only where allowed, CPU vs GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from unimed.streaming.dali import AugmentConfig, build_pipeline, choose_device

PLAIN: dict = {}  # the graph no longer normalizes: outputs are uint8 pixels


def _png(arr: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8)


def _run(pipe, images: list[np.ndarray], flips: list[int], crops: list[list[float]] | None = None) -> np.ndarray:
    pipe.feed_input("encoded", images)
    pipe.feed_input("flip", [np.array(f, np.uint8) for f in flips])
    crops = crops or [[0.0, 0.0, 1.0, 1.0]] * len(images)
    pipe.feed_input("crop", [np.array(c, np.float32) for c in crops])
    (out,) = pipe.run()
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    arr = np.array(out.as_tensor())
    assert arr.dtype == np.uint8  # normalization is the model's, on the device
    return arr.astype(np.float64) / 255.0


def test_16bit_png_is_rounded_once_in_float():
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 1000 + 7, (64, 1))
    aug = AugmentConfig(image_size=64, train=False, decode_dtype="float", **PLAIN)
    out = _run(build_pipeline(aug, batch_size=1, device="cpu"), [_png(ramp)], [0])[0]
    assert out.shape == (3, 64, 64)
    assert np.allclose(out[0], out[1]) and np.allclose(out[0], out[2])  # grey -> 3 equal channels
    np.testing.assert_allclose(out[0], np.rint(ramp / 65535.0 * 255) / 255, atol=1.01 / 255)


def test_16bit_png_scaled_not_clipped_in_uint8():
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 1000, (64, 1))  # up to 63000 of 65535
    aug = AugmentConfig(image_size=64, train=False, decode_dtype="uint8", **PLAIN)
    out = _run(build_pipeline(aug, batch_size=1, device="cpu"), [_png(ramp)], [0])[0]
    np.testing.assert_allclose(out[1], ramp / 65535.0, atol=1.5 / 255)


def test_flip_only_where_allowed():
    arr = np.zeros((32, 32), np.uint8)
    arr[:, :8] = 255  # bright left edge
    png = _png(arr)
    aug = AugmentConfig(image_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), **PLAIN)
    pipe = build_pipeline(aug, batch_size=16, device="cpu", seed=3, prefetch_queue_depth=1)
    kept = _run(pipe, [png] * 16, [0] * 16)
    assert (kept[:, 0, :, :4].mean((1, 2)) > 0.9).all()  # never flipped
    flipped = _run(pipe, [png] * 16, [1] * 16)  # the dataset decided: mirror these
    assert (flipped[:, 0, :, -4:].mean((1, 2)) > 0.9).all() and (flipped[:, 0, :, :4].mean((1, 2)) < 0.1).all()


def test_crop_window_comes_from_the_sample():
    arr = np.zeros((32, 64), np.uint8)
    arr[:, :32] = 255  # bright left half
    png = _png(arr)
    aug = AugmentConfig(image_size=16, **PLAIN)
    pipe = build_pipeline(aug, batch_size=2, device="cpu", prefetch_queue_depth=1)
    out = _run(pipe, [png, png], [0, 0], crops=[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.5, 1.0]])
    assert out[0].min() > 0.95 and out[1].max() < 0.05  # left window all bright, right window all dark


def test_choose_device(monkeypatch):
    monkeypatch.setenv("UNIMED_DALI_DEVICE", "cpu")
    assert choose_device("auto") == "cpu"
    monkeypatch.delenv("UNIMED_DALI_DEVICE")
    assert choose_device("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="must be"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("gpu")


@pytest.mark.gpu
def test_gpu_matches_cpu():
    """The same pipeline on nvJPEG + GPU operators gives the CPU placement's pixels (eval mode)."""
    rng = np.random.default_rng(0)
    from unimed.streaming.synthetic import synthetic_image

    images = []
    for color in (False, True):
        buf = io.BytesIO()
        Image.fromarray(synthetic_image(rng, 200, color)).save(buf, format="JPEG", quality=90)
        images.append(np.frombuffer(buf.getvalue(), np.uint8))
    images.append(_png(synthetic_image(rng, 200, False, bit_depth=16)))
    aug = AugmentConfig(image_size=96, train=False)
    cpu = _run(build_pipeline(aug, batch_size=3, device="cpu"), images, [0, 0, 0])
    gpu = _run(build_pipeline(aug, batch_size=3, device="gpu", device_id=0), images, [0, 0, 0])
    assert np.abs(cpu - gpu).mean() < 0.01 and np.abs(cpu - gpu).max() < 0.2  # JPEG IDCTs differ slightly


@pytest.mark.parametrize("train", [True, False])
def test_resize_is_bicubic_like_the_reference(train):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    png = np.frombuffer(buf.getvalue(), np.uint8)
    aug = AugmentConfig(
        image_size=96, train=train, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), decode_dtype="float", **PLAIN
    )
    out = _run(build_pipeline(aug, batch_size=1, device="cpu"), [png], [0])[0].transpose(1, 2, 0)
    img = Image.fromarray(arr)
    if not train:  # shorter side to 96, then the central 96 x 96
        img = img.resize((128, 96), Image.Resampling.BICUBIC).crop((16, 0, 112, 96))
        lin = Image.fromarray(arr).resize((128, 96), Image.Resampling.BILINEAR).crop((16, 0, 112, 96))
    else:
        lin = img.resize((96, 96), Image.Resampling.BILINEAR)
        img = img.resize((96, 96), Image.Resampling.BICUBIC)
    cubic_err = np.abs(out - np.asarray(img) / 255.0).mean()
    linear_err = np.abs(out - np.asarray(lin) / 255.0).mean()
    assert cubic_err < 0.2 * linear_err, (cubic_err, linear_err)
