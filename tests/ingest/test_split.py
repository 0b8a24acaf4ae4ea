"""Patient-level splits: keyed patient and study keys in every DICOM sample, and ``ingest split``.

The archive is real DICOM written by pydicom (the synthetic CT writer, and pydicom's own test files
re-labelled), laid out as exports are (``PAT0001/STUDY1/IM0001.dcm``), beside a folder of PNGs that
name no patient; it is converted and split with the real CLI and read back by a stock
``streaming.StreamingDataset``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zstandard
from PIL import Image
from pydicom.data import get_testdata_file

from unimed.ingest import cli
from unimed.ingest.deid import keyed_patient, keyed_study, keyed_uid
from unimed.ingest.synthetic import write_ct_series
from unimed.schema import COLUMNS, LATER_COLUMNS
from unimed.shards import ShardWriter, iter_samples

N_PATIENTS = 100
KEY = "0f" * 32
OTHER_KEY = "a1" * 32
ISSUER = "HOSP_A"


def _pid(p: int) -> str:
    return f"PAT{p:04d}"


def _relabel(name: str, dest: Path, patient_id: str, issuer: str | None, study: str | None) -> None:
    """One of pydicom's test files as another patient's (a new SOP Instance UID; no PatientID if None)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    if patient_id:
        ds.PatientID = patient_id
    else:
        del ds.PatientID
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)


def _archive(root: Path) -> dict[str, tuple[str, str, str]]:
    """Write the archive; return SOP Instance UID -> (PatientID, issuer, StudyInstanceUID) of every image."""
    rng = np.random.default_rng(7)
    for p in range(N_PATIENTS):
        for st in range(2):
            write_ct_series(
                root / "dicom" / _pid(p) / f"STUDY{st + 1}",
                int(rng.integers(1, 3)),
                size=32,
                seed=p * 2 + st,
                patient_id=_pid(p),
                issuer=ISSUER,
                names="IM{k:04d}.dcm",
            )
    # pydicom's files: RLE and big-endian go through pydicom, not the fast reader, and join their patient.
    _relabel("MR_small_RLE.dcm", root / "dicom" / _pid(1) / "STUDY3" / "IM0001.dcm", _pid(1), ISSUER, None)
    _relabel("MR_small_bigendian.dcm", root / "dicom" / _pid(2) / "STUDY3" / "IM0001.dcm", _pid(2), ISSUER, None)
    # The same PatientID at another issuer is another person; a file without PatientID names nobody.
    _relabel("CT_small.dcm", root / "dicom" / "OTHER_HOSP" / "IM0001.dcm", _pid(0), "HOSP_B", None)
    _relabel("CT_small.dcm", root / "dicom" / "NO_ID" / "IM0001.dcm", "", None, None)
    pngs = root / "png"
    pngs.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(pngs / f"img{i}.png")
    truth = {}
    for f in sorted((root / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        truth[str(ds.SOPInstanceUID)] = (
            str(ds.get("PatientID", "")),
            str(ds.get("IssuerOfPatientID", "")),
            str(ds.StudyInstanceUID),
        )
    return truth


def _key_file(folder: Path, key: str) -> Path:
    path = folder / f"uid-{key[:4]}.key"
    path.write_text(key)
    path.chmod(0o600)
    return path


def _convert(inputs: list[Path], out: Path, key_file: Path) -> None:
    rc = cli.main(
        [
            "convert",
            *map(str, inputs),
            "--out",
            str(out),
            "--modality",
            "ct",
            "--no-progress",
            "--uid-key-file",
            str(key_file),
        ]
    )
    assert rc == 0


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The archive, its truth table, and its conversion under KEY."""
    root = tmp_path_factory.mktemp("split")
    truth = _archive(root / "in")
    key_file = _key_file(root, KEY)
    _convert([root / "in" / "dicom", root / "in" / "png"], root / "ds", key_file)
    return {"root": root, "truth": truth, "ds": root / "ds", "key_file": key_file}


def _read(folder: Path) -> list[dict]:
    """Every sample of a folder as a stock ``streaming.StreamingDataset`` reads it."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory() as cache:
        ds = StreamingDataset(remote=str(folder), local=cache, shuffle=False, batch_size=1)
        samples = [ds[i] for i in range(len(ds))]
        del ds
    clean_stale_shared_memory()
    return samples


def _split(ds: Path, out: Path, *args: str) -> dict[str, list[dict]]:
    rc = cli.main(["split", str(ds), "--out", str(out), *args])
    assert rc == 0
    return {d.name: list(iter_samples(str(d))) for d in sorted(out.iterdir()) if d.is_dir()}


def _by_uid(samples: list[dict], truth: dict[str, tuple[str, str, str]], key: str) -> dict[str, tuple]:
    """uid -> (PatientID, issuer, study) for the DICOM samples, from the uid the converter gives each SOP UID."""
    uids = {keyed_uid(key.encode(), f"dicom:{sop}:0"): who for sop, who in truth.items()}
    return {s["uid"]: uids[s["uid"]] for s in samples if s["uid"] in uids}


def test_every_dicom_sample_carries_keyed_patient_and_study_keys(archive):
    samples = _read(archive["ds"])
    who = _by_uid(samples, archive["truth"], KEY)
    assert len(who) == len(archive["truth"]) and len(samples) == len(who) + 6  # and the six PNGs
    for s in samples:
        if s["uid"] not in who:  # a PNG: no patient, no study
            assert s["patient"] == "" and s["study"] == ""
            continue
        pid, issuer, study = who[s["uid"]]
        want = keyed_patient(KEY.encode(), json.dumps([issuer, pid])) if pid else ""
        assert s["patient"] == want  # the fast reader and pydicom (RLE, big-endian) give the same key
        assert s["study"] == keyed_study(KEY.encode(), study) and len(s["study"]) == 32
    keys = {s["patient"] for s in samples if s["patient"]}
    assert len(keys) == N_PATIENTS + 1  # the same PatientID at HOSP_B is another patient
    uids = {s["uid"] for s in samples}
    assert not keys & uids and not {s["study"] for s in samples} & uids and not keys & {s["study"] for s in samples}
    # Not the PatientID, nor any unkeyed hash of it (or of its message).
    for pid in {w[0] for w in who.values() if w[0]}:
        for message in (pid, json.dumps([ISSUER, pid]), ISSUER + pid, pid + ISSUER):
            for algo in ("md5", "sha1", "sha256", "sha512", "blake2b"):
                digest = hashlib.new(algo, message.encode()).hexdigest()
                assert not any(k in digest for k in keys)
        assert pid not in keys


def test_changing_the_uid_key_changes_every_patient_key(archive, tmp_path):
    _convert(
        [archive["root"] / "in" / "dicom" / _pid(p) for p in range(5)],
        tmp_path / "other",
        _key_file(tmp_path, OTHER_KEY),
    )
    other = _read(tmp_path / "other")
    mine = _read(archive["ds"])
    assert {s["patient"] for s in other}.isdisjoint({s["patient"] for s in mine})
    assert {s["study"] for s in other}.isdisjoint({s["study"] for s in mine})
    # The grouping is the same: five patients, as under the first key.
    who = _by_uid(other, archive["truth"], OTHER_KEY)
    assert len({s["patient"] for s in other}) == len({who[s["uid"]][0] for s in other}) == 5


def _groups(splits: dict[str, list[dict]], column: str) -> dict[str, set[str]]:
    return {name: {s[column] for s in samples if s[column]} for name, samples in splits.items()}


def test_split_by_patient_keeps_every_patient_in_one_split(archive, tmp_path, capsys):
    source = list(iter_samples(str(archive["ds"])))
    splits = _split(archive["ds"], tmp_path / "s", "--by", "patient", "--fractions", "0.8,0.1,0.1", "--seed", "3")
    printed = capsys.readouterr().out
    assert list(splits) == ["test", "train", "val"]
    groups = _groups(splits, "patient")
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not groups[a] & groups[b], (a, b)
    # Every sample in exactly one split, unchanged.
    got = sorted((s["uid"], s["image"], s["patient"]) for ss in splits.values() for s in ss)
    assert got == sorted((s["uid"], s["image"], s["patient"]) for s in source)
    # Near the fractions: within four standard deviations of a binomial draw over the patients.
    n = N_PATIENTS + 1
    for name, want in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(len(groups[name]) / n - want) <= 4 * math.sqrt(want * (1 - want) / n), name
        assert abs(len(splits[name]) / len(source) - want) <= 0.15, name
    # The report: a line per split with the achieved figures, and the note on samples without a key.
    for name, samples in splits.items():
        assert re.search(rf"{name}: +{len(samples)} samples \({len(samples) / len(source):.3f}, asked", printed)
        assert f"{len(groups[name])} patients" in printed
    keyless = sum(1 for s in source if not s["patient"])
    assert f"note: {keyless} samples have no patient key" in printed and "its own group" in printed
    report = json.loads((tmp_path / "s" / "split.json").read_text())
    assert report["splits"]["val"]["samples"] == len(splits["val"]) and report["seed"] == 3


def test_the_splits_are_datasets_a_stock_streaming_dataset_reads_and_verify_passes(archive, tmp_path, capsys):
    splits = _split(archive["ds"], tmp_path / "s", "--fractions", "0.5,0.5", "--names", "fit,holdout")
    assert set(splits) == {"fit", "holdout"}
    for name, samples in splits.items():
        folder = tmp_path / "s" / name
        assert cli.main(["verify", str(folder)]) == 0, capsys.readouterr().err
        read = _read(folder)
        assert [s["uid"] for s in read] == [s["uid"] for s in samples]
        assert all(set(COLUMNS) <= set(s) for s in read)
        assert json.loads((folder / "summary.json").read_text())["images"] == len(samples)


def test_nothing_readable_reaches_the_splits(archive, tmp_path, capsys):
    _split(archive["ds"], tmp_path / "s")
    blobs = []
    for p in sorted((tmp_path / "s").rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            blobs += [p.name.encode(), data]
            if p.name.endswith(".zstd"):
                blobs.append(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30))
    blob = b"\n".join(blobs)
    printed = "".join(capsys.readouterr())
    for sop, (pid, issuer, study) in archive["truth"].items():
        for value in (pid, issuer, study, sop):
            if value:
                assert value.encode() not in blob and value not in printed
    assert b"PAT0" not in blob and b"HOSP_" not in blob


def test_split_by_study_keeps_every_study_in_one_split(archive, tmp_path):
    splits = _split(archive["ds"], tmp_path / "s", "--by", "study", "--seed", "1")
    groups = _groups(splits, "study")
    assert sum(len(g) for g in groups.values()) == len(set().union(*groups.values()))  # disjoint
    patients = _groups(splits, "patient")
    assert sum(len(g) for g in patients.values()) > N_PATIENTS + 1  # a patient's studies may part
    assert json.loads((tmp_path / "s" / "split.json").read_text())["by"] == "study"


def test_same_seed_same_split_other_seed_another(archive, tmp_path):
    a = _split(archive["ds"], tmp_path / "a", "--seed", "5")
    b = _split(archive["ds"], tmp_path / "b", "--seed", "5")
    c = _split(archive["ds"], tmp_path / "c", "--seed", "6")

    def uids(d: dict[str, list[dict]]) -> dict[str, list[str]]:
        return {name: sorted(s["uid"] for s in samples) for name, samples in d.items()}

    assert uids(a) == uids(b)
    for name in ("train", "val", "test"):  # byte for byte
        for f in (tmp_path / "a" / name).iterdir():
            assert f.read_bytes() == (tmp_path / "b" / name / f.name).read_bytes()
    assert uids(a) != uids(c)
    assert _groups(a, "patient") != _groups(c, "patient")


def test_a_patient_keeps_its_split_when_patients_are_added(archive, tmp_path):
    part = tmp_path / "part"
    _convert([archive["root"] / "in" / "dicom" / _pid(p) for p in range(0, N_PATIENTS, 3)], part, archive["key_file"])
    before = _groups(_split(part, tmp_path / "s1", "--seed", "2"), "patient")
    after = _groups(_split(archive["ds"], tmp_path / "s2", "--seed", "2"), "patient")
    for name, keys in before.items():
        assert keys <= after[name], name


def test_samples_without_a_key_are_each_their_own_group(tmp_path, capsys):
    pngs = tmp_path / "png"
    pngs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(pngs / f"{i}.png")
    assert cli.main(["convert", str(pngs), "--out", str(tmp_path / "ds"), "--modality", "xray", "--no-progress"]) == 0
    splits = _split(tmp_path / "ds", tmp_path / "s", "--fractions", "0.5,0.5")
    out = capsys.readouterr().out
    assert "note: 40 samples have no patient key" in out and "its own group" in out
    assert all(len(ss) >= 8 for ss in splits.values())  # spread sample by sample, not as one group
    assert all(s["patient"] == "" and s["study"] == "" for ss in splits.values() for s in ss)


def _old_folder(ds: Path, old: Path) -> None:
    """``ds`` as a converter before patient keys wrote it: the same samples without those columns."""
    columns = {c: e for c, e in COLUMNS.items() if c not in LATER_COLUMNS}
    with ShardWriter(str(old), columns, compression="zstd:1", hashes=["xxh64"]) as w:
        n = 0
        for s in iter_samples(str(ds)):
            w.write({c: s[c] for c in columns})
            n += 1
    (old / "summary.json").write_text(json.dumps({"images": n}))


def test_old_folders_still_read_and_verify_but_do_not_split(archive, tmp_path, capsys):
    from unimed.leakage import leakage

    old = tmp_path / "old"
    _old_folder(archive["ds"], old)
    assert cli.main(["verify", str(old)]) == 0, capsys.readouterr().err
    read = _read(old)
    assert len(read) > N_PATIENTS and "patient" not in read[0]
    leakage(str(old), [], drop=str(tmp_path / "clean"))  # --drop keeps the old folder's columns
    assert "patient" not in next(iter_samples(str(tmp_path / "clean")))
    capsys.readouterr()
    for by in ("patient", "study"):
        assert cli.main(["split", str(old), "--by", by, "--out", str(tmp_path / by)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"no {by} column" in err and "re-convert" in err
        assert not (tmp_path / by).exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--fractions", "0.8,0.1"], "sum to 0.9, not 1"),
        (["--fractions", "1.2,-0.1,-0.1"], "negative"),
        (["--fractions", "0.8,x,0.1"], "give numbers"),
        (["--fractions", "1"], "at least two"),
        (["--fractions", "0.5,0.5", "--names", "a,b,c"], "3 names for 2 fractions"),
        (["--fractions", "0.25,0.25,0.25,0.25"], "need --names"),
        (["--names", "train,val,../x"], "not a folder name"),
        (["--names", "a,a,b"], "given twice"),
    ],
)
def test_bad_fractions_and_names_are_one_line(archive, tmp_path, capsys, args, needle):
    rc = cli.main(["split", str(archive["ds"]), "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_not_a_dataset_and_bad_out_are_one_line(archive, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        ([str(tmp_path / "empty")], "no index.json"),
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(archive["ds"]), "--out", str(tmp_path / "full")], "not an empty folder"),
        ([str(archive["ds"]), "--out", str(archive["ds"] / "splits")], "must lie outside"),
    ]
    for argv, needle in cases:
        rc = cli.main(["split", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (archive["ds"] / "splits").exists() and os.listdir(tmp_path / "full") == ["x"]


def test_dicom_slide_tiles_carry_their_patient(tmp_path, helpers):
    from unimed.ingest.synthetic import write_dicom_slide

    folder = tmp_path / "wsi" / _pid(9) / "SLIDES"
    folder.mkdir(parents=True)
    write_dicom_slide(folder / "level0.dcm")
    ds = pydicom.dcmread(folder / "level0.dcm")
    ds.PatientID, ds.IssuerOfPatientID, ds.StudyInstanceUID = _pid(9), ISSUER, pydicom.uid.generate_uid()
    ds.save_as(folder / "level0.dcm")
    helpers.convert([tmp_path / "wsi"], tmp_path / "out", tile_size=64, mpp=0.5)
    samples = helpers.read(tmp_path / "out")
    assert len(samples) == 6
    assert {s["patient"] for s in samples} == {keyed_patient(helpers.key, json.dumps([ISSUER, _pid(9)]))}
    assert {s["study"] for s in samples} == {keyed_study(helpers.key, str(ds.StudyInstanceUID))}


def test_the_schema_check_refuses_a_readable_patient_value():
    from unimed.schema import check_sample

    sample = {
        "image": b"x",
        "captions": ["a"],
        "modality": "ct",
        "labels": [],
        "source": "local",
        "uid": "u",
        "meta": {"codec": "jpeg"},
    }
    assert check_sample(sample) == []  # an older folder's sample: no patient or study column
    assert check_sample({**sample, "patient": "a" * 32, "study": ""}) == []
    assert check_sample({**sample, "patient": _pid(1), "study": ""}) == [
        "patient is not a keyed hash (32 hex digits) or empty"
    ]
