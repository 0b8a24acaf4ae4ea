"""Scale and crash safety: workers, SIGKILL + --resume, split across machines, verify, inspect (the
tokenizer command, ``unimed tokenizer``: tests/streaming/test_streaming_tokenizer.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unimed.ingest import cli
from unimed.ingest.synthetic import write_ct_series

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    write_ct_series(folder, 48, size=96)
    return folder


def _uids(helpers, out):
    return [s["uid"] for s in helpers.read(out)]


def _cmd(series, out, *extra):
    return [
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
        *extra,
    ]


def test_workers_give_the_same_samples(tmp_path, helpers, series):
    one = tmp_path / "w1"
    two = tmp_path / "w2"
    helpers.convert([series], one, chunk_mb=0.05)
    helpers.convert([series], two, chunk_mb=0.05, workers=2)
    assert sorted(_uids(helpers, one)) == sorted(_uids(helpers, two))
    assert len(set(_uids(helpers, one))) == 48


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path, helpers, series):
    ref = tmp_path / "ref"
    helpers.convert([series], ref, chunk_mb=0.05)
    want = sorted(_uids(helpers, ref))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": ROOT}

    def complete() -> int:
        return sum(1 for d in out.glob("p000-c*") if (d / "done.json").exists()) if out.exists() else 0

    killed = 0
    for i in range(3):
        args = _cmd(series, out, "--workers", "2") + (["--resume"] if i else [])
        before = complete()
        proc = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while proc.poll() is None and complete() <= before:  # killed once this run has finished a chunk
            time.sleep(0.001)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and workers
            killed += 1
        proc.wait()
        # Whatever was left: no merged index may point at a partial shard.
        if (out / "index.json").exists():
            idx = json.loads((out / "index.json").read_text())
            for shard in idx["shards"]:
                folder = shard["zip_data"]["basename"].split("/")[0]
                assert not folder.endswith(".tmp") and (out / folder / "done.json").exists()
    assert killed >= 1, "the run finished before any kill: make the series bigger"
    rc = subprocess.run(_cmd(series, out, "--workers", "2", "--resume"), env=env, capture_output=True).returncode
    assert rc == 0
    got = _uids(helpers, out)
    assert len(got) == len(set(got)), "no duplicates"
    assert sorted(got) == want
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    faults, _ = __import__("unimed.ingest.verify", fromlist=["verify"]).verify(str(out))
    assert faults == []


def test_split_across_machines_then_merge(tmp_path, helpers, series):
    ref = tmp_path / "ref"
    helpers.convert([series], ref, chunk_mb=0.05)
    parts = []
    for i in range(2):
        out = tmp_path / f"part{i}"
        helpers.convert([series], out, chunk_mb=0.05, num_shards=2, shard_index=i)
        parts.append(out)
    assert 0 < len(_uids(helpers, parts[0])) < 48
    merged = tmp_path / "merged"
    assert cli.main(["merge", str(merged), *map(str, parts)]) == 0  # more in tests/ingest/test_merge_parts.py
    assert sorted(_uids(helpers, merged)) == sorted(_uids(helpers, ref))


def test_verify_catches_a_flipped_byte(tmp_path, helpers, series, capsys):
    out = tmp_path / "out"
    helpers.convert([series], out, chunk_mb=0.05)
    assert cli.main(["verify", str(out)]) == 0
    shard = sorted(out.glob("p000-c*/shard.*.mds.zstd"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert shard.parent.name + "/" + shard.name in err and "hash mismatch" in err


def test_inspect_counts_and_contact_sheet(tmp_path, helpers, series, capsys):
    out = tmp_path / "out"
    helpers.convert([series], out, source_name="phantom")
    sheet = tmp_path / "sheet.png"
    assert cli.main(["inspect", str(out), "--sheet", str(sheet)]) == 0
    printed = capsys.readouterr().out
    counts = json.loads(printed[: printed.rindex("}") + 1])
    assert counts["modality"] == {"ct": 48} and counts["source"] == {"phantom": 48}
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width > 600 and im.height >= 192
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modality"] == {"ct": 48} and summary["images"] == 48 and summary["bytes_per_image"] > 0
