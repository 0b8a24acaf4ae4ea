"""The CPU path's decode and augment, run per sample in the DataLoader workers.

Without a GPU the loader workers decode: libjpeg-turbo at reduced DCT scale (1/2, 1/4, 1/8) whenever
the crop window still has at least ``image_size`` pixels on both sides at that scale, straight into
a ``uint8`` array; then the crop (the window rounded to whole pixels of the decoded image, as DALI's
slice rounds it) and the resize in one bicubic, antialiased step on the ``uint8`` pixels (PyTorch's
``interpolate``, whose vectorized ``uint8`` kernel is Pillow's filter at 3-6x Pillow's speed here),
then each configured augmentation's ``cpu`` op in order (the flip: :mod:`unimed.streaming.augment`).
The window and the other parameters are the dataset's (``sample["crop"]``, ``sample["flip"]``, ...,
drawn from (seed, epoch, sample id)), so resumption and per-sample determinism are the DALI path's.
DALI's CPU operators are not used: their antialiased resize alone held them to 0.46 of the decode
ceiling.

The output is ``uint8``: ``[3, S, S]`` for colour images and ``[1, S, S]`` expanded (a view) to 3
channels for grey ones, so the collated batch is ``uint8[B, 3, S, S]``; normalization happens once,
on the device, in the model (``CLIPModel.encode_image``).

16-bit PNGs (CT, X-ray) map onto 8 bits by ``round(v * 255 / 65535)``: the full range scaled, never
clipped, as DALI's uint8 conversion does. ``decode_dtype="float"`` resizes them at full precision and
rounds once at the end (1 LSB better); ``uint8`` rounds first, then resizes 8-bit pixels.

JPEG decoder: simplejpeg's ``min_width`` / ``min_height`` (libjpeg-turbo's scaled IDCT, decoding into
a numpy array) or Pillow's ``draft`` (the same library, then a copy out of the Pillow image); chosen
once by :func:`choose_jpeg_decoder` (``$UNIMED_JPEG_DECODER`` overrides).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from unimed.streaming.augment import PostOp, get_augmentation
from unimed.streaming.imagecheck import placeholder_image

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes then
    simplejpeg = None

__all__ = [
    "WorkerDecode",
    "choose_jpeg_decoder",
    "decode_crop",
    "decode_tensor",
    "dct_scale",
    "sixteen_to_eight",
    "JPEG_DECODERS",
]

logger = logging.getLogger(__name__)

JPEG_DECODERS = ("pil", "simplejpeg")
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I")
_SIMPLEJPEG_SPACES = {"Gray": "GRAY", "YCbCr": "RGB", "RGB": "RGB"}  # others (CMYK, YCCK) go through Pillow
Box = tuple[float, float, float, float]


def _has_simplejpeg() -> bool:
    return simplejpeg is not None


def choose_jpeg_decoder(requested: str = "auto") -> tuple[str, str]:
    """(decoder, reason): ``$UNIMED_JPEG_DECODER`` or ``requested`` when set, else simplejpeg when
    installed, else Pillow.

    Measured here (2026-12-01, 2 shared cores, the benchmark's 512-px JPEGs, CPU time): both decode
    through libjpeg-turbo's scaled IDCT; simplejpeg decodes straight into a numpy array (grey 0.79,
    colour 1.07 ms an image at full scale) where Pillow decodes into its own image (0.89, 1.22 ms) and
    must then be copied out to the resize.
    """
    env = os.environ.get("UNIMED_JPEG_DECODER", "")
    choice = env or requested
    if choice == "auto":
        if _has_simplejpeg():
            return "simplejpeg", "default: simplejpeg (libjpeg-turbo scaled IDCT) decodes into an array, no copy"
        return "pil", "simplejpeg is not installed: Pillow draft (libjpeg-turbo scaled IDCT)"
    if choice not in JPEG_DECODERS:
        raise ValueError(f"JPEG decoder must be one of {', '.join(JPEG_DECODERS)} or auto, got {choice!r}")
    if choice == "simplejpeg" and not _has_simplejpeg():
        raise ValueError("JPEG decoder 'simplejpeg' needs the simplejpeg package (pip install simplejpeg)")
    return choice, ("$UNIMED_JPEG_DECODER" if env else "requested")


def dct_scale(window: tuple[float, float], size: int) -> int:
    """The largest libjpeg-turbo reduction (8, 4, 2 or 1) that keeps ``window`` (w, h in source
    pixels) at least ``size`` pixels on both sides, so the resize only ever shrinks."""
    for s in (8, 4, 2):
        if min(window) / s >= size:
            return s
    return 1


def _box(crop: np.ndarray | None, width: int, height: int, train: bool) -> Box:
    """The source window (left, top, right, bottom) in pixels: the dataset's relative crop when
    training, the central square of the shorter side otherwise (resize-shorter + centre crop)."""
    if train and crop is not None:
        x, y, w, h = (float(v) for v in crop)
        return x * width, y * height, (x + w) * width, (y + h) * height
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _scaled(box: Box, scale: float) -> Box:
    return box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale


def _jpeg_simplejpeg(data: bytes, crop: np.ndarray | None, size: int, train: bool) -> tuple[np.ndarray, Box] | None:
    """(pixels, window in their coordinates), decoded by simplejpeg; None for colour spaces it does not
    convert (CMYK, YCCK: Pillow takes those)."""
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    space = _SIMPLEJPEG_SPACES.get(colorspace)
    if space is None:
        return None
    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:  # Pillow's own refusal
        raise Image.DecompressionBombError(f"{width}x{height} pixels exceeds twice Pillow's MAX_IMAGE_PIXELS")
    box = _box(crop, width, height, train)
    scale = dct_scale((box[2] - box[0], box[3] - box[1]), size)
    # strict=False: decode what libjpeg recovers from (as Pillow does); a fatal error still raises ValueError
    arr = simplejpeg.decode_jpeg(
        data, colorspace=space, min_width=-(-width // scale), min_height=-(-height // scale), strict=False
    )
    if arr.shape[1] != -(-width // scale):  # not the reduction asked for: map by the sizes
        return arr, (
            box[0] * arr.shape[1] / width,
            box[1] * arr.shape[0] / height,
            box[2] * arr.shape[1] / width,
            box[3] * arr.shape[0] / height,
        )
    return arr, _scaled(box, scale)


def _jpeg_pil(data: bytes, crop: np.ndarray | None, size: int, train: bool) -> tuple[Image.Image, Box]:
    """The JPEG opened by Pillow at the reduced scale its window allows, and the window in its pixels."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    box = _box(crop, width, height, train)
    scale = dct_scale((box[2] - box[0], box[3] - box[1]), size)
    if scale > 1:
        img.draft(img.mode, (max(1, width // scale), max(1, height // scale)))
    actual = float(img.decoderconfig[0]) if scale > 1 and img.decoderconfig else 1.0
    return img, _scaled(box, actual)


def sixteen_to_eight(arr: np.ndarray) -> Image.Image:
    """A 16-bit grey array as an 8-bit ``L`` image, ``round(v * 255 / 65535)`` (the training mapping)."""
    return Image.fromarray(_sixteen_to_eight(arr), "L")


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _pixels(img: Image.Image, keep_precision: bool) -> tuple[np.ndarray, bool]:
    """(a writable ``uint8`` [H, W] or [H, W, 3] array, or float32 [H, W] of [0, 65535] values when
    ``keep_precision`` and the image is 16-bit; whether it is the latter, to round at the end)."""
    if img.mode in _SIXTEEN:
        arr = np.asarray(img)
        if keep_precision:
            return arr.astype(np.float32), True
        return _sixteen_to_eight(arr), False
    if img.mode in ("1", "LA", "La"):
        img = img.convert("L")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.array(img), False  # a copy: Pillow's buffer is read-only


def _resize(arr: np.ndarray, box: Box, size: int) -> torch.Tensor:
    """``arr`` [H, W] or [H, W, C] -> the window ``box`` (rounded to whole pixels, at least one) resized
    to [C, size, size], bicubic and antialiased."""
    h, w = arr.shape[:2]
    left = min(max(0, round(box[0])), w - 1)
    top = min(max(0, round(box[1])), h - 1)
    right = max(left + 1, min(w, round(box[2])))
    bottom = max(top + 1, min(h, round(box[3])))
    x = torch.from_numpy(arr)[top:bottom, left:right]
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # a view: the uint8 kernel reads channels-last
    out = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return out


def decode_tensor(
    data: bytes,
    crop: np.ndarray | None,
    size: int,
    train: bool = True,
    decoder: str = "simplejpeg",
    keep_precision: bool = False,
) -> torch.Tensor:
    """Encoded JPEG/PNG -> ``uint8`` [C, S, S] (C = 1 for grey, 3 for colour): the window decoded at
    reduced DCT scale where it allows, resized bicubically with antialiasing. The other augmentations
    (the flip) are the registered ``cpu`` ops, applied after it (:class:`WorkerDecode`)."""
    sixteen = False
    decoded = None
    if data[:3] == b"\xff\xd8\xff" and decoder == "simplejpeg" and simplejpeg is not None:
        decoded = _jpeg_simplejpeg(data, crop, size, train)
    if decoded is not None:
        arr, box = decoded
    else:
        if data[:3] == b"\xff\xd8\xff":
            img, box = _jpeg_pil(data, crop, size, train)
        else:
            img = Image.open(io.BytesIO(data))
            box = _box(crop, *img.size, train)
        arr, sixteen = _pixels(img, keep_precision)
    out = _resize(arr, box, size)
    if sixteen:
        return out.mul_(255.0 / 65535.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def decode_crop(
    data: bytes,
    crop: np.ndarray | None,
    flip: int,
    size: int,
    train: bool = True,
    decoder: str = "simplejpeg",
    keep_precision: bool = False,
) -> np.ndarray:
    """:func:`decode_tensor` then, when ``train``, the registered flip's ``cpu`` op (as the loader applies
    it), as a numpy image: ``uint8`` [S, S] (grey) or [S, S, 3]."""
    t = decode_tensor(data, crop, size, train, decoder, keep_precision)
    mirror = get_augmentation("flip").cpu
    if train and mirror is not None:
        t = mirror(t, np.uint8(bool(flip)))
    return t[0].numpy() if t.shape[0] == 1 else np.ascontiguousarray(t.permute(1, 2, 0).numpy())


@dataclass
class WorkerDecode:
    """The dataset transform of the CPU path: ``sample["image"]`` (encoded bytes) becomes
    ``uint8[3, S, S]`` (grey: one channel expanded). An image that passed the header check but
    fails to decode is replaced by the placeholder and flagged, as broken ones are. When training,
    the ``cpu`` op of each of ``augmentations`` with one runs after the resize, in order, on the
    sample's parameters (``sample[name]``); the crop is fused into the decode (``sample["crop"]``)."""

    image_size: int
    train: bool = True
    decoder: str = "simplejpeg"
    decode_dtype: str = "uint8"  # float: 16-bit PNGs resized at full precision (see the module)
    augmentations: Sequence[str] = ("crop", "flip")
    _post: tuple[tuple[str, PostOp], ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        augs = [get_augmentation(name) for name in self.augmentations]
        for a in augs if self.train else []:
            a.check_path("cpu")
        self._post = tuple((aug.name, aug.cpu) for aug in augs if aug.cpu is not None)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        keep = self.decode_dtype == "float"
        data = sample["image"]
        data = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        try:
            t = decode_tensor(data, sample.get("crop"), self.image_size, self.train, self.decoder, keep)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            logger.debug("unimed.streaming: decode failed uid=%s (%s)", sample.get("uid"), exc)
            sample["valid"], sample["error"] = False, f"decode: {exc}"
            t = decode_tensor(placeholder_image(), None, self.image_size, False, self.decoder)
        else:
            for name, op in self._post if self.train else ():
                if sample.get(name) is not None:  # a sample without its parameters is left as it is
                    t = op(t, sample[name])
        sample["image"] = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        return sample
