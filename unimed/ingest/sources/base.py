"""The source registry: one module per input kind, each recognizing its inputs and yielding 2D images.

A source turns a *task* (one file, a few files of a series, a volume) into :class:`Item` objects: a
2D image already transformed to display intensities, with labels or report text and allow-listed
metadata. Sources never see shards; the writer never sees file formats.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Item",
    "Task",
    "SeriesPlace",
    "SlideTiling",
    "ManifestEntry",
    "Source",
    "Options",
    "register",
    "registry",
    "get_source",
    "TIMES",
    "timed",
]

log = logging.getLogger("unimed.ingest")

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
    """Conversion options every source may read (``ConvertConfig.read``; the ``ingest convert`` flags
    take their defaults from these fields)."""

    modality: str = "auto"  # for inputs that carry none (auto: reject those); DICOM keeps its own
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
    force_modality: bool = False  # ``modality`` replaces the one a file states (else it fills in where none is stated)


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
class SeriesPlace:
    """Where a single-frame DICOM file lies in its series: read by planning, indexed by ``DicomSource.group``."""

    uid: str  # SeriesInstanceUID (raw: it never reaches a shard)
    position: float | None = None  # along the slice normal; None where the header gives no geometry
    instance: int = 0  # InstanceNumber: the tie-break
    index: int | None = None  # slice index once the series is ordered (a series of one file has none)
    count: int = 1  # files in the series


@dataclass
class SlideTiling:
    """The tiling of one DICOM whole-slide level, read by planning."""

    size: tuple[int, int]  # total pixel matrix (columns, rows)
    tile: tuple[int, int]  # one frame (columns, rows)
    mpp: float | None  # microns per pixel, None where the file does not say
    subject: tuple[str, str] = ("", "")  # raw patient and study messages; the writer keeps their keyed hashes


@dataclass
class ManifestEntry:
    """The rows of an image-text manifest that name one image (texts are cleaned at conversion)."""

    rows: list[int] = field(default_factory=list)  # row numbers, from 1 (rejects name the first)
    captions: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)


@dataclass
class Task:
    """A unit of work: one source applied to one or more files (a series is several).

    Sources fill what they learn at planning; :func:`unimed.ingest.convert.plan` adds what the run
    knows (labels, ``--source``, duplicates); the writer and the source read it back at conversion.
    Plain data only: a task is pickled to worker processes and Ray tasks.
    """

    source: str
    paths: list[str]
    weight: int = 0  # bytes on disk, to balance chunks
    modality: str | None = None  # decided by planning, a label table or a manifest; None: the source decides
    labels: list[str] = field(default_factory=list)  # from --labels, --class-folders or a manifest
    view: str | None = None  # "frontal" | "lateral": a label table's projection column (meta.view)
    source_name: str = "unknown"  # the dataset name (--source)
    origin: str | None = None  # the input file the task was planned from (a manifest for its rows)
    alternates: list[str] = field(default_factory=list)  # other copies of one DICOM instance, in path order
    sop: str | None = None  # DICOM SOP Instance UID (raw): duplicates and the sample key
    frames: int = 1  # frames in the file
    header: Any = None  # the parsed header, kept where conversion can read the pixel bytes directly
    series: SeriesPlace | None = None  # single-frame DICOM files of a series
    tiling: SlideTiling | None = None  # DICOM whole-slide files
    manifest: ManifestEntry | None = None  # images a manifest lists
    overridden: str | None = None  # the coded modality the file states that --force-modality replaced

    @property
    def name(self) -> str:
        """The path reported in progress lines and rejects."""
        return self.paths[0]

    @property
    def listed(self) -> bool:
        """Whether a manifest lists this image (it is then converted with its captions, not on its own)."""
        return self.manifest is not None


class Source:
    """Base class of an input kind. Subclasses set ``name``, ``priority``, ``requires`` and implement the methods."""

    name: str = ""
    priority: int = 100  # probe order, lowest first (see :func:`registry`)
    requires: tuple[str, ...] = ()  # importable modules this source needs

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

    def group(self, tasks: list[Task]) -> list[Task]:
        """Finish the plan of this source's tasks, once a run, in the main process (e.g. order a series).

        The base reports, in one warning, the files whose stated modality ``--force-modality`` replaced.
        """
        warn_forced(tasks)
        return tasks


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
    """All registered sources in probe order: by ``priority``, then name, whatever the import order.

    manifest 10, slide 20, dicom 30, image 40, nifti 50: a manifest is a CSV/JSON file no other source
    reads; a slide is a tiled TIFF (which the image source would read whole) or a DICOM whole-slide file
    (which the DICOM source would read as one huge image), so both come before DICOM and plain images;
    NIfTI is recognized by its name alone, so it comes last.
    """
    from unimed.ingest import sources  # noqa: F401  (importing the package registers the sources)

    return {s.name: s for s in sorted(_REGISTRY.values(), key=lambda s: (s.priority, s.name))}


def get_source(name: str) -> Source:
    """The registered source called ``name``."""
    return registry()[name]


def warn_forced(tasks: list[Task]) -> None:
    """One warning for the tasks whose file states a modality that ``--force-modality`` replaced.

    Only coded values reach it (``Task.overridden`` holds an allow-listed DICOM Modality term).
    """
    forced = [t for t in tasks if t.overridden]
    if not forced:
        return
    counts = Counter(t.overridden for t in forced)
    stated = ", ".join(f"{code} in {n} file{'s' if n > 1 else ''}" for code, n in sorted(counts.items()))
    log.warning("--force-modality %s: overrides the modality the files state (%s)", forced[0].modality, stated)
