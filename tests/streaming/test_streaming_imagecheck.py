"""Header checks: sound images pass, broken ones are caught, the placeholder decodes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from unimed.streaming.imagecheck import check_image, placeholder_image, sniff_codec
from unimed.streaming.synthetic import synthetic_image


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    grey, rgb = synthetic_image(rng, 64, False), synthetic_image(rng, 64, True)
    return {
        "jpeg": _encode(grey, "JPEG"),
        "jpeg_rgb": _encode(rgb, "JPEG"),
        "jpeg_progressive": _encode(rgb, "JPEG", progressive=True),
        "png8": _encode(grey, "PNG"),
        "png16": _encode(synthetic_image(rng, 64, False, bit_depth=16), "PNG"),
    }


def test_sound_images_pass(images):
    for name, data in images.items():
        assert check_image(data) is None, name
    assert sniff_codec(images["png16"]) == "png" and sniff_codec(images["jpeg"]) == "jpeg"


@pytest.mark.parametrize("name", ["jpeg", "jpeg_progressive", "png8", "png16"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_images_fail(images, name, keep):
    data = images[name]
    assert check_image(data[: int(len(data) * keep)]) is not None


def test_other_faults(images):
    assert check_image(b"") == "empty"
    assert check_image(b"GIF89a....") == "neither JPEG nor PNG"
    png = bytearray(images["png8"])
    png[60] ^= 0xFF  # a flipped byte inside a chunk: CRC mismatch
    assert "CRC" in check_image(bytes(png))


def test_placeholder_decodes():
    data = placeholder_image()
    assert check_image(data) is None
    assert Image.open(io.BytesIO(data)).size == (16, 16)
