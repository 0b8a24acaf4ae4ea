"""The source registry: one module per input kind, each recognizing its inputs and yielding 2D images.

A source turns a *task* (one file, a few files of a series, a volume) into :class:`Item` objects: a
2D image already transformed to display intensities, with labels or report text and allow-listed
metadata. Sources never see shards; the writer never sees file formats.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Item", "Task", "Source", "Options", "register", "registry", "get_source", "TIMES", "timed"]

#: Seconds spent per stage in this process (``decode`` is measured by sources; the rest by the writer).
TIMES: dict[str, float] = {}


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``TIMES[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        TIMES[stage] = TIMES.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class Options:
    """Conversion options every source may read (built from the CLI flags)."""

    modality: str = "auto"
    window: str = "auto"  # auto | file | NAME[,NAME,NAME] (CT Hounsfield windows, several -> channels)
    axis: str = "auto"  # volumes: auto (acquisition plane) | axial | coronal | sagittal | 0 | 1 | 2
    percentiles: tuple[float, float] = (0.5, 99.5)
    allow_burned_in: bool = False
    bits: int = 8  # 8, or 16 for PNG output
    tile_size: int = 256  # slides: output tile side in pixels
    mpp: float = 0.5  # slides: microns per pixel of the tiles where the slide states its resolution
    level: int | None = None  # slides: a pyramid level instead of --mpp (or where the resolution is unknown)
    min_tissue: float = 0.5  # slides: fraction of a tile that must be tissue
    max_tiles: int = 1000  # slides: at most this many tiles per slide (0: no cap)
    text: str = "scrub"  # free text: scrub (remove PHI) | findings (keep only clinical-vocabulary sentences)


@dataclass
class Item:
    """One 2D image ready to encode.

    ``pixels`` is uint8 (or uint16 for 16-bit PNG output), H×W or H×W×3, display-ready.
    ``key`` identifies the image within its source (e.g. a SOP Instance UID and frame, a file hash
    and slice); the writer turns it into the keyed-hash ``uid``. ``meta`` holds allow-listed facts only.
    ``texts`` are captions from free text (a manifest caption, a report), already cleaned and scrubbed.
    ``patient`` and ``study`` are the raw messages of :func:`unimed.ingest.deid.subject` (``""`` where the
    input names no patient or study); the writer stores only their keyed hashes.
    """

    pixels: np.ndarray
    modality: str
    key: str
    labels: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    anatomy: str | None = None
    patient: str = ""
    study: str = ""


@dataclass
class Task:
    """A unit of work: one source applied to one or more files (a series is several)."""

    source: str
    paths: list[str]
    weight: int = 0  # bytes on disk, to balance chunks
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. series position, header facts

    @property
    def name(self) -> str:
        """The path reported in progress lines and rejects."""
        return self.paths[0]


class Source:
    """Base class of an input kind. Subclasses set ``name``, ``requires`` and implement the methods."""

    name: str = ""
    requires: tuple[str, ...] = ()  # importable modules this source needs
    suffixes: tuple[str, ...] = ()

    @classmethod
    def missing(cls) -> list[str]:
        """The required modules that cannot be imported here (looked up once per process: a lookup
        walks sys.path, ~0.1 ms, and planning asks for every file)."""
        return [m for m in cls.requires if not _importable(m)]

    def probe(self, path: Path, head: bytes) -> bool:
        """Whether this source reads ``path`` (``head`` is its first 256 bytes)."""
        raise NotImplementedError

    def plan(self, path: Path, opts: Options) -> Task | list[Task]:
        """Turn one recognized file into tasks; may read headers. Raises RejectError."""
        return Task(self.name, [str(path)], weight=path.stat().st_size)

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        """Yield the 2D images of a task. Raises RejectError for an input it cannot convert."""
        raise NotImplementedError


@functools.cache
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


_REGISTRY: dict[str, Source] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator adding a source to the registry (a name registered twice warns)."""
    if cls.name in _REGISTRY:
        warnings.warn(f"source {cls.name!r} registered twice; the later one wins", stacklevel=2)
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, Source]:
    """All registered sources in probe order (manifests, slides, then DICOM: a slide may be DICOM or TIFF)."""
    from unimed.ingest import sources  # noqa: F401  (importing the package registers the sources)

    return dict(_REGISTRY)


def get_source(name: str) -> Source:
    """The registered source called ``name``."""
    return registry()[name]


Probe = Callable[[Path, bytes], bool]
