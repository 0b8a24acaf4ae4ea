"""The crop window follows torchvision's RandomResizedCrop over the image's pixels, whatever its shape."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from unimed.streaming.dataset import choose_crop, image_size
from unimed.streaming.imagecheck import placeholder_image

SCALE, RATIO = (0.9, 1.0), (3 / 4, 4 / 3)


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (256, 256), (1000, 250)])
def test_windows_cover_the_scale_of_the_image_at_an_allowed_ratio(size):
    w, h = size
    crops = np.stack([choose_crop(17, 0, i, SCALE, RATIO, False, size)[0] for i in range(2000)])
    assert (crops[:, :2] >= 0).all() and (crops[:, :2] + crops[:, 2:] <= 1 + 1e-6).all()
    area = crops[:, 2] * crops[:, 3]
    aspect = crops[:, 2] * w / (crops[:, 3] * h)
    own = w / h
    if RATIO[0] <= own <= RATIO[1]:
        assert area.min() >= SCALE[0] - 1e-6  # was 44% below 0.9 on a 4:3 image, drawing in relative units
        assert (aspect >= RATIO[0] - 1e-4).all() and (aspect <= RATIO[1] + 1e-4).all()
    else:  # 4:1: no window of that area fits an allowed ratio; torchvision's central fallback, at 4:3
        assert np.allclose(aspect, RATIO[1], rtol=1e-4) and np.allclose(crops[:, 0], (1 - crops[:, 2]) / 2)
    torch.manual_seed(0)
    ref = []
    for _ in range(2000):
        _, _, ch, cw = RandomResizedCrop.get_params(torch.empty(1, h, w), SCALE, RATIO)
        ref.append(ch * cw / (w * h))
    assert abs(area.mean() - np.mean(ref)) < 0.004  # the same distribution (torchvision rounds to pixels)


def test_image_size_reads_jpeg_and_png_headers():
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "L"), ("PNG", "I;16")):
        buf = io.BytesIO()
        Image.new(mode, (123, 45)).save(buf, format=fmt)
        assert image_size(buf.getvalue()) == (123, 45), fmt
    assert image_size(placeholder_image()) == (16, 16)
    assert image_size(b"not an image") is None


def test_the_crop_is_still_a_pure_function_of_seed_epoch_and_sample():
    a = [choose_crop(5, 2, i, SCALE, RATIO, True, (640, 480)) for i in range(200)]
    b = [choose_crop(5, 2, i, SCALE, RATIO, True, (640, 480)) for i in range(200)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert 70 < sum(m for _, m in a) < 130
