"""De-identification: planted PHI never reaches any byte the converter writes or prints."""

from __future__ import annotations

import shutil

import pydicom
import pytest
import zstandard

from unimed.ingest.deid import keyed_uid
from unimed.samples import pydicom_data_dir, pydicom_dir

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


def _all_written_bytes(out) -> bytes:
    blobs = []
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            blobs.append(data)
            if p.name.endswith(".zstd"):
                blobs.append(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
    return b"\n".join(blobs)


def test_planted_phi_never_leaves_the_file(tmp_path, helpers, capfd):
    src = tmp_path / "in"
    src.mkdir()
    plant(pydicom_dir() / "CT_small.dcm", src / "ct.dcm")
    plant(pydicom_dir() / "MR_small.dcm", src / "mr.dcm")
    plant(pydicom_data_dir() / "RG1_UNCR.dcm", src / "cr.dcm")
    plant(pydicom_data_dir() / "US1_UNCR.dcm", src / "us.dcm", burned_in_no=True)
    plant(pydicom_dir() / "MR_truncated.dcm", src / "broken.dcm")  # a reject must not leak either
    out = tmp_path / "out"
    summary = helpers.convert([src], out, workers=2)
    assert summary["images"] == 4
    assert {r["path"].rsplit("/", 1)[-1] for r in helpers.rejects(out)} == {"broken.dcm"}
    written = _all_written_bytes(out).lower()
    printed = "".join(capfd.readouterr()).lower().encode()
    needles = [*PHI.values(), PRIVATE_CREATOR, PRIVATE_VALUE, "Zyxwv", "Plantedname", "98765"]
    for needle in needles:
        for variant in {needle.lower(), needle.replace("^", " ").lower()}:
            assert variant.encode() not in written, f"{needle!r} leaked into the output"
            assert variant.encode() not in printed, f"{needle!r} leaked into the terminal"
    # The original UIDs do not appear either: uid is a keyed hash.
    for f in ("ct.dcm", "mr.dcm"):
        sop = str(pydicom.dcmread(src / f).SOPInstanceUID).encode()
        assert sop not in written
    samples = helpers.read(out)
    assert all("body_part" not in s["meta"] for s in samples)  # ZYXWVBODY was not in the vocabulary


def test_uid_is_keyed_stable_and_unique(tmp_path, helpers, monkeypatch):
    src = pydicom_dir() / "CT_small.dcm"
    a = helpers.read(_one(helpers, src, tmp_path / "a"))[0]["uid"]
    b = helpers.read(_one(helpers, src, tmp_path / "b"))[0]["uid"]
    assert a == b
    sop = pydicom.dcmread(src).SOPInstanceUID
    assert a == keyed_uid(helpers.key, f"dicom:{sop}:0") and len(a) == 32
    monkeypatch.setenv("UNIMED_UID_KEY", "another-key-0123456789abcdef0123456")
    c = helpers.read(_one(helpers, src, tmp_path / "c"))[0]["uid"]
    assert c != a


def _one(helpers, src, out):
    folder = out.with_name(out.name + "-in")
    folder.mkdir()
    shutil.copy(src, folder)
    helpers.convert([folder], out)
    return out


@pytest.mark.parametrize(
    "flag,modality,allowed,expect",
    [
        ("YES", "CT", False, "BurnedInAnnotation is YES"),
        ("YES", "CT", True, None),
        (None, "US", False, "may carry burned-in text"),
        ("NO", "US", False, None),
        (None, "CT", False, None),
    ],
)
def test_burned_in_annotation_gate(tmp_path, helpers, flag, modality, allowed, expect):
    ds = pydicom.dcmread(pydicom_dir() / "CT_small.dcm")
    ds.Modality = modality
    if flag:
        ds.BurnedInAnnotation = flag
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "x.dcm")
    out = tmp_path / "out"
    summary = helpers.convert([folder], out, allow_burned_in=allowed)
    if expect is None:
        assert summary["images"] == 1
    else:
        assert summary["images"] == 0
        assert expect in helpers.rejects(out)[0]["reason"]
