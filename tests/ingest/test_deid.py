"""De-identification: planted helpers.PHI never reaches any byte the converter writes or prints."""

from __future__ import annotations

import shutil

import pydicom
import pytest

from unimed.ingest.deid import keyed_uid
from unimed.samples import pydicom_data_dir, pydicom_dir


def test_planted_phi_never_leaves_the_file(tmp_path, helpers, capfd):
    src = tmp_path / "in"
    src.mkdir()
    helpers.plant(pydicom_dir() / "CT_small.dcm", src / "ct.dcm")
    helpers.plant(pydicom_dir() / "MR_small.dcm", src / "mr.dcm")
    helpers.plant(pydicom_data_dir() / "RG1_UNCR.dcm", src / "cr.dcm")
    helpers.plant(pydicom_data_dir() / "US1_UNCR.dcm", src / "us.dcm", burned_in_no=True)
    helpers.plant(pydicom_dir() / "MR_truncated.dcm", src / "broken.dcm")  # a reject must not leak either
    out = tmp_path / "out"
    summary = helpers.convert([src], out, workers=2)
    assert summary["images"] == 4
    assert {r["path"].rsplit("/", 1)[-1] for r in helpers.rejects(out)} == {"broken.dcm"}
    written = helpers.written_bytes(out).lower()
    printed = "".join(capfd.readouterr()).lower().encode()
    needles = [*helpers.PHI.values(), helpers.PRIVATE_CREATOR, helpers.PRIVATE_VALUE, "Zyxwv", "Plantedname", "98765"]
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
