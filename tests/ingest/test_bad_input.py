"""Bad input: one reject line per file, the run goes on, nothing else lost; user mistakes are one line."""

from __future__ import annotations

import shutil

import pytest

from unimed.ingest import cli
from unimed.samples import BROKEN_DICOM, pydicom_data_dir, pydicom_dir


@pytest.fixture
def broken_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in BROKEN_DICOM:
        src = pydicom_dir() / name if (pydicom_dir() / name).exists() else pydicom_data_dir() / name
        shutil.copy(src, folder / name)
    (folder / "cut.dcm").write_bytes((pydicom_dir() / "CT_small.dcm").read_bytes()[:2000])
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    shutil.copy(pydicom_dir() / "CT_small.dcm", folder / "good.dcm")
    return folder


def test_broken_files_are_reported_and_the_run_goes_on(tmp_path, broken_folder, capsys, helpers):
    out = tmp_path / "out"
    rc = cli.main(["convert", str(broken_folder), "--out", str(out), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("reject ")]
    rj = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in helpers.rejects(out)}
    # Every file of the folder is either converted or rejected, each reject printed once.
    inputs = {p.name for p in broken_folder.iterdir()}
    samples = helpers.read(out)
    assert len(samples) + len(rj) >= len(inputs) - 1  # bad_sequence.dcm is readable and may convert
    assert set(rj) | {"good.dcm", "bad_sequence.dcm"} >= inputs
    assert "good.dcm" not in rj and any(s["modality"] == "ct" for s in samples)
    for name in ("no_meta.dcm", "MR_truncated.dcm", "cut.dcm", "notes.txt", "empty.png", "badVR.dcm"):
        assert name in rj, name
        assert rj[name] and "\n" not in rj[name]
    assert len(lines) == len(rj)
    assert "Traceback" not in err


def test_strict_exits_non_zero(tmp_path, broken_folder):
    rc = cli.main(["convert", str(broken_folder), "--out", str(tmp_path / "o"), "--no-progress", "--strict"])
    assert rc == 1


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["convert", "/no/such/folder", "--out", "{tmp}/o"], "no such file or folder"),
        (["convert", "{tmp}", "--out", "{tmp}", "--modality", "xrays"], "--modality xrays"),
        (["convert", "{tmp}", "--out", "{tmp}/o", "--bits", "16"], "--bits 16 needs --codec png"),
        (["convert", "{tmp}", "--out", "{tmp}/o", "--labels", "/no/labels.csv"], "label table not found"),
        (["convert", "{tmp}", "--out", "{tmp}/o", "--window", "lungs"], "unknown window"),
        (["verify", "{tmp}"], "no index.json"),
    ],
)
def test_user_mistakes_are_one_clear_line(tmp_path, capsys, argv, needle):
    (tmp_path / "x.txt").write_text("x")
    rc = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_non_empty_output_needs_resume(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", folder)
    out = tmp_path / "out"
    assert cli.main(["convert", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert cli.main(["convert", str(folder), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["convert", str(folder), "--out", str(out), "--no-progress", "--resume"]) == 0
