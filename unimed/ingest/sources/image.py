"""Plain images: PNG, JPEG and TIFF, 8 and 16 bit, gray and RGB (X-ray, fundus, ultrasound, ...).

8-bit images pass through unchanged (RGBA and palette converted to RGB); 16-bit images are kept
16-bit for 16-bit PNG output and otherwise scaled to 8 bits by percentiles. Plain images carry no
modality: it comes from ``--modality`` or a ``modality`` column of the label table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from unimed.errors import RejectError, safe_reason
from unimed.ingest import intensity
from unimed.ingest.sources.base import Item, Options, Source, Task, register, timed

__all__ = ["ImageSource", "read_plain_image"]

_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_plain_image(path: str) -> np.ndarray:
    """Decode a PNG/JPEG/TIFF file to uint8 or uint16, H×W or H×W×3."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im)
            if arr.dtype != np.uint16:
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            return arr
        if im.mode == "F":
            a = np.asarray(im, dtype=np.float32)
            y, _ = intensity.percentile_scale(a, 0.0, 100.0)
            return intensity.to_uint(y, 16)
        if im.mode in ("L", "RGB"):
            return np.asarray(im)
        if im.mode == "LA":
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB"))


@register
class ImageSource(Source):
    """PNG, JPEG and TIFF files."""

    name = "image"
    priority = 40  # after slides: a tiled pyramid TIFF is a slide, read tile by tile, not whole
    requires = ("PIL",)

    def probe(self, path: Path, head: bytes) -> bool:
        return any(head.startswith(m) for m in _MAGIC)

    def plan(self, path: Path, opts: Options) -> Task:
        return Task(self.name, [str(path)], weight=path.stat().st_size * 3)

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        path = task.paths[0]
        modality = task.modality or opts.modality
        if modality == "auto":
            raise RejectError("plain image carries no modality; pass --modality or a modality column in --labels")
        try:
            with timed("decode"):
                raw = Path(path).read_bytes()
                arr = read_plain_image(path)
        except Exception as exc:
            raise RejectError(f"unreadable image ({safe_reason(exc)})") from None
        meta: dict = {"bit_depth": 16 if arr.dtype == np.uint16 else 8}
        if arr.dtype == np.uint16 and opts.bits != 16:
            lo, hi = opts.percentiles
            y, _ = intensity.percentile_scale(arr, lo, hi)
            arr = intensity.to_uint(y, 8)
            meta["window"] = f"percentile {lo}-{hi}"
        elif arr.dtype == np.uint16 and arr.ndim == 3:
            arr = (arr >> 8).astype(np.uint8)
        elif arr.dtype == np.uint8 and opts.bits == 16 and arr.ndim == 2:
            arr = arr.astype(np.uint16) * 257
        if intensity.is_empty(arr if arr.ndim == 2 else arr.max(axis=-1)):
            raise RejectError("image is empty (a single value)")
        digest = hashlib.sha1(raw).hexdigest()
        yield Item(pixels=arr, modality=modality, key=f"image:{digest}", meta=meta)
