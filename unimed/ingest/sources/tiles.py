"""Tiling shared by the whole-slide readers (TIFF in :mod:`.slide`, DICOM in :mod:`.dicom_slide`).

A reader is a :class:`TiledReader`: level sizes and stored tiles, assembled into regions with a small
LRU cache of decoded tiles, so memory stays that of a few tiles. :func:`tile_items` picks the level
for ``--mpp`` / ``--level``, drops background by the tissue test on a low-resolution mask and then on
each tile, caps the tiles of one slide (``--max-tiles``: an even, seeded pick) and yields them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from unimed.errors import RejectError
from unimed.ingest import intensity
from unimed.ingest.sources.base import Item, Options, timed

__all__ = ["TiledReader", "tile_items", "choose_level", "tissue_threshold", "saturation"]

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
                    out[ay - y : by - y, ax - x : bx - x] = tile[ay - y0 : by - y0, ax - x0 : bx - x0]
        return out


def _rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        arr = (arr >> 8).astype(np.uint8) if arr.dtype == np.uint16 else np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    return arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, axis=-1)


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


def tile_items(
    reader: Any, sizes: list[tuple[int, int]], mpp: float | None, identity: str, modality: str, opts: Options
) -> Iterator[Item]:
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
                win = mask[
                    int(y * fy) : max(int((y + span) * fy), int(y * fy) + 1),
                    int(x * fx) : max(int((x + span) * fx), int(x * fx) + 1),
                ]
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
        meta = {
            "tile_x": int(round(x * down)),
            "tile_y": int(round(y * down)),
            "level": level,
            "tile_size": opts.tile_size,
            "level_downsample": round(down, 4),
            "scale": round(scale, 4),
            "tissue": round(tissue, 3),
            "slide_width": sizes[0][0],
            "slide_height": sizes[0][1],
        }
        if out_mpp:
            meta["mpp"] = round(out_mpp, 4)
        kept += 1
        yield Item(
            pixels=np.ascontiguousarray(region),
            modality=modality,
            key=f"{identity}:{level}:{x}:{y}:{opts.tile_size}",
            meta=meta,
        )
