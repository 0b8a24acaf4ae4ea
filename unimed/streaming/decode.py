"""The CPU path's decode and augment, run per sample in the DataLoader workers.

Without a GPU the loader workers decode: libjpeg-turbo at reduced DCT scale (1/2, 1/4, 1/8) whenever
the crop window still has at least ``image_size`` pixels on both sides at that scale, then the crop
and the resize in one bicubic, antialiased step (Pillow's ``resize`` with a ``box``: the continuous
window, torchvision ``RandomResizedCrop`` semantics), then the flip. The window and the mirror bit
are the dataset's (``sample["crop"]``, ``sample["flip"]``, drawn from (seed, epoch, sample id)), so
resumption and per-sample determinism are the DALI path's. DALI's CPU operators are not used: their
antialiased resize alone held them to 0.46 of the decode ceiling.

The output is ``uint8``: ``[3, S, S]`` for colour images and ``[1, S, S]`` expanded (a view) to 3
channels for grey ones, so the collated batch is ``uint8[B, 3, S, S]``; normalization happens once,
on the device, in the model (``CLIPModel.encode_image``).

16-bit PNGs (CT, X-ray) map onto 8 bits by ``round(v * 255 / 65535)``: the full range scaled, never
clipped, as DALI's uint8 conversion does. ``decode_dtype="float"`` resizes them at full precision and
rounds once at the end (1 LSB better); ``uint8`` rounds first, then resizes 8-bit pixels.

JPEG decoder: Pillow's ``draft`` (libjpeg-turbo's scaled IDCT) or simplejpeg's ``min_width`` /
``min_height``, the same library underneath; chosen once by :func:`choose_jpeg_decoder`
(``$UNIMED_JPEG_DECODER`` overrides).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from unimed.streaming.imagecheck import placeholder_image

__all__ = ["WorkerDecode", "choose_jpeg_decoder", "decode_crop", "dct_scale", "sixteen_to_eight", "JPEG_DECODERS"]

logger = logging.getLogger(__name__)

JPEG_DECODERS = ("pil", "simplejpeg")
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I")
_BICUBIC = Image.Resampling.BICUBIC


def choose_jpeg_decoder(requested: str = "auto") -> tuple[str, str]:
    """(decoder, reason): ``$UNIMED_JPEG_DECODER`` or ``requested`` when set, else Pillow.

    Measured here (2026-12-01, 2 shared cores, 512-px JPEGs to 224 crops): both decode through
    libjpeg-turbo's scaled IDCT at the same speed within noise (Pillow ``draft`` 1.2-1.6 ms, simplejpeg
    1.2-1.4 ms an image at 1/2 scale), and Pillow crops and resizes the decoded image in place while
    simplejpeg's array must first be copied into a Pillow image, so Pillow is the default.
    """
    env = os.environ.get("UNIMED_JPEG_DECODER", "")
    choice = env or requested
    if choice == "auto":
        return "pil", "default: Pillow draft (libjpeg-turbo scaled IDCT), no copy before the resize"
    if choice not in JPEG_DECODERS:
        raise ValueError(f"JPEG decoder must be one of {', '.join(JPEG_DECODERS)} or auto, got {choice!r}")
    if choice == "simplejpeg":
        try:
            import simplejpeg  # noqa: F401
        except ImportError as exc:
            raise ValueError("JPEG decoder 'simplejpeg' needs the simplejpeg package (pip install simplejpeg)") \
                from exc
    return choice, ("$UNIMED_JPEG_DECODER" if env else "requested")


def dct_scale(window: tuple[float, float], size: int) -> int:
    """The largest libjpeg-turbo reduction (8, 4, 2 or 1) that keeps ``window`` (w, h in source
    pixels) at least ``size`` pixels on both sides, so the resize only ever shrinks."""
    for s in (8, 4, 2):
        if min(window) / s >= size:
            return s
    return 1


def _box(crop: np.ndarray | None, width: int, height: int, train: bool) -> tuple[float, float, float, float]:
    """The source window (left, top, right, bottom) in pixels: the dataset's relative crop when
    training, the central square of the shorter side otherwise (resize-shorter + centre crop)."""
    if train and crop is not None:
        x, y, w, h = (float(v) for v in crop)
        return x * width, y * height, (x + w) * width, (y + h) * height
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _open_jpeg(data: bytes, crop: np.ndarray | None, size: int, train: bool,
               decoder: str) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The JPEG decoded at the reduced scale its window allows, and the window in that image's pixels."""
    if decoder == "simplejpeg":
        import simplejpeg

        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        box = _box(crop, width, height, train)
        scale = dct_scale((box[2] - box[0], box[3] - box[1]), size)
        grey = colorspace == "Gray"
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB",
                                     min_width=-(-width // scale), min_height=-(-height // scale))
        img = Image.fromarray(arr[..., 0] if grey else arr)
        actual = width / arr.shape[1]
    else:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        box = _box(crop, width, height, train)
        scale = dct_scale((box[2] - box[0], box[3] - box[1]), size)
        if scale > 1:
            img.draft(img.mode, (max(1, width // scale), max(1, height // scale)))
        actual = float(img.decoderconfig[0]) if scale > 1 and img.decoderconfig else 1.0
    return img, (box[0] / actual, box[1] / actual, box[2] / actual, box[3] / actual)


def sixteen_to_eight(arr: np.ndarray) -> Image.Image:
    """A 16-bit grey array as an 8-bit ``L`` image, ``round(v * 255 / 65535)`` (the training mapping)."""
    return Image.fromarray(((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), "L")


def _to_8bit(img: Image.Image, keep_precision: bool) -> tuple[Image.Image, bool]:
    """(image in L / RGB / F, whether it is F holding [0, 65535] values to round at the end)."""
    if img.mode in ("L", "RGB"):
        return img, False
    if img.mode in _SIXTEEN:
        arr = np.asarray(img).astype(np.float32 if keep_precision else np.uint32)
        if keep_precision:
            return Image.fromarray(arr, "F"), True
        return sixteen_to_eight(arr), False
    if img.mode in ("1", "LA", "La"):
        return img.convert("L"), False
    return img.convert("RGB"), False


def decode_crop(data: bytes, crop: np.ndarray | None, flip: int, size: int, train: bool = True,
                decoder: str = "pil", keep_precision: bool = False) -> np.ndarray:
    """Encoded JPEG/PNG -> uint8 ``[S, S]`` (grey) or ``[S, S, 3]``: the window decoded at reduced DCT
    scale where it allows, resized bicubically with antialiasing, mirrored when ``flip``."""
    if data[:3] == b"\xff\xd8\xff":
        img, box = _open_jpeg(data, crop, size, train, decoder)
    else:
        img = Image.open(io.BytesIO(data))
        box = _box(crop, *img.size, train)
    img, sixteen = _to_8bit(img, keep_precision)
    w, h = img.size  # float rounding of a rescaled window must not step outside the image
    box = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
    img = img.resize((size, size), _BICUBIC, box=box)
    if flip and train:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sixteen:
        return np.clip(np.rint(np.array(img) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return np.array(img)  # writable (a Pillow image gives a read-only buffer)


@dataclass
class WorkerDecode:
    """The dataset transform of the CPU path: ``sample["image"]`` (encoded bytes) becomes
    ``uint8[3, S, S]`` (grey: one channel expanded). An image that passed the header check but
    fails to decode is replaced by the placeholder and flagged, as broken ones are."""

    image_size: int
    train: bool = True
    decoder: str = "pil"
    decode_dtype: str = "uint8"  # float: 16-bit PNGs resized at full precision (see the module)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        keep = self.decode_dtype == "float"
        data = sample["image"]
        data = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        try:
            arr = decode_crop(data, sample.get("crop"), int(sample.get("flip", 0)), self.image_size, self.train,
                              self.decoder, keep)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            logger.debug("unimed.streaming: decode failed uid=%s (%s)", sample.get("uid"), exc)
            sample["valid"], sample["error"] = False, f"decode: {exc}"
            arr = decode_crop(placeholder_image(), None, 0, self.image_size, False)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        sample["image"] = t.unsqueeze(0).expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
        return sample
