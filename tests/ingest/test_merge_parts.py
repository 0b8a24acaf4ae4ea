"""Split jobs (``--num-shards K --shard-index I``) and ``ingest merge OUT PART...``: each part describes
itself, the merge checks the parts (all there once, finished, one job, one uid key), keeps every part's
plan-time rejects, and a merged job equals the same job converted in one part."""

from __future__ import annotations

import json
import shutil

import pytest

from unimed.ingest import cli
from unimed.ingest.merge import key_fingerprint
from unimed.ingest.synthetic import write_ct_series

KEY = "5e" * 32
OTHER_KEY = "c3" * 32


def _key_file(folder, key):
    path = folder / f"uid-{key[:4]}.key"
    path.write_text(key)
    path.chmod(0o600)
    return path


def _convert(src, out, key_file, **kw):
    from unimed.ingest.convert import ConvertConfig, convert

    cfg = ConvertConfig(
        inputs=[str(src)], out=str(out), chunk_mb=0.02, uid_key_file=str(key_file), progress=False, **kw
    )
    return convert(cfg, echo=lambda s: None)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A series beside a file no source reads (a plan-time reject), converted whole and in two parts."""
    root = tmp_path_factory.mktemp("job")
    src = root / "in" / "series"
    write_ct_series(src, 16, size=48)
    (src / "notes.txt").write_text("not an image")
    key = _key_file(root, KEY)
    _convert(src, root / "whole", key)
    parts = [root / f"part{i}" for i in range(2)]
    for i, p in enumerate(parts):
        _convert(src, p, key, num_shards=2, shard_index=i)
    return {"root": root, "src": src, "key": key, "whole": root / "whole", "parts": parts}


def _samples(helpers, folder):
    return sorted((s["uid"], s["image"], json.dumps(s["captions"]), s["patient"]) for s in helpers.read(folder))


def _merge(out, *parts, report=None):
    extra = ["--report", str(report)] if report else []
    return cli.main(["merge", str(out), *map(str, parts), *extra, "--no-progress"])


def _one_line(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def test_each_part_describes_itself_without_the_key(job):
    for i, p in enumerate(job["parts"]):
        text = (p / ".unimed" / "part.json").read_text()
        info = json.loads(text)
        assert info["have"] == [i] and info["parts"] == 2 and info["finished"] is True
        assert info["key"] == key_fingerprint(KEY.encode()) and KEY not in text and KEY[:16] not in text
        assert info["chunks"] and all(c.startswith(f"p{i:03d}-c") for c in info["chunks"])
    one, two = (json.loads((p / ".unimed" / "part.json").read_text()) for p in job["parts"])
    assert one["job"] == two["job"]
    whole = json.loads((job["whole"] / ".unimed" / "part.json").read_text())
    assert whole["have"] == [0] and whole["parts"] == 1 and whole["job"] != one["job"]  # another --num-shards


def test_two_parts_merged_equal_one_part(job, helpers, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert _merge(merged, *job["parts"]) == 0
    assert "merged 2 parts" in capsys.readouterr().out
    assert _samples(helpers, merged) == _samples(helpers, job["whole"])
    # The plan-time reject (written by part 0 only) is kept, by uid in the dataset, with its path in the report.
    assert helpers.dataset_rejects(merged) == helpers.dataset_rejects(job["whole"])
    assert [r["reason"] for r in helpers.dataset_rejects(merged)] == [
        r["reason"] for r in helpers.dataset_rejects(job["whole"])
    ] and len(helpers.dataset_rejects(merged)) == 1
    assert helpers.rejects(merged) == helpers.rejects(job["whole"])
    assert helpers.rejects(merged)[0]["path"].endswith("notes.txt")
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["images"] == 16 and summary["rejects"] == 1
    assert cli.main(["verify", str(merged), "--no-progress"]) == 0
    info = json.loads((merged / ".unimed" / "part.json").read_text())
    assert info["have"] == [0, 1] and info["finished"]
    assert cli.main(["merge", str(merged)]) == 0  # a whole job: rebuilt in place
    assert _samples(helpers, merged) == _samples(helpers, job["whole"])
    for p in job["parts"]:  # the parts are left as they were
        assert (p / "index.json").is_file() and len(helpers.read(p)) < 16


def test_a_missing_part_is_named(job, tmp_path, capsys):
    assert _merge(tmp_path / "m", job["parts"][0]) == 2
    _one_line(capsys, "missing part --shard-index 1 of --num-shards 2")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.report").exists()
    assert cli.main(["merge", str(job["parts"][1])]) == 2  # a lone part is no dataset to rebuild
    _one_line(capsys, "part 1 of 2", "ingest merge OUT PART")


def test_a_part_given_twice(job, tmp_path, capsys):
    p0, p1 = job["parts"]
    assert _merge(tmp_path / "m", p0, p0, p1) == 2
    _one_line(capsys, "given twice")
    copy = tmp_path / "copy0"
    shutil.copytree(p0, copy)
    assert _merge(tmp_path / "m", p0, copy, p1) == 2
    _one_line(capsys, "part 0 of 2 given twice")
    assert not (tmp_path / "m").exists()


def test_parts_under_different_uid_keys_or_of_another_job(job, tmp_path, capsys):
    other = tmp_path / "other1"
    _convert(job["src"], other, _key_file(tmp_path, OTHER_KEY), num_shards=2, shard_index=1)
    assert _merge(tmp_path / "m", job["parts"][0], other) == 2
    _one_line(capsys, "another uid key")
    other = tmp_path / "q1"
    _convert(job["src"], other, job["key"], num_shards=2, shard_index=1, quality=50)
    assert _merge(tmp_path / "m", job["parts"][0], other) == 2
    _one_line(capsys, "a part of another job")
    assert not (tmp_path / "m").exists()


def test_parts_from_machines_mounting_the_inputs_elsewhere_merge(job, helpers, tmp_path):
    moved = tmp_path / "elsewhere" / "series"  # the same archive at another path
    shutil.copytree(job["src"], moved)
    p1 = tmp_path / "p1"
    _convert(moved, p1, job["key"], num_shards=2, shard_index=1)
    assert _merge(tmp_path / "m", job["parts"][0], p1) == 0
    assert _samples(helpers, tmp_path / "m") == _samples(helpers, job["whole"])


def test_raw_folder_unfinished_part_and_bad_out_are_refused(job, tmp_path, capsys):
    p0, p1 = job["parts"]
    raw = job["src"]
    assert _merge(tmp_path / "m", p0, raw) == 2
    _one_line(capsys, "not the --out of `ingest convert`")
    unfinished = tmp_path / "unfinished1"
    shutil.copytree(p1, unfinished)
    info = json.loads((unfinished / ".unimed" / "part.json").read_text())
    (unfinished / ".unimed" / "part.json").write_text(json.dumps({**info, "finished": False}))
    assert _merge(tmp_path / "m", p0, unfinished) == 2
    _one_line(capsys, "part 1 of 2 is not finished", "--resume")
    shutil.rmtree(unfinished / info["chunks"][-1])  # finished, but a chunk folder lost in a copy
    (unfinished / ".unimed" / "part.json").write_text(json.dumps(info))
    assert _merge(tmp_path / "m", p0, unfinished) == 2
    _one_line(capsys, "not finished", info["chunks"][-1])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert _merge(tmp_path / "full", p0, p1) == 2
    _one_line(capsys, "not an empty folder")
    assert not (tmp_path / "m").exists()


def test_chunk_folders_copied_together_by_hand_are_refused(job, tmp_path, capsys):
    """What the README once said to do (cp -r part*/p* merged/) loses part 0's plan-time rejects."""
    merged = tmp_path / "merged"
    merged.mkdir()
    for part in job["parts"]:
        for d in part.iterdir():
            if d.is_dir() and d.name.startswith("p"):
                shutil.copytree(d, merged / d.name)
    assert cli.main(["merge", str(merged)]) == 2
    _one_line(capsys, "several parts", "ingest merge OUT PART")
    assert not (merged / "index.json").exists()


def test_merge_progress_is_the_convert_display(job, tmp_path, capsys, monkeypatch):
    import unimed.ingest.progress as progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line per chunk folder
    assert cli.main(["merge", str(tmp_path / "m"), *map(str, job["parts"])]) == 0
    chunks = sum(len(json.loads((p / ".unimed" / "part.json").read_text())["chunks"]) for p in job["parts"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("merge ")]
    assert len(lines) == chunks and lines[-1].startswith(f"merge {chunks}/{chunks} chunk folders")
