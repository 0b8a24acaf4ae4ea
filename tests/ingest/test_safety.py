"""Ingest safety: no path, file or folder name, or free-text header value reaches the dataset folder;
faults (non-UTF-8 names, FIFOs, a killed parent, a concurrent run, a full disk, duplicate instances)
are each survived with one clear line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import zstandard

from unimed.errors import UserError, safe_reason
from unimed.ingest import cli
from unimed.ingest.synthetic import write_ct_series
from unimed.samples import pydicom_data_dir, pydicom_dir

ROOT = Path(__file__).resolve().parents[2]

#: Planted in folder and file names, as a PACS export lays them out.
PATIENT_DIR = "DOE_JOHN_MRN12345"
STUDY_DIR = "CT_2024-03-01"
FILE_NAMES = ["IM0001.dcm", "SMITH_JANE_19230405.dcm", "IM0003.dcm", "KOWALSKI_MRN778899.nii.gz"]
#: Planted in header values: apostrophes, quotes and backslashes.
HEADER = {
    "PatientName": "O'BRIEN^MRN4455",
    "PatientID": 'PID"QUOTED"7731',
    "IssuerOfPatientID": "MERCY_ISSUER_5521",
    "StudyInstanceUID": "1.2.826.0.1.3680043.9.7731.4455",
    "InstitutionName": "St. Mary's \\ Backslash Infirmary",
    "StudyDescription": "Study for O'BRIEN MRN4455",
}
NON_CODED_MODALITY = "OBRIEN SCAN"
LONG_NEEDLES = [
    "DOE_JOHN",
    "MRN12345",
    "2024-03-01",
    "IM0001",
    "IM0003",
    "SMITH_JANE",
    "19230405",
    "KOWALSKI",
    "778899",
    "O'BRIEN",
    "BRIEN MRN4455",
    "MRN4455",
    "QUOTED",
    "7731",
    "Backslash",
    "St. Mary",
    NON_CODED_MODALITY,
    "OBRIENSCAN",
    "MERCY_ISSUER",
    "5521",
    HEADER["StudyInstanceUID"],
]
SHORT_NEEDLES = ["doe", "john", "smith", "jane", "brien", "mary", "kowalski"]


def _plant(src: Path, dest: Path, **values: str) -> None:
    ds = pydicom.dcmread(src)
    for k, v in {**HEADER, **values}.items():
        setattr(ds, k, v)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)


def _archive(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    study = root / PATIENT_DIR / STUDY_DIR
    _plant(pydicom_dir() / "CT_small.dcm", study / FILE_NAMES[0])
    _plant(pydicom_dir() / "MR_small.dcm", study / FILE_NAMES[1])
    _plant(pydicom_dir() / "CT_small.dcm", study / FILE_NAMES[2], Modality=NON_CODED_MODALITY)
    (study / FILE_NAMES[3]).write_bytes(b"\x1f\x8b" + b"not a volume" * 10)  # a broken NIfTI
    _plant(pydicom_dir() / "MR_truncated.dcm", study / "IM0004_OBRIEN.dcm")  # a reject after planning
    os.mkfifo(study / "IM0005.dcm")  # a FIFO named like a DICOM file: must not hang the run
    bad = os.fsencode(study) + b"/KOWALSKI_\xff\xfe.dcm"  # a name that is not UTF-8
    shutil.copy(pydicom_data_dir() / "RG1_UNCR.dcm", bad)
    return root


def _dataset_bytes(out: Path) -> bytes:
    """Every byte under the dataset folder, zstd shards also decompressed."""
    blobs = []
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            blobs.append(p.relative_to(out).as_posix().encode())
            blobs.append(data)
            if p.name.endswith(".zstd"):
                blobs.append(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
    return b"\n".join(blobs)


def _assert_clean(blob: bytes, text: str, root: Path) -> None:
    """No planted string in the dataset's bytes nor in what was printed; no input path at all."""
    assert str(root.parent).encode() not in blob
    for needle in [*LONG_NEEDLES, str(root)]:
        assert needle.encode() not in blob, f"{needle!r} reached the dataset folder"
        assert needle not in text, f"{needle!r} reached stderr/stdout"


@pytest.mark.parametrize("modality", ["auto", "ct"])
def test_no_path_name_or_free_text_reaches_the_dataset(tmp_path, helpers, capfd, modality):
    root = _archive(tmp_path)
    out = tmp_path / "out"
    rc = cli.main(["convert", str(root), "--out", str(out), "--workers", "2", "--no-progress", "--modality", modality])
    assert rc == 0
    printed = "".join(capfd.readouterr())
    samples = helpers.read(out)
    assert len(samples) == (3 if modality == "ct" else 2)  # CT, MR, and with --modality ct the non-coded one
    assert {s["source"] for s in samples} == {"local"}
    assert all(s["meta"].get("dicom_modality") in (None, "CT", "MR") for s in samples)
    _assert_clean(_dataset_bytes(out), printed, root)
    # Columns other than the image: even short pieces of the planted names are absent.
    text = json.dumps([{k: v for k, v in s.items() if k != "image"} for s in samples]).lower()
    text += (out / "summary.json").read_text().lower() + (out / "rejects.jsonl").read_text().lower()
    for needle in SHORT_NEEDLES:
        assert needle not in text
    # The dataset names rejects by uid and reason; the report beside it holds the paths.
    in_dataset = helpers.dataset_rejects(out)
    assert all(set(r) == {"uid", "reason"} for r in in_dataset)
    report = helpers.rejects(out)
    assert sorted(r["uid"] for r in report) == sorted(r["uid"] for r in in_dataset)
    by_name = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in report}
    assert "not a regular file" in by_name["IM0005.dcm"]
    assert "not valid UTF-8" in by_name["KOWALSKI_\\xff\\xfe.dcm"]
    assert "IM0004_OBRIEN.dcm" in by_name and FILE_NAMES[3] in by_name
    if modality == "auto":
        assert "not a coded value" in by_name[FILE_NAMES[2]]
    assert (tmp_path / "out.report" / "README.txt").is_file()
    assert not any(p.name == "rejects.jsonl" and "path" in p.read_text() for p in out.rglob("*.jsonl"))
    # The planted PatientID, issuer and study reach the samples as keyed hashes only, and so the splits.
    assert len({s["patient"] for s in samples}) == 1 and len(samples[0]["patient"]) == 32
    assert len({s["study"] for s in samples}) == 1 and len(samples[0]["study"]) == 32
    assert cli.main(["split", str(out), "--out", str(tmp_path / "splits"), "--fractions", "0.5,0.5"]) == 0
    _assert_clean(_dataset_bytes(tmp_path / "splits"), "".join(capfd.readouterr()), root)


def test_safe_reason_keeps_only_allow_listed_words():
    for exc in (
        ValueError("Invalid value 'O'BRIEN MRN4455' for PN"),
        ValueError("bad \"SMITH^JOHN\" and 'x'"),
        ValueError("Invalid value O'BRIEN MRN4455 for PN"),
        OSError("cannot read /data/DOE_JOHN_MRN12345/IM0001.dcm: truncated"),
        ValueError("value SMITH\\JOHN 12345 is not valid"),
    ):
        reason = safe_reason(exc)
        for needle in ("BRIEN", "4455", "SMITH", "JOHN", "DOE", "12345", "IM0001", "/data"):
            assert needle not in reason, (exc, reason)
        assert reason.startswith(type(exc).__name__)
    assert "no such file" in safe_reason(OSError("[Errno 2] no such file: '/x/DOE'"))


def test_source_name_is_a_short_token(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src / "a.dcm")
    for bad in ("DOE JOHN/MRN1", "../x", "a" * 49, ""):
        rc = cli.main(["convert", str(src), "--out", str(tmp_path / "o"), "--source", bad, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "--source" in err
    assert not (tmp_path / "o").exists()


def test_report_folder_must_lie_outside_the_dataset(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src / "a.dcm")
    out = tmp_path / "o"
    rc = cli.main(["convert", str(src), "--out", str(out), "--report", str(out / "rep"), "--no-progress"])
    assert rc == 2 and "must lie outside --out" in capsys.readouterr().err
    rc = cli.main(["convert", str(src), "--out", str(out), "--report", str(tmp_path / "rep"), "--no-progress"])
    assert rc == 0 and (tmp_path / "rep" / "rejects.jsonl").is_file()


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, helpers):
    from unimed.ingest.lifecycle import run_lock
    from unimed.ingest.merge import STATE_DIR

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src / "a.dcm")
    out = tmp_path / "out"
    helpers.convert([src], out)
    with run_lock(str(out / STATE_DIR), str(out)):  # as if another run held it
        with pytest.raises(UserError, match="another ingest run"):
            helpers.convert([src], out, resume=True)
    assert helpers.convert([src], out, resume=True)["images"] == 1  # free again


def test_duplicate_instances_keep_the_copy_that_decodes(tmp_path, helpers):
    src = tmp_path / "in"
    src.mkdir()
    good = (pydicom_dir() / "CT_small.dcm").read_bytes()
    (src / "a_resent.dcm").write_bytes(good[:-4000])  # a truncated re-send sorts first
    (src / "b_original.dcm").write_bytes(good)
    (src / "c_again.dcm").write_bytes(good)  # a second good copy
    summary = helpers.convert([src], tmp_path / "out")
    assert summary["images"] == 1
    rj = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in helpers.rejects(tmp_path / "out")}
    assert set(rj) == {"a_resent.dcm", "c_again.dcm"}
    assert "this copy failed" in rj["a_resent.dcm"] and "another copy was kept" in rj["a_resent.dcm"]
    assert "another copy was kept" in rj["c_again.dcm"]


#: A TIFF header that tifffile logs two errors about (no strip offsets, no byte counts).
BAD_TIFF_HEADER = b"II*\x00" + struct.pack("<IH", 8, 1) + b"\x00\x01\x03\x00\x01\x00\x00\x00\x10\x00"


def test_tiff_like_preamble_gives_no_library_noise(tmp_path, helpers, capfd, caplog):
    src = tmp_path / "in"
    write_ct_series(src, 6, size=64)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.preamble = BAD_TIFF_HEADER.ljust(128, b"\x00")  # a TIFF header: tifffile would complain about it
        ds.save_as(f)
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        assert helpers.convert([src], tmp_path / "out")["images"] == 6  # in this process: caplog sees its logs
    assert "tifffile" not in "".join(capfd.readouterr())
    assert not [r for r in caplog.records if r.name.startswith("tifffile")], caplog.text


def test_tifffile_notes_while_converting_name_the_input_by_uid(tmp_path, helpers, caplog):
    src = tmp_path / "in"
    src.mkdir()
    (src / "DOE_JOHN.svs").write_bytes((BAD_TIFF_HEADER + bytes(4)).ljust(4096, b"\x00"))
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        helpers.convert([src], tmp_path / "out")
    (reject,) = helpers.dataset_rejects(tmp_path / "out")
    notes = [r.getMessage() for r in caplog.records if r.name == "tifffile"]
    assert notes and all(n.startswith(f"{reject['uid']}: ") for n in notes), notes
    assert not any("DOE_JOHN" in n for n in notes)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_parent_alone_then_resume_at_once(tmp_path, helpers):
    series = tmp_path / "series"
    write_ct_series(series, 320, size=96)  # enough chunks that the kill lands mid-run
    ref = tmp_path / "ref"
    helpers.convert([series], ref, chunk_mb=0.05)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "unimed.ingest.cli",
        "convert",
        str(series),
        "--out",
        str(out),
        "--chunk-mb",
        "0.05",
        "--no-progress",
        "--workers",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.is_dir() and not p.name.endswith(".tmp") for p in out.glob("p000-c*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before any chunk was seen"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone
    proc.wait()
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not any(_alive(w) for w in workers), "a worker outlived its parent"
    key = lambda s: s["uid"]  # noqa: E731
    want = sorted(helpers.read(ref), key=key)
    got = sorted(helpers.read(out), key=key)
    assert [(s["uid"], s["image"], s["captions"], s["meta"]) for s in got] == [
        (s["uid"], s["image"], s["captions"], s["meta"]) for s in want
    ]


def _small_disk(tmp_path: Path) -> Path | None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    ok = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True).returncode
        == 0
    )
    return mnt if ok else None


def test_a_full_disk_is_one_line_and_never_a_partial_index(tmp_path, capfd):
    series = tmp_path / "series"
    write_ct_series(series, 60, size=256)  # about 1.4 MB of PNG shards for a 600 kB disk
    mnt = _small_disk(tmp_path)
    args = ["convert", str(series), "--codec", "png", "--chunk-mb", "1", "--no-progress"]
    try:
        if mnt is not None:
            out = mnt / "out"
            rc = cli.main([*args, "--out", str(out)])
            err = capfd.readouterr().err
        else:  # no tmpfs here: a file size limit gives the same kind of write error
            out = tmp_path / "out"
            code = (
                "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)); "
                "from unimed.ingest import cli; sys.exit(cli.main(sys.argv[1:]))"
            )
            res = subprocess.run(
                [sys.executable, "-c", code, *args, "--out", str(out)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            rc, err = res.returncode, res.stderr
        assert rc == 2
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(out) in lines[0] and "rerun with --resume" in lines[0], err
        index = out / "index.json"
        if index.exists():
            json.loads(index.read_text())  # whole, never partial
        for cmd in ("verify", "inspect"):
            assert cli.main([cmd, str(out)]) == 2
            assert capfd.readouterr().err.count("\n") == 1
    finally:
        if mnt is not None:
            subprocess.run(["umount", str(mnt)], check=False)


def test_an_empty_index_is_one_line_for_verify_and_inspect(tmp_path, helpers, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src / "a.dcm")
    out = tmp_path / "out"
    helpers.convert([src], out)
    (out / "index.json").write_bytes(b"")
    for cmd in ("verify", "inspect"):
        assert cli.main([cmd, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "damaged index" in err
    assert cli.main(["merge", str(out)]) == 0  # rebuilt from the chunks
    assert cli.main(["verify", str(out)]) == 0


def test_a_chunk_folder_left_without_its_index_is_redone(tmp_path, helpers):
    series = tmp_path / "series"
    write_ct_series(series, 12, size=64)
    out = tmp_path / "out"
    helpers.convert([series], out, chunk_mb=0.02)
    want = sorted(s["uid"] for s in helpers.read(out))
    chunk = sorted(out.glob("p000-c*"))[1]
    (chunk / "index.json").unlink()  # what a collision once left: done.json and shards, no index
    helpers.convert([series], out, chunk_mb=0.02, resume=True)
    assert sorted(s["uid"] for s in helpers.read(out)) == want
    assert cli.main(["verify", str(out)]) == 0


def test_a_manifest_modality_cell_is_never_echoed(tmp_path, helpers):
    import numpy as np
    from PIL import Image

    data = tmp_path / "m"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(data / "a.png")
    (data / "list.csv").write_text("image,caption,modality\na.png,A chest film.,WASHINGTON_JOHN_778899\n")
    helpers.convert([data / "list.csv"], tmp_path / "out")
    reasons = " ".join(r["reason"] for r in helpers.dataset_rejects(tmp_path / "out"))
    assert "modality column" in reasons and "WASHINGTON" not in reasons and "778899" not in reasons
