"""Intensity transforms from stored values to display images, and the resize/encode step.

The documented transform, applied in this order (tests check shards against it):

1. stored values → physical values (DICOM modality LUT or rescale slope/intercept: Hounsfield for CT);
2. physical values → [0, 1] by a window (``center``, ``width``, DICOM linear formula), by a VOI LUT
   (its output divided by the top of its declared output range, PS3.3 C.11.2.1.1), or by percentiles
   (0.5–99.5 by default) where no window applies. Hounsfield windows (``--window`` names or
   ``C:W``, and the default soft-tissue window) apply to CT only: X-ray, MRI and the rest have no
   Hounsfield scale, so they take the file's VOI LUT or window, else percentiles, whatever
   ``--window`` says (``--window file`` asks for that path for CT too). Percentiles are taken over
   the whole object (a multi-frame file, a volume), so its frames or slices share one scale;
3. MONOCHROME1 is inverted after windowing (so bone is always bright);
4. [0, 1] → uint8 (or uint16 for 16-bit PNG) by rounding ``x * (2**bits - 1)``;
5. resized so the longer side is at most ``max_side`` (Lanczos), then encoded as JPEG or PNG.

Integer pixels go through steps 1-4 by a lookup table: the transform is computed once per stored
value, and tables for fixed parameters (a Hounsfield or file window, the same rescale) are kept
across slices (:func:`cached_table`). :func:`lookup` applies a table in a compiled loop
(``unimed/ingest/_lut.c``, built at install where a C compiler is at hand; :data:`LOOKUP` says which
loop runs), else by numpy's ``take``: the same bytes. JPEG is encoded by the fastest encoder at hand, chosen once
(:func:`jpeg_encoder`: libjpeg-turbo through imagecodecs or simplejpeg, else Pillow;
``UNIMED_JPEG=pillow`` forces Pillow).

Emptiness (:func:`is_empty`) is judged on stored or physical values, before windowing: a slice
saturated by its window (all above its top) is kept, a constant slice is skipped.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "HU_WINDOWS",
    "parse_windows",
    "is_hounsfield_window",
    "ct_windows",
    "apply_window",
    "voi_lut_table",
    "apply_voi_lut",
    "percentile_scale",
    "to_uint",
    "is_empty",
    "resize_max",
    "encode",
    "cached_table",
    "value_table",
    "lookup",
    "lookup_range",
    "LOOKUP",
    "JpegEncoder",
    "jpeg_encoder",
]

#: Named Hounsfield windows (center, width) for CT.
HU_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "liver": (60.0, 160.0),
}

DEFAULT_CT_WINDOW = "soft_tissue"


def parse_windows(spec: str) -> list[tuple[float, float]] | None:
    """Parse ``--window``: ``auto``/``file`` give None; else 1 or 3 names or ``C:W`` pairs.

    >>> parse_windows("lung,mediastinum,bone")[0]
    (-600.0, 1500.0)
    """
    if spec in ("auto", "file"):
        return None
    out: list[tuple[float, float]] = []
    for part in spec.split(","):
        part = part.strip()
        if part in HU_WINDOWS:
            out.append(HU_WINDOWS[part])
        elif ":" in part:
            c, w = part.split(":", 1)
            out.append((float(c), float(w)))
        else:
            known = ", ".join(sorted(HU_WINDOWS))
            raise ValueError(f"unknown window {part!r}: use one of {known}, or CENTER:WIDTH")
    if len(out) not in (1, 3):
        raise ValueError(f"--window takes 1 window or 3 (as channels), got {len(out)}")
    return out


def is_hounsfield_window(spec: str) -> bool:
    """True when ``--window`` names Hounsfield windows (names or ``C:W``): they apply to CT only."""
    return spec not in ("auto", "file")


def ct_windows(spec: str, modality: str) -> list[tuple[float, float]] | None:
    """The Hounsfield windows for an image of ``modality`` under ``--window spec``, or None.

    CT: the windows named by ``spec``, the default soft-tissue window for ``auto``, None for
    ``file``. Every other modality: None (its values are not Hounsfield units), so the caller takes
    the file's VOI LUT or window, else percentiles.
    """
    if modality != "ct" or spec == "file":
        return None
    return [HU_WINDOWS[DEFAULT_CT_WINDOW]] if spec == "auto" else parse_windows(spec)


def voi_lut_table(
    descriptor: list[int] | tuple[int, ...], data: np.ndarray, signed: bool = False
) -> tuple[int, np.ndarray]:
    """A VOI LUT (PS3.3 C.11.2.1.1) as ``(first value mapped, entries scaled to [0, 1])``.

    ``descriptor`` is the LUT Descriptor: number of entries (0 means 65536), first input value mapped
    (signed when the VOI input may be negative: ``signed``), bits per entry ``n``. The output range
    is 0..2**n - 1, so an entry maps to ``entry / (2**n - 1)``: a LUT whose output spans only part of
    its range keeps that contrast rather than being stretched. ``n`` is taken as declared, even where
    the entries stay far below 2**n - 1: the standard defines the output range by the descriptor, and
    a LUT that uses only part of it is valid (guessing a smaller depth from the largest entry would
    stretch those). Entries beyond the range are clipped.
    """
    if len(descriptor) != 3:
        raise ValueError(f"a LUT Descriptor has 3 values, got {len(descriptor)}")
    entries, first, bits = (int(v) for v in descriptor)
    entries = (entries & 0xFFFF) or 65536  # read as SS, 40000 entries come back negative
    if signed and first >= 1 << 15:
        first -= 1 << 16
    elif not signed and first < 0:
        first += 1 << 16
    if not 1 <= bits <= 16:
        raise ValueError(f"LUT Descriptor gives {bits} bits per entry: the standard allows 8 to 16")
    data = np.asarray(data).ravel()[:entries]
    if data.size == 0:
        raise ValueError("VOI LUT holds no LUT Data")
    top = float((1 << bits) - 1)
    return first, np.clip(data.astype(np.float32) / np.float32(top), 0.0, 1.0)


def apply_voi_lut(x: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    """Map VOI input values to [0, 1] by a table from :func:`voi_lut_table`.

    Inputs below ``first`` take the first entry, inputs at or past ``first + len(table) - 1`` the last.
    """
    idx = np.clip(np.rint(np.asarray(x, dtype=np.float64)) - first, 0, table.size - 1).astype(np.intp)
    return table[idx]


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map physical values to [0, 1] with a DICOM window (PS3.3 C.11.2.1.2)."""
    x = np.asarray(x, dtype=np.float32)
    width = max(float(width), 1.0)
    center = float(center)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = (x - (center - width / 2.0)) / width
    else:
        y = ((x - (center - 0.5)) / (width - 1.0)) + 0.5 if width > 1 else (x >= center).astype(np.float32)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def percentile_scale(
    x: np.ndarray, lo: float = 0.5, hi: float = 99.5, ref: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map values to [0, 1] between two percentiles of ``ref`` (default: of ``x`` itself).

    Returns the scaled array and the (low, high) values used, so a volume is scaled consistently.
    """
    x = np.asarray(x, dtype=np.float32)
    ref = x if ref is None else ref
    finite = ref[np.isfinite(ref)] if not np.all(np.isfinite(ref)) else ref
    if finite.size == 0:
        return np.zeros_like(x), (0.0, 0.0)
    a, b = (float(v) for v in np.percentile(finite, [lo, hi]))
    if b <= a:
        a, b = float(finite.min()), float(finite.max())
    if b <= a:
        return np.zeros_like(x), (a, b)
    y = (x - a) / (b - a)
    return np.clip(np.nan_to_num(y, nan=0.0), 0.0, 1.0).astype(np.float32), (a, b)


def to_uint(y: np.ndarray, bits: int = 8) -> np.ndarray:
    """[0, 1] floats to uint8 or uint16 by ``round(y * (2**bits - 1))``."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = (1 << bits) - 1
    out = np.rint(np.clip(y, 0.0, 1.0) * top)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


def is_empty(x: np.ndarray, min_fraction: float = 0.005) -> bool:
    """True for a slice with nothing to see: constant, or almost all pixels at its minimum."""
    if x.size == 0:
        return True
    lo = x.min()
    if x.max() == lo:
        return True
    need = min_fraction * x.size  # pixels above the minimum that make the slice worth keeping
    sub = x[::2, ::4] if x.ndim >= 2 else x[::8]  # a strided view, no copy
    if x.size >= 4096 and np.count_nonzero(sub > lo) >= need:
        return False  # an eighth of the pixels already holds enough of them (exact: a lower bound of the count)
    return float(np.count_nonzero(x > lo)) < need


def resize_max(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (0 keeps it), with a Lanczos filter."""
    h, w = img.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return img
    scale = max_side / float(max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    # uint16: resample each channel in float mode, then clip back.
    chans = img[..., None] if img.ndim == 2 else img
    out = [
        np.asarray(Image.fromarray(chans[..., c].astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
        for c in range(chans.shape[-1])
    ]
    res = np.clip(np.rint(np.stack(out, axis=-1)), 0, 65535).astype(np.uint16)
    return res[..., 0] if img.ndim == 2 else res


@dataclass(frozen=True)
class JpegEncoder:
    """A JPEG encoder: ``encode(pixels, quality)`` for H×W or H×W×3 uint8 arrays."""

    name: str
    description: str
    encode: Callable[[np.ndarray, int], bytes]


def _pillow_jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=0 if img.ndim == 2 else 2)
    return buf.getvalue()


def _imagecodecs_jpeg(img: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    # libjpeg-turbo with Pillow's settings (4:2:0 chroma for RGB, the accurate DCT): the same bytes.
    return imagecodecs.jpeg8_encode(np.ascontiguousarray(img), level=int(quality))


def _simplejpeg(img: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    img = np.ascontiguousarray(img)
    if img.ndim == 2:
        return simplejpeg.encode_jpeg(
            img[..., None], quality=int(quality), colorspace="GRAY", colorsubsampling="Gray", fastdct=False
        )
    return simplejpeg.encode_jpeg(img, quality=int(quality), colorspace="RGB", colorsubsampling="420", fastdct=False)


_JPEG: dict[str, JpegEncoder] = {}
JPEG_ENV = "UNIMED_JPEG"
#: Candidates in the order ``auto`` tries them: module, encoder. On a 512² CT slice at q90 (one core,
#: 2026-12-01) imagecodecs 0.40 ms and simplejpeg 0.41 ms (both libjpeg-turbo 3.1), Pillow 0.45 ms;
#: imagecodecs writes Pillow's bytes exactly and is already installed for the slide codecs.
_CANDIDATES: dict[str, tuple[str, Callable[[np.ndarray, int], bytes]]] = {
    "imagecodecs": ("imagecodecs", _imagecodecs_jpeg),
    "simplejpeg": ("simplejpeg", _simplejpeg),
    "pillow": ("PIL", _pillow_jpeg),
}


def jpeg_encoder(choice: str | None = None) -> JpegEncoder:
    """The JPEG encoder of this process, chosen once and kept.

    ``choice`` (or ``$UNIMED_JPEG``): ``imagecodecs``, ``simplejpeg``, ``pillow`` or ``auto``
    (default): the first of those that imports (libjpeg-turbo directly, ~10% faster than Pillow).
    """
    import importlib

    choice = (choice or os.environ.get(JPEG_ENV) or "auto").lower()
    if choice in _JPEG:
        return _JPEG[choice]
    if choice != "auto" and choice not in _CANDIDATES:
        raise ValueError(f"${JPEG_ENV}={choice}: use auto, {', '.join(_CANDIDATES)}")
    tried = []
    for name in _CANDIDATES if choice == "auto" else [choice]:
        module, fn = _CANDIDATES[name]
        try:
            version = getattr(importlib.import_module(module), "__version__", "?")
        except ImportError:
            if choice != "auto":
                raise
            tried.append(f"{name} not installed")
            continue
        why = "asked for" if choice != "auto" else "the fastest installed" + (f"; {', '.join(tried)}" if tried else "")
        label = "Pillow" if name == "pillow" else name
        _JPEG[choice] = JpegEncoder(name, f"{label} {version} ({why}; {JPEG_ENV}=pillow for Pillow)", fn)
        return _JPEG[choice]
    raise ImportError("no JPEG encoder: install imagecodecs or pillow")


def encode(img: np.ndarray, codec: str = "jpeg", quality: int = 90) -> bytes:
    """Encode an H×W or H×W×3 uint8 (or uint16 for PNG) array."""
    if codec == "jpeg":
        if img.dtype != np.uint8:
            raise ValueError("JPEG holds 8-bit images only; use --codec png for 16-bit")
        return jpeg_encoder().encode(img, quality)
    buf = io.BytesIO()
    if codec == "png":
        if img.dtype == np.uint16:
            if img.ndim != 2:
                raise ValueError("16-bit PNG output is grayscale only")
            Image.fromarray(img, mode="I;16").save(buf, format="PNG", compress_level=1)
        else:
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown codec {codec!r}: jpeg or png")
    return buf.getvalue()


_TABLES: dict[tuple, np.ndarray] = {}
_MAX_TABLES = 64


def cached_table(key: tuple, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The table ``build()`` makes for ``key``, made once per process (the newest 64 are kept)."""
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        table = _TABLES[key] = build()
    return table


def value_table(dtype: Any, slope: float, intercept: float, transfer: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transfer`` of every value of an 8- or 16-bit integer ``dtype``, rescaled, in bit-pattern order.

    Entry ``i`` holds the output for the stored value whose bits read ``i`` as an unsigned integer,
    so :func:`lookup` indexes the table with a view of the pixels, no conversion.
    """
    dtype = np.dtype(dtype)
    values = np.arange(1 << (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(dtype)
    return transfer(values.astype(np.float32) * np.float32(slope) + np.float32(intercept))


try:  # the compiled loop (unimed/ingest/_lut.c), built at install where a C compiler is at hand
    from unimed.ingest import _lut
except ImportError:  # no compiler at install: numpy's take, the same bytes at about 40% of the speed
    _lut = None  # type: ignore[assignment]

#: Which loop :func:`lookup` runs in this process: ``compiled`` or ``numpy`` (logged by ``convert``).
LOOKUP = "compiled" if _lut is not None else "numpy"


def lookup(arr: np.ndarray, table: np.ndarray, compiled: bool = True) -> np.ndarray:
    """``table`` (from :func:`value_table`) applied to integer pixels ``arr`` of the same dtype.

    The compiled loop reads each pixel once (0.08 ms a 512² slice against numpy ``take``'s 0.19-0.24 ms,
    which casts every index to ``intp`` first); ``compiled=False``, a byte-swapped array or a build
    without the extension take numpy's path, which gives the same array.
    """
    index = arr.view(f"u{arr.dtype.itemsize}")
    if not (compiled and _lut is not None and arr.dtype.isnative and table.shape[0] == 1 << (8 * arr.dtype.itemsize)):
        return np.take(table, index, axis=0)
    table = np.ascontiguousarray(table)
    out = np.empty(arr.shape + table.shape[1:], dtype=table.dtype)
    _lut.take(np.ascontiguousarray(index), table, out, arr.dtype.itemsize)
    return out


def lookup_range(arr: np.ndarray, lut: np.ndarray, lo: int) -> np.ndarray:
    """``lut[v - lo]`` for each integer pixel ``v`` of ``arr`` (``lut`` covers ``arr.min()``..``arr.max()``
    from ``lo``): a table built for one slice's own range. 8- and 16-bit pixels go through the compiled
    loop of :func:`lookup`, the table spread over every bit pattern first."""
    size = arr.dtype.itemsize
    if LOOKUP == "compiled" and size <= 2 and arr.dtype.isnative:
        full = np.zeros((1 << (8 * size), *lut.shape[1:]), lut.dtype)
        full[np.arange(lo, lo + lut.shape[0]).astype(arr.dtype).view(f"u{size}")] = lut
        return lookup(arr, full)
    return np.take(lut, np.subtract(arr, lo, dtype=np.int32), axis=0)
