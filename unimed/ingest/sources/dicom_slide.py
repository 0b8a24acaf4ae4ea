"""DICOM whole-slide images (VL Whole Slide Microscopy, modality SM): one file is one pyramid level.

Frames are the stored tiles of the total pixel matrix (``TILED_FULL``: row by row); each is decoded on
its own by pydicom, so memory stays that of a few tiles. Label and overview images (which show the
slide label) are rejected; the burned-in gate of :mod:`unimed.ingest.deid` applies as for any DICOM
file. Resolution comes from the shared pixel measures (millimetres per pixel). The modality is the
file's (SM: pathology); ``--modality`` fills in where it states none, ``--force-modality`` replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from unimed.errors import RejectError, safe_reason
from unimed.ingest import deid
from unimed.ingest.sources.base import Item, Options, SlideTiling, Task
from unimed.ingest.sources.dicom import file_modality
from unimed.ingest.sources.tiles import TiledReader, tile_items

__all__ = ["plan", "iter_items", "DicomSlide"]

_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "ImageType",
    "BurnedInAnnotation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
    "DimensionOrganizationType",
    "SharedFunctionalGroupsSequence",
    "PatientID",
    "IssuerOfPatientID",
    "StudyInstanceUID",
]


def _header(path: str | Path):  # noqa: ANN202 - a pydicom Dataset
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:
        raise RejectError(f"unreadable DICOM slide ({safe_reason(exc)})") from None


def _mpp(ds) -> float | None:  # noqa: ANN001
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return float(spacing[1]) * 1000.0
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def plan(path: Path, opts: Options) -> Task:
    """Check one DICOM whole-slide file and describe its tiling."""
    ds = _header(path)
    kinds = {str(v).upper() for v in (ds.get("ImageType") or [])}
    if kinds & {"LABEL", "OVERVIEW"}:
        raise RejectError("slide label or overview image (shows the slide label); not converted")
    deid.check_burned_in(ds, opts.allow_burned_in)
    org = str(ds.get("DimensionOrganizationType", "TILED_FULL")).upper()
    if org != "TILED_FULL":
        shown = org if org in ("TILED_SPARSE", "3D", "3D_TEMPORAL") else "another"  # echo coded values only
        raise RejectError(f"DICOM slide with {shown} organization is not supported (TILED_FULL only)")
    modality, overridden = file_modality(ds, opts, fallback="pathology")
    tiling = SlideTiling(
        size=(int(ds.get("TotalPixelMatrixColumns") or ds.Columns), int(ds.get("TotalPixelMatrixRows") or ds.Rows)),
        tile=(int(ds.Columns), int(ds.Rows)),
        mpp=_mpp(ds),
        subject=deid.subject(ds),  # raw; the writer keeps only the keyed hashes
    )
    return Task(
        "slide",
        [str(path)],
        weight=min(path.stat().st_size, 1 << 30),
        modality=modality,
        sop=str(ds.get("SOPInstanceUID", "")) or None,
        frames=int(ds.get("NumberOfFrames") or 1),
        tiling=tiling,
        overridden=overridden,
    )


class DicomSlide(TiledReader):
    """One level: frames decoded one at a time with ``pydicom.pixels.pixel_array(path, index=i)``."""

    def __init__(self, path: str, size: tuple[int, int], tile: tuple[int, int], frames: int) -> None:
        super().__init__()
        self.path, self.sizes, self.tile, self.frames = path, [size], tile, frames

    def geometry(self, level: int) -> tuple[int, int]:
        return self.tile

    def load(self, level: int, index: int) -> np.ndarray | None:
        from pydicom.pixels import pixel_array

        if index >= self.frames:
            return None
        return pixel_array(self.path, index=index)


def iter_items(task: Task, opts: Options) -> Iterator[Item]:
    """The tiles of one DICOM slide level (a task :func:`plan` made)."""
    tiling = task.tiling
    assert tiling is not None, "a DICOM slide task carries its tiling"
    reader = DicomSlide(task.paths[0], tiling.size, tiling.tile, task.frames)
    identity = f"dicom-slide:{task.sop or task.paths[0]}"
    modality = task.modality or "pathology"
    patient, study = tiling.subject
    try:
        for item in tile_items(reader, reader.sizes, tiling.mpp, identity, modality, opts):
            item.patient, item.study = patient, study
            yield item
    except RejectError:
        raise
    except Exception as exc:
        raise RejectError(f"cannot decode slide frames ({safe_reason(exc)})") from None
