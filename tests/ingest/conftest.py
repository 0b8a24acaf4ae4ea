"""Fixtures for the ingest tests: a fixed uid key, conversion and read-back helpers."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zstandard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

UID_KEY = "unimed-test-key-0123456789abcdef0123"  # 32+ bytes, as a real key must be


@pytest.fixture(autouse=True)
def _uid_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIMED_UID_KEY", UID_KEY)


def run_convert(inputs: list, out: Path, **kw) -> dict:
    """Convert with the library call (the CLI's config), quietly."""
    from unimed.ingest.convert import ConvertConfig, convert

    kw.setdefault("progress", False)
    cfg = ConvertConfig(inputs=[str(i) for i in inputs], out=str(out), **kw)
    return convert(cfg, echo=lambda s: None)


def read_samples(out: Path) -> list[dict]:
    """All samples of a converted folder, read by a stock streaming.StreamingDataset."""
    from unimed.ingest.reader import open_dataset

    with open_dataset(str(out)) as ds:
        return [ds[i] for i in range(len(ds))]


def decode(sample: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(sample["image"])) as im:
        return np.asarray(im)


def rejects(out: Path, report: Path | None = None) -> list[dict]:
    """The operator's reject list (uid, path, reason) from the report folder beside ``out``."""
    import json

    path = Path(report or f"{out}.report") / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset_rejects(out: Path) -> list[dict]:
    """The dataset's own reject list (uid and reason only)."""
    import json

    path = Path(out) / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: Identifying values planted into headers: none may reach any byte the converter writes or prints.
PHI = {
    "PatientName": "Zyxwv^Plantedname",
    "PatientID": "PHIID-98765-QX",
    "PatientBirthDate": "19010203",
    "InstitutionName": "Planted Memorial Hospitalxyz",
    "AccessionNumber": "ACCPHI55555",
    "ReferringPhysicianName": "Docplanted^Whoqq",
    "StudyDescription": "Plantedstudy for Zyxwv",
    "BodyPartExamined": "ZYXWVBODY",  # free text in a coded field: must be dropped by the vocabulary
}
PRIVATE_CREATOR = "PLANTEDPRIVCREATOR"
PRIVATE_VALUE = "planted-private-value-4242"


def plant(src, dest, burned_in_no: bool = False) -> pydicom.Dataset:
    """Copy the DICOM file ``src`` to ``dest`` with every PHI value and a private tag planted."""
    ds = pydicom.dcmread(src)
    for k, v in PHI.items():
        setattr(ds, k, v)
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    if burned_in_no:
        ds.BurnedInAnnotation = "NO"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dest)
    return ds


def written_bytes(out) -> bytes:
    """Every byte under ``out``, zstd shards decompressed too."""
    blobs = []
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            blobs.append(data)
            if p.name.endswith(".zstd"):
                blobs.append(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
    return b"\n".join(blobs)


@pytest.fixture
def helpers():
    class H:
        convert = staticmethod(run_convert)
        read = staticmethod(read_samples)
        decode = staticmethod(decode)
        rejects = staticmethod(rejects)
        dataset_rejects = staticmethod(dataset_rejects)
        key = UID_KEY.encode()
        PHI = PHI
        PRIVATE_CREATOR = PRIVATE_CREATOR
        PRIVATE_VALUE = PRIVATE_VALUE
        plant = staticmethod(plant)
        written_bytes = staticmethod(written_bytes)

    return H


os.environ.setdefault("TQDM_DISABLE", "1")
