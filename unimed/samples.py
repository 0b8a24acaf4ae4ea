"""Real sample files written by others, found through the packages that ship them.

pydicom and pydicom-data (DICOM: CT, MR, US, radiography, secondary capture; JPEG, JPEG 2000,
JPEG-LS, RLE; broken files), nibabel's test volumes, scikit-image's pathology and fundus images.
These packages are the ``test`` extra; the demo and the tests build their corpora from them.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

__all__ = [
    "pydicom_dir",
    "pydicom_data_dir",
    "all_dicom_files",
    "nibabel_dir",
    "skimage_dir",
    "build_sample_corpus",
    "BROKEN_DICOM",
]

#: Deliberately broken DICOM files among pydicom's test files, with what is wrong.
BROKEN_DICOM = {
    "no_meta.dcm": "no file meta information",
    "MR_truncated.dcm": "truncated pixel data",
    "rtplan_truncated.dcm": "truncated data set",
    "badVR.dcm": "bad value representation",
    "bad_sequence.dcm": "bad sequence",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "JPEG 2000 stream too short",
}


def pydicom_dir() -> Path:
    """pydicom's own test files."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def pydicom_data_dir() -> Path:
    """The files of the ``pydicom-data`` package (pydicom's external data store)."""
    import data_store

    return Path(data_store.__file__).parent / "data"


def all_dicom_files() -> list[Path]:
    """Every DICOM file of pydicom and pydicom-data (``.dcm``, or a DICM preamble)."""
    files = []
    for p in sorted(pydicom_dir().rglob("*")) + sorted(pydicom_data_dir().glob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".dcm":
            files.append(p)
        elif not p.suffix:
            with open(p, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    files.append(p)
    return files


def nibabel_dir() -> Path:
    """nibabel's test data folder."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


def skimage_dir() -> Path:
    """scikit-image's bundled images (``ihc.png``, ``retina.jpg``, ``microaneurysms.png``)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


#: (package folder function, file name, unimed modality, labels) of the demo corpus.
_CORPUS = [
    (pydicom_dir, "CT_small.dcm", None, []),
    (pydicom_dir, "MR_small.dcm", None, []),
    (pydicom_dir, "emri_small.dcm", None, []),
    (pydicom_dir, "JPEG2000.dcm", None, []),
    (pydicom_dir, "mlut_18.dcm", None, []),
    (pydicom_data_dir, "RG1_UNCR.dcm", None, []),
    (pydicom_data_dir, "RG3_UNCR.dcm", None, []),
    (pydicom_data_dir, "MR2_UNCR.dcm", None, []),
    (pydicom_data_dir, "eCT_Supplemental.dcm", None, []),
    (pydicom_data_dir, "US1_UNCR.dcm", None, []),
    (pydicom_dir, "MR_truncated.dcm", None, []),
    (pydicom_dir, "no_meta.dcm", None, []),
    (nibabel_dir, "anatomical.nii", "mri", []),
    (nibabel_dir, "example4d.nii.gz", "mri", []),
    (skimage_dir, "retina.jpg", "fundus", ["normal"]),
    (skimage_dir, "microaneurysms.png", "fundus", ["microaneurysms"]),
    (skimage_dir, "ihc.png", "pathology", ["immunohistochemistry"]),
]


def build_sample_corpus(dest: str | os.PathLike) -> Path:
    """Copy the demo corpus into ``dest/files`` with ``dest/labels.csv`` (path, modality, labels).

    Returns the folder of the files (the input of ``ingest convert``).
    """
    top = Path(dest)
    dest = top / "files"
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder, name, modality, labels in _CORPUS:
        src = folder() / name
        if not src.is_file():
            continue
        kind = "dicom" if name.endswith(".dcm") else ("nifti" if ".nii" in name else "images")
        (dest / kind).mkdir(exist_ok=True)
        shutil.copyfile(src, dest / kind / name)
        if modality:
            rows.append({"path": f"files/{kind}/{name}", "modality": modality, "labels": "|".join(labels)})
    with open(top / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "modality", "labels"])
        w.writeheader()
        w.writerows(rows)
    return dest
