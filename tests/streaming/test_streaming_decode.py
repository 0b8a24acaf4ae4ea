"""The CPU path's worker decode: reduced-scale DCT decoding against a full decode with the same crop, on
real photographs (scikit-image's bundled images) and the demo data; 16-bit PNGs; broken images; and
normalization done once, in the model, equal to the old float pipeline's."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from unimed.streaming.dataset import choose_crop
from unimed.streaming.decode import WorkerDecode, dct_scale, decode_crop
from unimed.streaming.imagecheck import placeholder_image

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "retina", "immunohistochemistry")  # retina: 1411 px
# Tolerance against a full decode + the same crop, in 8-bit levels: libjpeg-turbo's scaled IDCT is a
# low-pass of its own, so sharp edges differ most (p99 17 on `astronaut` at 1/4 scale), the mean by
# 0.5-2.3 levels at 1/2 and 1/4 scale (measured on these images, 2026-12-01).
MEAN_TOL, P99_TOL = 3.0, 24.0


def _jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _full(data: bytes, crop, flip: int, size: int) -> np.ndarray:
    """The reference: a full-size decode, the same window on the reduced image's pixel grid (the decoder
    takes whole pixels of the image it decoded, as DALI's slice does), Pillow's bicubic antialiased resize."""
    img = Image.open(io.BytesIO(data))
    img.load()
    w, h = img.size
    x, y, cw, ch = (float(v) for v in crop)
    box = (x * w, y * h, (x + cw) * w, (y + ch) * h)
    s = dct_scale((box[2] - box[0], box[3] - box[1]), size)
    box = tuple(float(min(limit, round(v / s) * s)) for v, limit in zip(box, (w, h, w, h)))
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out).astype(np.float64)


@pytest.mark.parametrize("decoder", ["pil", "simplejpeg"])
@pytest.mark.parametrize("name", PHOTOS)
def test_reduced_dct_decode_matches_full_decode_and_crop(name, decoder):
    if decoder == "simplejpeg":
        pytest.importorskip("simplejpeg")
    arr = getattr(skdata, name)()
    data = _jpeg(arr)
    size = 112 if name != "retina" else 224
    scales = set()
    for i in range(6):
        crop, flip = choose_crop(3, 0, i, (0.9, 1.0), (3 / 4, 4 / 3), True, (arr.shape[1], arr.shape[0]))
        window = (crop[2] * arr.shape[1], crop[3] * arr.shape[0])
        scales.add(dct_scale(window, size))
        got = decode_crop(data, crop, flip, size, True, decoder).astype(np.float64)
        ref = _full(data, crop, flip, size)
        assert got.shape == ref.shape == ((size, size) if arr.ndim == 2 else (size, size, 3))
        diff = np.abs(got - ref)
        assert diff.mean() < MEAN_TOL and np.percentile(diff, 99) <= P99_TOL, (name, i, diff.mean())
    assert max(scales) > 1  # the reduced scale was used


def test_reduced_dct_on_the_demo_data(demo_sets):
    """The demo's real medical crops (fundus, pathology, X-ray ...), as ingest stored them."""
    from unimed.streaming.shards import iter_samples

    checked = 0
    for k, sample in enumerate(iter_samples(demo_sets["train"])):
        data = sample["image"]
        if data[:3] != b"\xff\xd8\xff":
            continue
        w, h = Image.open(io.BytesIO(data)).size
        crop, flip = choose_crop(5, 1, k, (0.9, 1.0), (3 / 4, 4 / 3), True, (w, h))
        size = max(8, min(w, h) // 3)
        got = decode_crop(data, crop, flip, size).astype(np.float64)
        diff = np.abs(got - _full(data, crop, flip, size))
        assert diff.mean() < MEAN_TOL and np.percentile(diff, 99) <= P99_TOL, (k, diff.mean())
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee"])
def test_the_uint8_resize_is_pillows_bicubic(name, size):
    """On a lossless image (no IDCT in the way) the uint8 kernel is Pillow's antialiased bicubic over the
    same whole-pixel window, to its fixed-point rounding: a tenth of a level on average."""
    arr = getattr(skdata, name)()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    h, w = arr.shape[:2]
    for i in range(3):
        crop, flip = choose_crop(3, 0, i, (0.5, 1.0), (3 / 4, 4 / 3), True, (w, h))
        got = decode_crop(buf.getvalue(), crop, flip, size).astype(np.float64)
        x, y, cw, ch = (float(v) for v in crop)
        box = tuple(float(round(v)) for v in (x * w, y * h, (x + cw) * w, (y + ch) * h))
        ref = Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC, box=box)
        ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else ref
        diff = np.abs(got - np.asarray(ref))
        assert diff.mean() < 0.2 and (diff > 1).mean() < 0.05, (name, i, diff.mean())


def test_16bit_png_maps_the_full_range_onto_8_bits():
    ramp = np.tile((np.arange(64, dtype=np.uint32) * 1040).astype(np.uint16), (64, 1))  # up to 65520
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    want = np.rint(ramp / 65535.0 * 255.0)
    for dtype in ("uint8", "float"):
        sample = {
            "image": np.frombuffer(buf.getvalue(), np.uint8),
            "crop": np.array([0, 0, 1, 1], np.float32),
            "flip": np.uint8(0),
            "valid": True,
            "error": "",
        }
        out = WorkerDecode(64, train=False, decode_dtype=dtype)(sample)["image"]
        assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # grey: one channel, expanded
        assert np.abs(out[0].numpy() - want).max() <= 1.0  # scaled, not clipped, not min-max stretched


def test_an_image_that_fails_to_decode_becomes_the_flagged_placeholder():
    good = _jpeg(skdata.camera())
    broken = good[:600] + bytes(len(good) - 602) + b"\xff\xd9"  # headers sound, entropy data zeroed
    sample = {
        "image": np.frombuffer(broken, np.uint8),
        "crop": np.array([0, 0, 1, 1], np.float32),
        "flip": np.uint8(0),
        "valid": True,
        "error": "",
        "uid": "u",
    }
    out = WorkerDecode(32)(sample)
    if out["valid"]:  # libjpeg conceals this damage: then the pixels are just wrong, never a crash
        assert out["image"].shape == (3, 32, 32)
    not_image = {
        "image": np.frombuffer(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, np.uint8),
        "crop": None,
        "flip": 0,
        "valid": True,
        "error": "",
        "uid": "v",
    }
    out = WorkerDecode(32)(not_image)
    assert not out["valid"] and out["error"].startswith("decode:")
    ref = WorkerDecode(32)(
        {"image": np.frombuffer(placeholder_image(), np.uint8), "crop": None, "flip": 0, "valid": True, "error": ""}
    )["image"]
    assert torch.equal(out["image"], ref)


def test_normalization_happens_once_in_the_model():
    """A uint8 batch through the model equals the old pipeline's float input (decode, /255, mean/std) to
    float tolerance, with the training normalization set from the config; float input passes as is."""
    from unimed.train.model import CLIPModel, ModelConfig, TextConfig, VisionConfig

    cfg = ModelConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, patch_size=16, width=32, layers=1, heads=2),
        text=TextConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, context_length=8),
    )
    model = CLIPModel(cfg, vocab_size=50).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model.set_image_normalization(mean, std)
    data = _jpeg(skdata.astronaut())
    u8 = np.stack([decode_crop(data, np.array([0.1, 0.1, 0.8, 0.8]), 0, 32).transpose(2, 0, 1)])
    old = (u8.astype(np.float32) / 255.0 - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[
        :, None, None
    ]
    x = torch.from_numpy(u8)
    assert torch.allclose(model.prepare_image(x), torch.from_numpy(old), atol=1e-6)
    with torch.no_grad():
        a = model.encode_image(x)
        b = model.encode_image(torch.from_numpy(old))  # normalized float: not normalized again
    assert torch.allclose(a, b, atol=1e-5)
    assert "image_mean" not in model.state_dict()  # checkpoints and exports are unchanged
