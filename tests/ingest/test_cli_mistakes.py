"""User mistakes at the ingest command line: a non-zero exit and one line that says what to fix."""

from __future__ import annotations

import json
import shutil

import pytest

from unimed.ingest import cli
from unimed.samples import pydicom_dir


def test_zero_images_is_a_failure_with_the_reason(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    rc = cli.main(["convert", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert [ln for ln in err.splitlines() if ln.startswith("ingest: error")] == [
        "ingest: error: no image was converted: no source recognized the file (tried manifest: not its format; "
        "slide: not its format; dicom: not its format; image: not its format; nifti: not its format) (1 of 1 "
        f"inputs); every reason is in {tmp_path / 'out' / 'rejects.jsonl'}; once fixed, run again with --overwrite"
    ]


def test_a_manifest_of_plain_images_without_modality_names_the_fix(tmp_path, capsys):
    """README's manifest example without --modality: the one line says why and what to pass; with it, the
    corrected command runs after --overwrite."""
    from unimed.samples import skimage_dir

    (tmp_path / "images").mkdir()
    shutil.copy(skimage_dir() / "retina.jpg", tmp_path / "images" / "r1.jpg")
    manifest = tmp_path / "train.csv"
    manifest.write_text("image,caption\nimages/r1.jpg,A fundus photograph with a normal optic disc.\n")
    out = str(tmp_path / "roco")
    assert cli.main(["convert", str(manifest), "--out", out, "--no-progress"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ingest: error")]
    assert len(err) == 1 and "carries no modality; pass --modality" in err[0] and "--overwrite" in err[0]
    assert cli.main(["convert", str(manifest), "--out", out, "--modality", "other", "--no-progress"]) == 2
    assert (
        cli.main(["convert", str(manifest), "--out", out, "--modality", "other", "--overwrite", "--no-progress"]) == 0
    )


def test_an_unknown_axis_is_a_bad_argument_not_a_reject_per_file(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    with pytest.raises(SystemExit) as exc:
        cli.main(["convert", str(src), "--out", str(tmp_path / "out"), "--axis", "transverse"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--axis: invalid choice: 'transverse'" in err
    assert "ingest convert --help" in err  # one line, not the usage block of every flag
    assert not (tmp_path / "out").exists()


@pytest.fixture
def converted_nothing(tmp_path, capsys):
    """A dataset folder from a run whose only input was rejected."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    cli.main(["convert", str(src), "--out", str(out), "--no-progress"])
    capsys.readouterr()
    return out


def test_tokenizer_on_a_folder_without_samples_says_so(converted_nothing, capsys):
    from unimed import cli as unimed_cli

    out = converted_nothing
    assert unimed_cli.main(["tokenizer", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no samples" in err
    assert not (out / "tokenizer").exists()
    assert unimed_cli.main(["tokenizer", str(out.parent / "in")]) == 2  # a folder of inputs, not shards
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no index.json" in err


def test_ingest_tokenizer_moved_to_unimed(converted_nothing, capsys):
    assert cli.main(["tokenizer", str(converted_nothing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use `unimed tokenizer DIR`" in err


def test_modality_and_force_modality_together_is_one_line(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    rc = cli.main(
        [
            "convert",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--modality",
            "ct",
            "--force-modality",
            "mri",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--modality and --force-modality: give one" in err
    assert (
        cli.main(["convert", str(src), "--out", str(tmp_path / "o"), "--force-modality", "auto", "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force-modality auto: use one of" in err
    assert not (tmp_path / "o").exists()


def test_verify_and_inspect_on_a_run_that_converted_nothing(converted_nothing, capsys):
    for cmd in ("verify", "inspect"):
        assert cli.main([cmd, str(converted_nothing)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds no samples" in err


@pytest.mark.parametrize("out", ["a-file", "s3://", "gs://bucket/prefix"])  # s3: tests/test_object_storage.py
def test_out_must_be_a_local_folder(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    assert cli.main(["convert", str(src), "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err
    assert not (tmp_path / "s3:").exists()


def test_a_split_job_into_one_s3_prefix_is_refused(tmp_path, capsys):
    """Each part would publish an index of its own part over the same prefix: refused before any work."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    rc = cli.main(
        ["convert", str(src), "--out", "s3://bucket/prefix", "--num-shards", "2", "--shard-index", "0", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--num-shards with an s3:// --out" in err


def test_num_shards_without_shard_index_is_refused(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    assert cli.main(["convert", str(src), "--out", str(tmp_path / "o"), "--num-shards", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-shards 2 needs --shard-index" in err
    assert not (tmp_path / "o").exists()


def test_merge_refuses_a_folder_without_chunk_folders(tmp_path, capsys):
    raw = tmp_path / "images"
    raw.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", raw)
    assert cli.main(["merge", str(raw)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no complete chunk folder" in err and "ingest merge OUT PART" in err
    assert cli.main(["merge", str(tmp_path / "merged"), str(raw)]) == 2  # a raw folder given as a part
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the --out of `ingest convert`" in err
    assert sorted(p.name for p in raw.iterdir()) == ["CT_small.dcm"]  # nothing written into it
    assert not (tmp_path / "images.report").exists() and not (tmp_path / "merged").exists()
    assert cli.main(["merge", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_failed_convert_leaves_nothing_and_overwrite_starts_again(tmp_path, capsys):
    """A mistake found before any chunk (no input, an empty folder, a bad labels table) leaves no `.unimed/`
    behind, so the corrected command runs; --overwrite replaces a finished dataset, and only a dataset."""
    (tmp_path / "empty").mkdir()
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    no_path = tmp_path / "no-path.csv"
    no_path.write_text("name,label\nCT_small.dcm,a\n")
    elsewhere = tmp_path / "elsewhere.csv"  # a table of other files: nothing it says reaches a sample
    elsewhere.write_text("path,label\nx.png,a\n")
    for argv, needle in (
        (["convert", str(tmp_path / "nope")], "no such file"),
        (["convert", str(tmp_path / "empty")], "no input files"),
        (["convert", str(src), "--labels", str(no_path)], "no path column"),
        (["convert", str(src), "--labels", str(src / "CT_small.dcm")], "not a CSV label table"),
        (["convert", str(src), "--labels", str(elsewhere)], "none of its 1 rows names one of"),
    ):
        assert cli.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.report").exists()
    out = str(tmp_path / "out")
    assert cli.main(["convert", str(src), "--out", out, "--no-progress"]) == 0
    assert cli.main(["convert", str(src), "--out", out, "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["convert", str(src), "--out", out, "--overwrite", "--no-progress"]) == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")  # not the converter's: --overwrite refuses
    assert cli.main(["convert", str(src), "--out", out, "--overwrite", "--no-progress"]) == 2
    assert "does not hold a converted dataset only" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_class_folders_pointed_at_a_class_folder(tmp_path, capsys):
    """BACH/Benign/ given where BACH/ was meant: one line, not a set of unlabelled images; an image lying
    beside the class folders is a reject, never an unlabelled sample."""
    from PIL import Image
    from skimage import data

    bach = tmp_path / "BACH"
    for cls in ("Benign", "InSitu"):
        (bach / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(data.astronaut()[i * 40 : i * 40 + 200, :200]).save(bach / cls / f"b00{i}.tif")
    rc = cli.main(
        [
            "convert",
            str(bach / "Benign"),
            "--out",
            str(tmp_path / "o1"),
            "--class-folders",
            "--modality",
            "pathology",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "give the folder that holds the class folders" in err
    Image.fromarray(data.astronaut()[:200, :200]).save(bach / "stray.tif")
    rc = cli.main(
        [
            "convert",
            str(bach),
            "--out",
            str(tmp_path / "o2"),
            "--class-folders",
            "--modality",
            "pathology",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "o2.report" / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["not inside a class folder (--class-folders labels by folder)"]
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["images"] == 4
