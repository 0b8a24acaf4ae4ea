"""DICOM files, multi-frame files and series.

Every transfer syntax pydicom decodes with its pylibjpeg (JPEG, JPEG-LS, JPEG 2000, RLE) and GDCM
plugins. Each header is parsed once: planning reads it with :mod:`unimed.ingest.dicom_header` (the
common little-endian syntaxes; pydicom for the rest) and keeps it in the task, and conversion of an
uncompressed single-frame image then reads only its pixel bytes; every other file is read whole by
pydicom at conversion. Single-frame files of one series are ordered along the slice normal, then by
InstanceNumber, and carry their slice index. A file keeps the modality its coded Modality names
(:data:`MODALITY_MAP`); ``--modality`` fills in where it names none, and replaces it only with
``--force-modality`` (one warning a run counts the files it overrode). Intensity follows
:mod:`unimed.ingest.intensity`: modality LUT (rescale), window (CT: a Hounsfield window, the one ``--window`` names
or soft tissue;
``--window file`` and every other modality: the file's VOI LUT or window, else percentiles, so a
Hounsfield window never reaches an X-ray or MR image), MONOCHROME1 inverted after windowing; colour
images converted to RGB. A multi-frame file scaled by percentiles takes them over all its frames
(one scale for the object). Empty frames (constant stored values) are skipped before windowing, so
a frame the window saturates is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unimed.errors import RejectError, safe_reason
from unimed.ingest import deid, intensity
from unimed.ingest.dicom_header import Header, read_header, read_native
from unimed.ingest.sources.base import Item, Options, SeriesPlace, Source, Task, register, timed

__all__ = ["DicomSource", "MODALITY_MAP", "dicom_frame_to_display", "file_modality", "percentile_range"]

#: DICOM Modality -> unimed modality. A file with any other value (or none) takes --modality, or is rejected.
MODALITY_MAP: dict[str, str] = {
    "CR": "xray",
    "DX": "xray",
    "MG": "xray",
    "PX": "xray",
    "IO": "xray",
    "RF": "xray",
    "XA": "xray",
    "CT": "ct",
    "MR": "mri",
    "US": "ultrasound",
    "SM": "pathology",
    "OP": "fundus",
}

_QUIET = False


def _quiet_pydicom() -> None:
    """pydicom reads without validating values (its warnings quote them), set on its first use here."""
    global _QUIET
    if not _QUIET:
        import pydicom.config

        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        _QUIET = True


def dcmread(path: str | Path, header_only: bool = False) -> Any:
    """Read a DICOM file; one without file meta information (no preamble) is read as a bare data set.

    For a bare data set the transfer syntax is set from the encoding pydicom detected, so its
    pixels decode. Raises RejectError with a one-line reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    _quiet_pydicom()
    kw: dict[str, Any] = {"stop_before_pixels": True, "specific_tags": PLAN_TAGS} if header_only else {}
    try:
        return pydicom.dcmread(path, **kw)
    except InvalidDicomError:
        pass
    except Exception as exc:  # pydicom raises many kinds on broken files
        raise RejectError(f"unreadable DICOM file ({safe_reason(exc)})") from None
    try:
        ds = pydicom.dcmread(path, force=True, **kw)
    except Exception as exc:
        raise RejectError(f"not a valid DICOM file ({safe_reason(exc)})") from None
    if "SOPClassUID" not in ds or len(ds) < 3:
        raise RejectError("not a valid DICOM file (no file meta information and no SOP Class UID)")
    if not getattr(ds.file_meta, "TransferSyntaxUID", None):
        implicit, little = ds.original_encoding if hasattr(ds, "original_encoding") else (True, True)
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    return ds


#: What planning reads of a header (the pixels and everything else stay on disk).
PLAN_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "BurnedInAnnotation",
]


def _read_header(path: Path) -> Any:
    """The header by the fast reader, or by pydicom where that leaves the file to it."""
    header = read_header(str(path))
    return header if header is not None else dcmread(path, header_only=True)


def file_modality(ds: Any, opts: Options, fallback: str | None = None) -> tuple[str, str | None]:
    """The unimed modality of a DICOM file, and the coded Modality it states where ``--force-modality``
    replaced it (else None).

    A file whose Modality maps to a unimed modality (:data:`MODALITY_MAP`) keeps it; ``--modality``
    is the value for a file that states none (missing, free text, or a term with no unimed modality),
    and replaces the file's own only with ``--force-modality``. Without either, ``fallback`` (a whole-
    slide file is pathology) or a RejectError. Only coded values are returned or put in a reason.
    """
    code = deid.coded_modality(ds.get("Modality", "")) or ""
    stated = MODALITY_MAP.get(code)
    given = None if opts.modality == "auto" else opts.modality
    if given is not None and (stated is None or opts.force_modality):
        return given, (code if stated is not None and stated != given else None)
    if stated is not None:
        return stated, None
    if fallback is not None:
        return fallback, None
    shown = code or ("missing" if not str(ds.get("Modality", "")).strip() else "not a coded value")
    raise RejectError(f"DICOM modality {shown} has no unimed modality; pass --modality to set one")


def _slice_position(ds: Any) -> float | None:
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if not ipp or not iop or len(ipp) != 3 or len(iop) != 6:
        return None
    try:  # plain floats: numpy's cross and dot cost ~15 µs a file here (and wake BLAS threads)
        (r0, r1, r2), (c0, c1, c2) = (float(v) for v in iop[:3]), (float(v) for v in iop[3:])
        x, y, z = (float(v) for v in ipp)
        # Rounded to a nanometre, so slices at one position tie (and InstanceNumber orders them)
        # whatever the last bits of the arithmetic.
        return round(x * (r1 * c2 - r2 * c1) + y * (r2 * c0 - r0 * c2) + z * (r0 * c1 - r1 * c0), 6)
    except (TypeError, ValueError):
        return None


def _frame_attr(ds: Any, frame: int, seq: str, keyword: str) -> Any:
    """An attribute from the per-frame, then shared functional groups, then the top level."""
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
            items = ds.get(groups)
            if items and len(items) > idx:
                sub = items[idx].get(seq)
                if sub and keyword in sub[0]:
                    return sub[0].get(keyword)
    return ds.get(keyword)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _rescale(ds: Any, frame: int) -> tuple[float, float]:
    slope = _first(_frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    icpt = _first(_frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")) or 0.0
    return (1.0 if slope is None or slope == 0 else slope), icpt


def _physical(arr: np.ndarray, ds: Any, frame: int) -> np.ndarray:
    """Stored values to physical values (modality LUT or rescale), float32."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds).astype(np.float32)
    slope, icpt = _rescale(ds, frame)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(icpt)


def _step2(ds: Any, frame: int, modality: str, opts: Options) -> tuple[str, Any]:
    """How a monochrome frame goes from physical values to [0, 1]: the kind and its parameters.

    ``("hounsfield", windows)`` for CT, else ``("voi_lut", None)``, ``("window", (c, w, function))``
    from the file, or ``("percentile", None)``.
    """
    windows = intensity.ct_windows(opts.window, modality)
    if windows is not None:
        return "hounsfield", windows
    if ds.get("VOILUTSequence"):
        return "voi_lut", None
    center = _first(_frame_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_frame_attr(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(_frame_attr(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
        return "window", (center, width, function)
    return "percentile", None


def _is_monochrome(ds: Any) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    return photometric != "PALETTE COLOR" and int(ds.get("SamplesPerPixel", 1) or 1) == 1


def _voi_lut(ds: Any, signed: bool) -> tuple[int, np.ndarray]:
    """The first item of the VOI LUT Sequence, read for :func:`intensity.voi_lut_table`."""
    item = ds.VOILUTSequence[0]
    desc = [int(v) for v in item.LUTDescriptor]
    entries, raw = (desc[0] & 0xFFFF) or 65536, item.LUTData
    if isinstance(raw, (bytes, bytearray)):  # OW: words in the data set's byte order
        if desc[2] == 8 and len(raw) in (entries, entries + 1):
            data = np.frombuffer(raw, np.uint8)  # 8-bit entries packed two to a word (PS3.3, CP-522)
        else:
            little = getattr(ds, "original_encoding", (None, True))[1] is not False
            data = np.frombuffer(raw[: len(raw) // 2 * 2], "<u2" if little else ">u2")
    else:  # US: pydicom gives the words as numbers
        data = np.asarray([raw] if isinstance(raw, int) else list(raw), np.uint16)
        if desc[2] == 8 and data.size == (entries + 1) // 2 < entries:
            data = data.astype("<u2").view(np.uint8)  # packed 8-bit entries, first in the low byte
    # One 8-bit entry in each 16-bit word (a padding the standard notes some writers use) needs no
    # special case: the values are the same, and the descriptor's 8 bits give the output range.
    return intensity.voi_lut_table(desc, data, signed)


def percentile_range(
    ds: Any, frames: list[tuple[np.ndarray, int]], percentiles: tuple[float, float]
) -> tuple[float, float]:
    """Physical values at two percentiles over ``frames`` ((stored array, frame index) pairs)."""
    lo_p, hi_p = percentiles
    ref = [_physical(a, ds, i).ravel() for a, i in frames]
    a, b = (float(v) for v in np.percentile(ref[0] if len(ref) == 1 else np.concatenate(ref), [lo_p, hi_p]))
    return (a, b) if b > a else (a, a + 1.0)


def dicom_frame_to_display(
    arr: np.ndarray, ds: Any, frame: int, modality: str, opts: Options, scale: tuple[float, float] | None = None
) -> tuple[np.ndarray, dict]:
    """Apply the documented intensity transform to one decoded frame; return pixels and meta.

    ``scale``: the percentile range of the whole object (multi-frame files), used where the frame
    is scaled by percentiles; without it the frame's own percentiles are taken.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict[str, Any] = {}
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        meta["window"] = "palette"
        # 16-bit LUT entries keep their high byte; some writers store 8-bit values in 16-bit LUTs.
        return (rgb >> 8 if rgb.max() > 255 else rgb).astype(np.uint8), meta
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB (YBR already converted by pydicom)
        bits = int(ds.get("BitsStored", 8) or 8)
        y = arr.astype(np.float32) / float((1 << bits) - 1)
        meta["window"] = "rgb"
        return intensity.to_uint(y, 8), meta

    # Monochrome: modality LUT or rescale (Hounsfield units for CT), then a window, VOI LUT or percentiles.
    modality_lut = bool(ds.get("ModalityLUTSequence"))
    slope, icpt = _rescale(ds, frame)
    invert = photometric == "MONOCHROME1"
    kind, params = _step2(ds, frame, modality, opts)
    function, voi, windows = "LINEAR", None, []
    if kind == "hounsfield":
        windows = params
        meta["window"] = [list(w) for w in windows] if len(windows) > 1 else list(windows[0])
    elif kind == "voi_lut":
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1 or icpt < 0
        voi = _voi_lut(ds, signed)  # applied to physical values (the modality LUT's output), as PS3.3 says
        meta["window"] = "voi_lut"
    elif kind == "window":
        center, width, function = params
        windows, meta["window"] = [(center, width)], [round(center, 3), round(width, 3)]
    else:
        function = "LINEAR_EXACT"  # percentiles: a plain linear map between the two values
        a, b = scale if scale is not None else percentile_range(ds, [(arr, frame)], opts.percentiles)
        windows = [((a + b) / 2.0, b - a)]
        meta["window"] = f"percentile {opts.percentiles[0]}-{opts.percentiles[1]}"

    def transfer(x: np.ndarray) -> np.ndarray:
        if voi is not None:
            y = intensity.apply_voi_lut(x, *voi)
        else:
            chans = [intensity.apply_window(x, c, w, function) for c, w in windows]
            y = chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)
        return intensity.to_uint(1.0 - y if invert else y, opts.bits)

    if not modality_lut and arr.dtype.kind in "iu":
        if kind in ("hounsfield", "window") and arr.dtype.itemsize <= 2 and arr.dtype.isnative:
            # Fixed parameters: one table per (dtype, rescale, window), kept across slices.
            key = (arr.dtype.str, slope, icpt, invert, opts.bits, function, tuple(tuple(w) for w in windows))
            table = intensity.cached_table(key, lambda: intensity.value_table(arr.dtype, slope, icpt, transfer))
            return intensity.lookup(arr, table), meta
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < (1 << 18):  # integer pixels: apply the transform once per value, then look up
            lut = transfer(np.arange(lo, hi + 1, dtype=np.float32) * np.float32(slope) + np.float32(icpt))
            return intensity.lookup_range(arr, lut, lo), meta
    if modality_lut:
        from pydicom.pixels import apply_modality_lut

        x = apply_modality_lut(arr, ds).astype(np.float32)
    else:
        x = arr.astype(np.float32) * slope + icpt
    return transfer(x), meta


#: Names a DICOM file may have without its DICM preamble marker (a bare data set).
_SUFFIXES = (".dcm", ".dicom", ".dic")


@register
class DicomSource(Source):
    """DICOM Part 10 files (with or without preamble), single- and multi-frame, grouped into series."""

    name = "dicom"
    priority = 30  # after slides (a whole-slide DICOM file is theirs), before plain images
    requires = ("pydicom",)

    def probe(self, path: Path, head: bytes) -> bool:
        return head[128:132] == b"DICM" or path.suffix.lower() in _SUFFIXES

    def plan(self, path: Path, opts: Options) -> Task:
        ds = _read_header(path)
        if "Rows" not in ds or "Columns" not in ds:  # every image IOD has them; SR, RT plans do not
            sop = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
            raise RejectError(f"DICOM file holds no image ({sop})")
        modality, overridden = file_modality(ds, opts)
        deid.check_burned_in(ds, opts.allow_burned_in)
        frames = int(_first(ds.get("NumberOfFrames")) or 1)
        series_uid = str(ds.get("SeriesInstanceUID", "")) or None
        series = None
        if series_uid and frames == 1:
            series = SeriesPlace(series_uid, _slice_position(ds), int(_first(ds.get("InstanceNumber")) or 0))
        size = ds.stamp[1] if isinstance(ds, Header) else path.stat().st_size
        return Task(
            self.name,
            [str(path)],
            weight=size,
            modality=modality,
            overridden=overridden,
            frames=frames,
            sop=str(ds.get("SOPInstanceUID", "")) or None,
            series=series,
            header=ds if isinstance(ds, Header) and ds.native is not None and frames == 1 else None,
        )

    def group(self, tasks: list[Task]) -> list[Task]:
        """Order the single-frame files of each series along the slice normal; mark slice indices."""
        series: dict[str, list[tuple[SeriesPlace, Task]]] = {}
        for t in tasks:
            if t.series is not None:
                series.setdefault(t.series.uid, []).append((t.series, t))
        for members in series.values():
            if len(members) < 2:
                continue
            have_pos = all(place.position is not None for place, _ in members)
            members.sort(key=lambda pt: ((pt[0].position if have_pos else 0.0), pt[0].instance, pt[1].name))
            for i, (place, _) in enumerate(members):
                place.index, place.count = i, len(members)
        return super().group(tasks)

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        path = task.paths[0]
        ds, first = task.header, None
        if ds is not None and ds.fresh(path):  # planning kept the header: read the pixel bytes only
            try:
                with timed("decode"):
                    first = read_native(path, ds)
            except (OSError, ValueError):
                first = None
        if first is None:
            with timed("decode"):
                ds = dcmread(path)
            if task.frames == 1:
                try:
                    with timed("decode"):
                        first = ds.pixel_array
                except Exception as exc:
                    raise RejectError(f"cannot decode pixel data ({safe_reason(exc)})") from None
        modality = task.modality or file_modality(ds, opts)[0]
        base_meta = deid.allowed_meta(ds)
        patient, study = deid.subject(ds)
        sop = task.sop
        identity = f"dicom:{sop}" if sop else "dicom-bytes:" + hashlib.sha1(Path(path).read_bytes()).hexdigest()
        frames = task.frames
        try:
            if frames == 1:
                it: Iterator[np.ndarray] = iter([first])
            else:
                from pydicom.pixels import iter_pixels

                it = iter_pixels(ds)
            scale = None
            if frames > 1 and _is_monochrome(ds):
                scaled = [i for i in range(frames) if _step2(ds, i, modality, opts)[0] == "percentile"]
                if scaled:  # one percentile scale for the whole object: every frame is needed first
                    with timed("decode"):
                        stack = ds.pixel_array
                    stack = stack.reshape((frames, *stack.shape[-2:]))
                    scale = percentile_range(ds, [(stack[i], i) for i in scaled], opts.percentiles)
                    it = iter(stack)
            for i, arr in enumerate(it):
                if frames == 1 and arr.ndim == 3 and arr.shape[-1] != 3:  # one frame stored as a stack
                    arr = arr[0]
                if intensity.is_empty(arr):  # judged on stored values: a saturating window keeps the frame
                    continue
                pixels, meta = dicom_frame_to_display(arr, ds, i, modality, opts, scale)
                meta = {**base_meta, **meta}
                if frames > 1:
                    meta.update(frame=i, n_frames=frames)
                if task.series is not None and task.series.index is not None:
                    meta.update(slice_index=task.series.index, n_slices=task.series.count)
                yield Item(
                    pixels=pixels,
                    modality=modality,
                    key=f"{identity}:{i}",
                    meta=meta,
                    anatomy=base_meta.get("body_part"),
                    patient=patient,
                    study=study,
                )
        except RejectError:
            raise
        except Exception as exc:
            raise RejectError(f"cannot decode pixel data ({safe_reason(exc)})") from None
