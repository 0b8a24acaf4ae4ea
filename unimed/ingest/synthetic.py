"""Synthetic inputs for scale: CT series (pydicom), volumes (nibabel) and pyramidal slides (tifffile).

Used by the benchmarks and by the tests that need more than the sample files (crash safety).
The pixels are a smooth phantom with noise, so encoders see realistic content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["phantom_slice", "write_ct_series", "write_nifti_volumes", "tissue_tile", "write_slide", "write_dicom_slide"]


def phantom_slice(size: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """An int16 CT-like slice in Hounsfield units: air, a body ellipse, organs and bone."""
    y, x = np.mgrid[-1 : 1 : complex(size), -1 : 1 : complex(size)]
    t = k / max(n - 1, 1)
    hu = np.full((size, size), -1000.0)
    body = (x / 0.85) ** 2 + (y / (0.65 + 0.1 * t)) ** 2 < 1
    hu[body] = 40
    hu[((x + 0.35) / 0.2) ** 2 + (y / 0.3) ** 2 < 1] = -700  # lungs
    hu[((x - 0.35) / 0.2) ** 2 + (y / 0.3) ** 2 < 1] = -700
    hu[(x / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 < 1] = 900  # spine
    hu[((x - 0.1) / 0.15) ** 2 + ((y + 0.1 - 0.2 * t) / 0.12) ** 2 < 1] = 60  # an organ
    hu += rng.normal(0, 15, hu.shape)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def write_ct_slice(
    path: str | Path,
    hu: np.ndarray,
    study: str | None = None,
    series: str | None = None,
    index: int = 0,
    patient_id: str = "SYN0001",
    issuer: str | None = None,
) -> Path:
    """Write one uncompressed CT slice (int16 HU, rescale 1/0, slice ``index`` of a series) with pydicom.

    ``patient_id`` and ``issuer`` (IssuerOfPatientID, left out when None) name the patient.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "Synthetic^Phantom", patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = index + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 1.25]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.25
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = np.asarray(hu).astype(np.int16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(
    folder: str | Path,
    n: int,
    size: int = 512,
    seed: int = 0,
    patient_id: str = "SYN0001",
    issuer: str | None = None,
    study: str | None = None,
    names: str = "slice{k:05d}.dcm",
) -> list[Path]:
    """Write an uncompressed CT series of ``n`` slices (int16, rescale intercept 0) with pydicom.

    The series belongs to ``patient_id`` (at ``issuer``) and to ``study`` (a new StudyInstanceUID when
    None); slice ``k`` is written as ``names.format(k=k)`` (archives name them ``IM{k:04d}.dcm`` and the like).
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    study, series = study or generate_uid(), generate_uid()
    return [
        write_ct_slice(folder / names.format(k=k), phantom_slice(size, k, n, rng), study, series, k, patient_id, issuer)
        for k in range(n)
    ]


def write_nifti_volumes(
    folder: str | Path, n_volumes: int, slices: int, size: int = 512, seed: int = 0, gz: bool = True
) -> list[Path]:
    """Write ``n_volumes`` CT volumes of ``slices`` slices each (int16 HU) with nibabel."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for v in range(n_volumes):
        data = np.stack([phantom_slice(size, k, slices, rng) for k in range(slices)], axis=-1)
        img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 1.25, 1.0]))
        img.header.set_zooms((0.7, 0.7, 1.25))
        path = folder / f"vol{v:03d}.nii{'.gz' if gz else ''}"
        nib.save(img, path)
        paths.append(path)
    return paths


def tissue_tile(
    x0: int,
    y0: int,
    size: int,
    scale: float,
    width: int,
    height: int,
    blobs: list[tuple[float, float, float]],
    rng: np.random.Generator,
) -> np.ndarray | None:
    """An RGB tile of an H&E-like slide at level-0 origin (x0, y0), ``scale`` level-0 pixels per pixel.

    Tissue is pink/purple texture inside circular ``blobs`` (cx, cy, r in fractions of the width) on a
    white background; returns None for a tile with no tissue (written as an empty, sparse tile).
    """
    xs = x0 + (np.arange(size) + 0.5) * scale
    ys = y0 + (np.arange(size) + 0.5) * scale
    inside = np.zeros((size, size), bool)
    for cx, cy, r in blobs:
        cx, cy, r = cx * width, cy * height, r * width
        if abs(xs.mean() - cx) > r + size * scale or abs(ys.mean() - cy) > r + size * scale:
            continue
        inside |= ((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2) < r * r
    if not inside.any():
        return None
    tile = np.empty((size, size, 3), np.uint8)
    tile[...] = 245
    n = int(inside.sum())
    nuclei = rng.random(n) < 0.25
    tile[inside] = np.where(nuclei[:, None], (90, 60, 150), (225, 130, 185)) + rng.integers(-20, 20, (n, 3))
    return tile


def write_slide(
    path: str | Path,
    width: int,
    height: int,
    tile: int = 256,
    levels: int = 4,
    mpp: float = 0.25,
    blobs: list[tuple[float, float, float]] | None = None,
    quality: int = 85,
    seed: int = 0,
) -> Path:
    """Write a pyramidal, tiled, JPEG-compressed BigTIFF slide tile by tile (memory: a few tiles).

    Levels halve the size; resolution tags give ``mpp`` microns per pixel at level 0. Background
    tiles are left empty (sparse), as large scanners' files allow.
    """
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(seed)
    blobs = blobs if blobs is not None else [(0.3, 0.35, 0.12), (0.65, 0.6, 0.18)]

    def tiles(level: int):
        w, h, scale = -(-width // 2**level), -(-height // 2**level), float(2**level)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                t = tissue_tile(int(tx * scale), int(ty * scale), tile, scale, width, height, blobs, rng)
                yield b"" if t is None else imagecodecs.jpeg8_encode(t, level=quality)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    res = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(levels):
            w, h = -(-width // 2**level), -(-height // 2**level)
            extra = (
                {"subifds": levels - 1, "resolution": (res, res), "resolutionunit": "CENTIMETER"}
                if level == 0
                else {"subfiletype": 1}
            )
            tif.write(
                tiles(level),
                shape=(h, w, 3),
                dtype="uint8",
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                **extra,
            )
    return path


def write_dicom_slide(
    path: str | Path,
    tiles_x: int = 4,
    tiles_y: int = 3,
    tile: int = 64,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "VOLUME"),
) -> np.ndarray:
    """A TILED_FULL VL Whole Slide Microscopy file (uncompressed RGB) written with pydicom:
    white background with tissue (pink, textured) in the left half; returns the whole image. Its
    PatientName is planted, for the de-identification tests."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage, generate_uid

    rng = np.random.default_rng(0)
    width, height = tiles_x * tile, tiles_y * tile
    full = np.full((height, width, 3), 250, np.uint8)
    tissue = np.stack(
        [
            rng.integers(150, 230, (height, width // 2)),
            rng.integers(40, 120, (height, width // 2)),
            rng.integers(120, 200, (height, width // 2)),
        ],
        axis=-1,
    ).astype(np.uint8)
    full[:, : width // 2] = tissue
    frames = [
        full[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile] for ty in range(tiles_y) for tx in range(tiles_x)
    ]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "SM"
    ds.PatientName = "Slide^Planted"
    ds.ImageType = list(image_type)
    ds.BurnedInAnnotation = "NO"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    measures = Dataset()
    measures.PixelSpacing = [0.0005, 0.0005]  # millimetres: 0.5 µm per pixel
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return full
