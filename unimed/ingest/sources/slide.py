"""Whole-slide images: pyramidal TIFF / SVS (tifffile) and DICOM whole-slide (VL WSI) files, as tiles.

Tiles of ``--tile-size`` pixels are cut at ``--mpp`` microns per pixel where the slide states its
resolution (SVS ``MPP``, TIFF resolution tags, DICOM pixel spacing): from the coarsest level at
least that fine, resampled to the exact scale; otherwise at ``--level``. Background is dropped by a
tissue test: a saturation threshold (Otsu on the slide's smallest level, at least 0.07) must hold on
``--min-tissue`` of a tile, first on the low-resolution mask (so background tiles are never even
decoded), then on the tile itself. ``--max-tiles`` caps the tiles of one slide (an even, seeded pick)
so one slide cannot dominate. Tile position (level-0 pixels), level and scale go into ``meta``.

Reading is streamed: stored tiles are read and decoded one at a time through the file handle (a small
cache serves neighbouring output tiles), so memory does not grow with the slide. Only the pyramid is
read: label and macro images (which carry handwriting and barcodes) and the TIFF description (which
carries file names and dates) never reach a shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unimed.errors import RejectError, safe_reason
from unimed.ingest import intensity
from unimed.ingest.sources.base import Item, Options, Source, Task, register, timed

__all__ = ["SlideSource", "TiledReader", "TiffSlide", "tile_items", "tissue_threshold", "saturation"]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_WSI_SOP = b"1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_BIG = 8192  # a tiled TIFF at least this wide is a slide even with one level
_CACHE_BYTES = 64 << 20


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of a uint8 RGB array."""
    mx = rgb.max(axis=-1).astype(np.float32)
    mn = rgb.min(axis=-1).astype(np.float32)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)


def tissue_threshold(sat: np.ndarray, floor: float = 0.07) -> float:
    """Otsu's threshold of a saturation image (not below ``floor``, so a blank slide stays blank)."""
    hist, edges = np.histogram(sat, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    w = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * w - mu) ** 2 / np.maximum(w * (1 - w), 1e-12)
    return max(float(edges[int(np.argmax(between)) + 1]), floor)


class TiledReader:
    """Regions of a tiled pyramid assembled from stored tiles, with a small LRU cache of decoded tiles.

    Subclasses set ``sizes`` (level sizes) and implement ``geometry(level)`` (tile width, height) and
    ``load(level, index)`` (one decoded tile, or None for a sparse one).
    """

    sizes: list[tuple[int, int]]

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cached = 0

    def geometry(self, level: int) -> tuple[int, int]:
        raise NotImplementedError

    def load(self, level: int, index: int) -> np.ndarray | None:
        raise NotImplementedError

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        key = (level, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        tile = self.load(level, index)
        tile = None if tile is None else _rgb(tile)
        self._cache[key] = tile
        self._cached += 0 if tile is None else tile.nbytes
        while self._cached > _CACHE_BYTES and self._cache:
            old = self._cache.popitem(last=False)[1]
            self._cached -= 0 if old is None else old.nbytes
        return tile

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The RGB region (x, y, w, h) of a level (level pixels); outside the image and sparse tiles are white."""
        out = np.full((h, w, 3), 255, np.uint8)
        tw, th = self.geometry(level)
        width, height = self.sizes[level]
        across = -(-width // tw)
        for ty in range(max(y, 0) // th, min(y + h, height) // th + 1):
            for tx in range(max(x, 0) // tw, min(x + w, width) // tw + 1):
                if tx * tw >= width or ty * th >= height:
                    continue
                tile = self._tile(level, ty * across + tx)
                if tile is None:
                    continue
                x0, y0 = tx * tw, ty * th
                ax, ay = max(x, x0), max(y, y0)
                bx, by = min(x + w, x0 + tw, width), min(y + h, y0 + th, height)
                if bx > ax and by > ay:
                    out[ay - y:by - y, ax - x:bx - x] = tile[ay - y0:by - y0, ax - x0:bx - x0]
        return out


class TiffSlide(TiledReader):
    """The pyramid of a tiled TIFF / SVS, read tile by tile through the file handle."""

    def __init__(self, path: str) -> None:
        import tifffile

        super().__init__()
        self.tif = tifffile.TiffFile(path)
        series = self.tif.series[0]
        self.pages = [lvl.keyframe for lvl in series.levels]
        self.sizes = [(int(p.imagewidth), int(p.imagelength)) for p in self.pages]
        for p in self.pages:
            if not p.is_tiled and p.imagewidth * p.imagelength > 64 << 20:
                raise RejectError("slide level is stored in strips and too large to stream; re-save it tiled")
        self.mpp = self._mpp()

    def _mpp(self) -> float | None:
        page = self.pages[0]
        desc = page.description or ""
        if "MPP" in desc:  # Aperio: "... |MPP = 0.4990|..." (only this number is read)
            for part in desc.split("|"):
                key, _, value = part.partition("=")
                if key.strip() == "MPP":
                    try:
                        return float(value)
                    except ValueError:
                        break
        xres, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
        if xres is None or unit is None or int(unit.value) not in (2, 3):
            return None
        num, den = xres.value
        per_unit = num / den if den else 0.0
        return None if per_unit <= 0 else (1e4 if int(unit.value) == 3 else 25400.0) / per_unit

    def close(self) -> None:
        self.tif.close()

    def geometry(self, level: int) -> tuple[int, int]:
        page = self.pages[level]
        return (int(page.tilewidth), int(page.tilelength)) if page.is_tiled else self.sizes[level]

    def load(self, level: int, index: int) -> np.ndarray | None:
        page = self.pages[level]
        if not page.is_tiled:
            return page.asarray()  # a small untiled level (checked above): one "tile"
        n = page.databytecounts[index]
        if not n:
            return None  # a sparse (never written) tile: background
        decode, tables = page.decode, page.jpegtables  # first, since building them may move the file position
        fh = self.tif.filehandle
        fh.seek(page.dataoffsets[index])
        seg, _, shape = decode(fh.read(n), index, jpegtables=tables)
        return None if seg is None else np.asarray(seg).reshape(shape[-3:])


def _rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        arr = (arr >> 8).astype(np.uint8) if arr.dtype == np.uint16 else np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    return arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, axis=-1)


def _digest(path: str) -> str:
    """Identity of a slide without hashing gigabytes: size, head and tail."""
    h = hashlib.sha1(str(os.path.getsize(path)).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(os.path.getsize(path) - (1 << 20), 0))
        h.update(fh.read(1 << 20))
    return h.hexdigest()


def choose_level(sizes: list[tuple[int, int]], mpp: float | None, opts: Options) -> tuple[int, float, float | None]:
    """(level, level pixels per output pixel, output mpp) for ``--mpp`` / ``--level``."""
    if opts.level is not None or mpp is None:
        level = opts.level or 0
        if not 0 <= level < len(sizes):
            raise RejectError(f"slide has {len(sizes)} levels; --level {level} does not exist")
        down = sizes[0][0] / sizes[level][0]
        return level, 1.0, (mpp * down if mpp else None)
    level_mpp = [mpp * sizes[0][0] / w for w, _ in sizes]
    fine = [i for i, m in enumerate(level_mpp) if m <= opts.mpp * 1.02]
    level = max(fine) if fine else 0
    return level, max(opts.mpp / level_mpp[level], 1.0) if fine else 1.0, max(opts.mpp, level_mpp[level])


@contextlib.contextmanager
def _silent(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


@register
class SlideSource(Source):
    """Pyramidal TIFF / SVS slides and DICOM whole-slide images."""

    name = "slide"
    requires = ("tifffile",)
    suffixes = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".dcm")

    def probe(self, path: Path, head: bytes) -> bool:
        if _WSI_SOP in head:
            return True
        if not any(head.startswith(m) for m in _TIFF_MAGIC):
            return False
        if path.suffix.lower() in (".svs", ".ndpi", ".scn", ".bif"):
            return True
        try:
            import tifffile

            # A DICOM file's preamble may look like TIFF: what tifffile says about it is not about a slide.
            with _silent("tifffile"), tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return bool(page.is_tiled) and (len(tif.series[0].levels) > 1 or page.imagewidth >= _BIG)
        except Exception:
            return False

    def plan(self, path: Path, opts: Options) -> Task:
        kind = "dicom" if path.suffix.lower() == ".dcm" or not str(path).lower().endswith(
            (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")) else "tiff"
        with open(path, "rb") as fh:
            if _WSI_SOP in fh.read(256):
                kind = "dicom"
        if kind == "dicom":
            from unimed.ingest.sources import dicom_slide

            return dicom_slide.plan(path, opts)
        return Task(self.name, [str(path)], weight=min(path.stat().st_size, 1 << 30), extra={"kind": "tiff"})

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        modality = task.extra.get("modality") or ("pathology" if opts.modality == "auto" else opts.modality)
        if task.extra.get("kind") == "dicom":
            from unimed.ingest.sources import dicom_slide

            yield from dicom_slide.iter_items(task, opts, modality)
            return
        path = task.paths[0]
        try:
            with timed("decode"):
                slide = TiffSlide(path)
        except Exception as exc:
            raise RejectError(f"unreadable slide ({safe_reason(exc)})") from None
        try:
            yield from tile_items(slide, slide.sizes, slide.mpp, f"slide:{_digest(path)}", modality, opts)
        except RejectError:
            raise
        except Exception as exc:
            raise RejectError(f"cannot decode slide tiles ({safe_reason(exc)})") from None
        finally:
            slide.close()


def tile_items(reader: Any, sizes: list[tuple[int, int]], mpp: float | None, identity: str, modality: str,
               opts: Options) -> Iterator[Item]:
    """Cut, test and yield the tiles of a slide (``reader.read(level, x, y, w, h)`` gives RGB regions)."""
    level, scale, out_mpp = choose_level(sizes, mpp, opts)
    width, height = sizes[level]
    span = max(1, round(opts.tile_size * scale))  # level pixels per tile
    # Tissue mask from the smallest level (when small enough to hold), in its own pixels.
    small = min(range(len(sizes)), key=lambda i: sizes[i][0])
    sw, sh = sizes[small]
    mask, thr = None, 0.07
    if sw * sh <= 4096 * 4096 and small != level:
        with timed("decode"):
            sat = saturation(reader.read(small, 0, 0, sw, sh))
        thr = tissue_threshold(sat)
        mask = sat > thr
    fx, fy = sw / width, sh / height
    candidates = []
    for y in range(0, height - span + 1, span):
        for x in range(0, width - span + 1, span):
            if mask is not None:
                win = mask[int(y * fy):max(int((y + span) * fy), int(y * fy) + 1),
                           int(x * fx):max(int((x + span) * fx), int(x * fx) + 1)]
                if win.size == 0 or win.mean() < opts.min_tissue * 0.5:  # lenient: the tile test decides
                    continue
            candidates.append((x, y))
    if opts.max_tiles and len(candidates) > opts.max_tiles:
        # A stable random order per slide; the cap counts tiles kept, so background never uses it up.
        rng = np.random.default_rng(int(hashlib.sha1(identity.encode()).hexdigest()[:8], 16))
        candidates = [candidates[i] for i in rng.permutation(len(candidates))]
    down = sizes[0][0] / width
    kept = 0
    for x, y in candidates:
        if opts.max_tiles and kept >= opts.max_tiles:
            break
        with timed("decode"):
            region = reader.read(level, x, y, span, span)
        tissue = float((saturation(region) > thr).mean())
        if tissue < opts.min_tissue:
            continue
        if span != opts.tile_size:
            region = intensity.resize_max(region, opts.tile_size)
        meta = {"tile_x": int(round(x * down)), "tile_y": int(round(y * down)), "level": level,
                "tile_size": opts.tile_size, "level_downsample": round(down, 4), "scale": round(scale, 4),
                "tissue": round(tissue, 3), "slide_width": sizes[0][0], "slide_height": sizes[0][1]}
        if out_mpp:
            meta["mpp"] = round(out_mpp, 4)
        kept += 1
        yield Item(pixels=np.ascontiguousarray(region), modality=modality,
                   key=f"{identity}:{level}:{x}:{y}:{opts.tile_size}", meta=meta)
