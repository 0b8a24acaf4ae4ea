"""Whole-slide images: pyramidal TIFF / SVS (tifffile) and DICOM whole-slide (VL WSI) files, as tiles.

Tiles of ``--tile-size`` pixels are cut at ``--mpp`` microns per pixel where the slide states its
resolution (SVS ``MPP``, TIFF resolution tags, DICOM pixel spacing): from the coarsest level at
least that fine, resampled to the exact scale; otherwise at ``--level``. Background is dropped by a
tissue test: a saturation threshold (Otsu on the slide's smallest level, at least 0.07) must hold on
``--min-tissue`` of a tile, first on the low-resolution mask (so background tiles are never even
decoded), then on the tile itself. ``--max-tiles`` caps the tiles of one slide (an even, seeded pick)
so one slide cannot dominate. Tile position (level-0 pixels), level and scale go into ``meta``
(the tiling itself is :mod:`unimed.ingest.sources.tiles`, shared with the DICOM reader).

The reader is picked by the file's first bytes, never its name (:func:`reader_kind`): a TIFF or BigTIFF
header goes to the TIFF reader (a tiled pyramid named ``slide_001`` is a slide), DICM with the VL Whole
Slide Microscopy SOP class to :mod:`unimed.ingest.sources.dicom_slide`.

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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from unimed.errors import RejectError, safe_reason
from unimed.ingest.sources import dicom_slide
from unimed.ingest.sources.base import Item, Options, Source, Task, register, timed
from unimed.ingest.sources.tiles import TiledReader, saturation, tile_items

# ``saturation`` is imported here for the benchmark's tissue test (benchmarks/ingest.py); it lives in .tiles.
__all__ = ["SlideSource", "TiffSlide", "reader_kind", "saturation"]

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, little- and big-endian
_WSI_SOP = b"1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")  # scanner formats: TIFF inside, a slide by name
_BIG = 8192  # a tiled TIFF at least this wide is a slide even with one level


def reader_kind(head: bytes) -> str | None:
    """The slide reader a file's first 256 bytes call for: ``"dicom"``, ``"tiff"`` or None (not a slide).

    ``"dicom"``: DICM at offset 128 and the VL Whole Slide Microscopy SOP class in the file meta (checked
    first: a DICOM preamble may hold a TIFF header), or that SOP class in a data set without preamble.
    ``"tiff"``: a TIFF or BigTIFF header, whatever the file's name. The name never decides.
    """
    if head[128:132] == b"DICM":
        return "dicom" if _WSI_SOP in head else None
    if head.startswith(TIFF_MAGIC):
        return "tiff"
    return "dicom" if _WSI_SOP in head else None


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


def _digest(path: str) -> str:
    """Identity of a slide without hashing gigabytes: size, head and tail."""
    h = hashlib.sha1(str(os.path.getsize(path)).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(os.path.getsize(path) - (1 << 20), 0))
        h.update(fh.read(1 << 20))
    return h.hexdigest()


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
    """Pyramidal TIFF / SVS slides and DICOM whole-slide images, told apart by their first bytes."""

    name = "slide"
    priority = 20  # before DICOM (a WSI file is one level of a pyramid) and plain images (a TIFF read whole)
    requires = ("tifffile",)

    def probe(self, path: Path, head: bytes) -> bool:
        kind = reader_kind(head)
        if kind != "tiff":
            return kind == "dicom"
        if path.suffix.lower() in _SLIDE_SUFFIXES:
            return True
        try:
            import tifffile

            # A TIFF of any name is a slide when it is tiled and a pyramid (or too wide to read whole).
            with _silent("tifffile"), tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return bool(page.is_tiled) and (len(tif.series[0].levels) > 1 or page.imagewidth >= _BIG)
        except Exception:
            return False

    def plan(self, path: Path, opts: Options) -> Task:
        with open(path, "rb") as fh:
            kind = reader_kind(fh.read(256))
        if kind == "dicom":
            return dicom_slide.plan(path, opts)
        return Task(self.name, [str(path)], weight=min(path.stat().st_size, 1 << 30))

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        if task.tiling is not None:
            yield from dicom_slide.iter_items(task, opts)
            return
        modality = task.modality or ("pathology" if opts.modality == "auto" else opts.modality)
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
