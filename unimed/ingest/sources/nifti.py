"""NIfTI volumes (``.nii``, ``.nii.gz``), 3D and 4D, sliced along one axis.

The volume is decompressed once (never once per slice), reoriented to the closest canonical
(RAS+) orientation, and sliced along the acquisition plane by default: the axis with the largest
voxel spacing (ties: the last axis, axial). CT is windowed in Hounsfield units (the windows
``--window`` names, else soft tissue); other modalities, and CT under ``--window file`` (NIfTI
carries no window), are scaled by percentiles of the whole volume so slices of one volume share one
scale: a Hounsfield window is never applied to MRI values. Empty slices (constant, judged on the
volume's values before windowing) are skipped; a slice the window saturates is kept. NIfTI has no
modality field: ``--modality`` must name it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from unimed.errors import RejectError, safe_reason
from unimed.ingest import intensity
from unimed.ingest.sources.base import Item, Options, Source, Task, register, timed

__all__ = ["NiftiSource", "AXES", "load_volume"]

AXES = {"sagittal": 0, "coronal": 1, "axial": 2, "0": 0, "1": 1, "2": 2}
_AXIS_NAMES = ("sagittal", "coronal", "axial")


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Compressed volumes up to this size are inflated in one call by libdeflate (imagecodecs), about
#: twice as fast as nibabel's streaming gzip; larger ones (gzip's size field holds 32 bits) and any
#: that libdeflate refuses (several gzip members) are read by nibabel.
_FAST_GZIP_MAX = 1 << 30


def load_volume(path: str, fast: bool = True) -> tuple[object, str]:
    """The NIfTI image of ``path`` and the SHA-1 of the file's bytes (its identity), reading it once."""
    import nibabel as nib

    if fast and path.lower().endswith(".nii.gz") and os.path.getsize(path) <= _FAST_GZIP_MAX:
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            import imagecodecs

            raw = imagecodecs.gzip_decode(data)
            kind = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
            return kind.from_bytes(raw), hashlib.sha1(data).hexdigest()
        except Exception:  # not one gzip member, or not what its suffix says: nibabel decides
            pass
    return nib.load(path), _file_digest(path)


def choose_axis(zooms: tuple[float, ...], spec: str) -> int:
    """The slicing axis: ``spec`` by name or number, or the acquisition plane for ``auto``."""
    if spec != "auto":
        if spec not in AXES:
            raise RejectError(f"unknown --axis {spec}: use auto, axial, coronal, sagittal, 0, 1 or 2")
        return AXES[spec]
    z = list(zooms[:3])
    biggest = max(z)
    if biggest - min(z) < 1e-3:
        return 2
    return max(i for i in range(3) if abs(z[i] - biggest) < 1e-3)


@register
class NiftiSource(Source):
    """NIfTI-1 and NIfTI-2 volumes."""

    name = "nifti"
    priority = 50  # last: recognized by its name alone (NIfTI has no magic at the start of a .nii.gz)
    requires = ("nibabel",)

    def probe(self, path: Path, head: bytes) -> bool:
        name = path.name.lower()
        return name.endswith(".nii") or name.endswith(".nii.gz")

    def plan(self, path: Path, opts: Options) -> Task:
        return Task(self.name, [str(path)], weight=path.stat().st_size * 4)

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        import nibabel as nib

        path = task.paths[0]
        modality = task.modality or opts.modality
        if modality == "auto":
            raise RejectError(
                "NIfTI carries no modality; pass --modality (e.g. ct or mri) or a modality column in --labels"
            )
        try:
            with timed("decode"):
                loaded, digest = load_volume(path)
                img = nib.as_closest_canonical(loaded)
                data = np.asarray(img.dataobj, dtype=np.float32)  # one decompression for the whole volume
                zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
                del img, loaded  # the inflated bytes go with them
        except Exception as exc:
            raise RejectError(f"unreadable NIfTI volume ({safe_reason(exc)})") from None
        if data.ndim < 3:
            data = data.reshape(data.shape + (1,) * (3 - data.ndim))
        if data.ndim > 4:
            data = data.reshape(data.shape[:3] + (-1,))
        vols = data[..., None] if data.ndim == 3 else data
        axis = choose_axis(zooms, opts.axis)
        windows = intensity.ct_windows(opts.window, modality)
        in_plane = [round(zooms[i], 4) for i in range(3) if i != axis]
        for t in range(vols.shape[-1]):
            vol = vols[..., t]
            if windows is None:
                lo, hi = opts.percentiles
                finite = vol[np.isfinite(vol)]
                nonzero = finite[finite != finite.min()] if finite.size else finite
                ref = nonzero if nonzero.size > 0.01 * max(finite.size, 1) else finite
                a, b = (float(v) for v in np.percentile(ref, [lo, hi])) if ref.size else (0.0, 0.0)
                if b <= a and finite.size:  # e.g. a binary mask: fall back to the volume's range
                    a, b = float(finite.min()), float(finite.max())
                window_meta: object = f"percentile {lo}-{hi}"
            for k in range(vol.shape[axis]):
                sl = vol[(slice(None),) * axis + (k,)]  # a view: no copy of the volume
                if not np.isfinite(sl).all():
                    sl = np.nan_to_num(sl, nan=0.0, posinf=0.0, neginf=0.0)
                if intensity.is_empty(sl):  # on physical values: a slice the window saturates is kept
                    continue
                if windows is not None:
                    chans = [intensity.apply_window(sl, c, w) for c, w in windows]
                    y = chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)
                    window_meta = [list(w) for w in windows] if len(windows) > 1 else list(windows[0])
                else:
                    y = np.clip((sl - a) / (b - a), 0, 1) if b > a else np.zeros_like(sl)
                # Display orientation: RAS+ slice with the first remaining axis left-right -> rows up.
                y = np.ascontiguousarray(np.rot90(y))
                pixels = intensity.to_uint(y, opts.bits)
                meta = {
                    "slice_index": k,
                    "n_slices": int(vol.shape[axis]),
                    "axis": _AXIS_NAMES[axis],
                    "spacing": in_plane,
                    "window": window_meta,
                }
                if vols.shape[-1] > 1:
                    meta.update(volume=t, n_volumes=int(vols.shape[-1]))
                yield Item(pixels=pixels, modality=modality, key=f"nifti:{digest}:{axis}:{t}:{k}", meta=meta)
