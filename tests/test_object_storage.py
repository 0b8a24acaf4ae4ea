"""Object storage for real: a moto S3 server on 127.0.0.1, every byte over HTTP, no mocks in the process.

``ingest convert --out s3://...`` against a local conversion of the same inputs, a conversion killed
after its first uploaded chunk and resumed (with its staging folder, and on a "new machine" without
it), ``ingest verify s3://...``, a few training steps from an ``s3://`` mix through streaming's own
download and cache, ``unimed eval zeroshot`` on an ``s3://`` folder, and one-line errors for an
unreachable endpoint and a missing bucket.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UID_KEY = "unimed-test-key-0123456789abcdef0123"
#: Timing fields of summary.json (they differ between any two runs).
_TIMES = ("seconds", "images_per_second", "worker_seconds")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server in a thread of this process, on a free port of 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, str]:
    """The demo's real-image crops (the inputs) and the sets converted from them, built as the train tests do."""
    from unimed.train.demodata import build_demo_sets

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIMED_UID_KEY", UID_KEY)
        sets = build_demo_sets(
            tmp_path_factory.mktemp("demo"), train_per_modality=16, eval_per_modality=6, size=64, workers=1
        )
    root = Path(sets["train"]).parent
    return {
        **sets,
        "crops": str(root / "crops" / "train"),
        "labels": str(root / "crops" / "train.csv"),
        "eval_crops": str(root / "crops" / "eval"),
        "eval_labels": str(root / "crops" / "eval.csv"),
    }


class S3:
    """The test's bucket on the moto server, seen through a plain boto3 client."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        import boto3

        self.endpoint, self.bucket = endpoint, bucket
        self.client = boto3.client("s3", endpoint_url=endpoint)
        self.client.create_bucket(Bucket=bucket)

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def listing(self, prefix: str) -> dict[str, int]:
        """Relative key -> size of every object under ``prefix``."""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix) + 1 :]] = obj["Size"]
        return out

    def get(self, prefix: str, rel: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{prefix}/{rel}")["Body"].read()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path) -> S3:
    """Endpoint and dummy credentials as streaming documents them (S3_ENDPOINT_URL), a fresh bucket."""
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_CANNED_ACL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UNIMED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("UNIMED_UID_KEY", UID_KEY)
    return S3(moto_endpoint, f"unimed-{uuid.uuid4().hex[:12]}")


def _convert_args(demo: dict, out: str, *extra: str) -> list[str]:
    # --chunk-mb 0.001: one chunk per input, so a run has ~100 chunks to be killed between.
    return [
        "convert",
        demo["crops"],
        "--out",
        out,
        "--labels",
        demo["labels"],
        "--source",
        "demo-train",
        "--chunk-mb",
        "0.001",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="session")
def local_reference(demo, tmp_path_factory) -> Path:
    """The same conversion into a local folder on one machine: what every s3 run must equal."""
    from unimed.ingest import cli

    out = tmp_path_factory.mktemp("reference") / "train"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIMED_UID_KEY", UID_KEY)
        assert cli.main(_convert_args(demo, str(out))) == 0
    return out


def _local_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not str(p.relative_to(folder)).startswith(".unimed")
    }


def _summary(data: bytes) -> dict:
    return {k: v for k, v in json.loads(data).items() if k not in _TIMES}


def _assert_equals_reference(s3: S3, prefix: str, reference: Path) -> None:
    """Same files as the local conversion (the run state apart), byte for byte; summary.json up to timings."""
    listing = s3.listing(prefix)
    remote = {rel: s3.get(prefix, rel) for rel in listing if not rel.startswith(".unimed/")}
    local = _local_files(reference)
    assert sorted(remote) == sorted(local)
    assert any(rel.endswith(".mds.zstd") for rel in remote)
    for rel, data in local.items():
        if rel.endswith("summary.json") and "/" not in rel:
            assert _summary(remote[rel]) == _summary(data)
        elif rel.endswith("done.json"):  # per-chunk stats: the same counts and rejects, other timings
            a, b = json.loads(remote[rel]), json.loads(data)
            assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
        else:
            assert remote[rel] == data, rel


def _index_is_sound(s3: S3, prefix: str) -> bool:
    """No index.json yet, or one whose every shard is in the bucket at the size it names."""
    listing = s3.listing(prefix)
    if "index.json" not in listing:
        return True
    index = json.loads(s3.get(prefix, "index.json"))
    for shard in index["shards"]:
        entry = shard.get("zip_data") or shard["raw_data"]
        if listing.get(entry["basename"]) != entry["bytes"]:
            return False
    return True


def _start(args: list[str]) -> subprocess.Popen:
    code = "import sys; from unimed.ingest.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill_after_first_chunk(s3: S3, prefix: str, args: list[str]) -> dict[str, int]:
    """Run a conversion in a subprocess; SIGKILL it as soon as the bucket holds a complete chunk."""
    proc = _start(args)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(rel.endswith("/done.json") for rel in s3.listing(prefix)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listing = s3.listing(prefix)
    assert "index.json" not in listing, "killed after the whole run: no interruption was tested"
    assert _index_is_sound(s3, prefix)
    return listing


def _resume_watching(s3: S3, prefix: str, args: list[str]) -> None:
    """Resume in a subprocess, checking the bucket all along: the index never names a missing shard."""
    proc = _start(args)
    checks = 0
    while proc.poll() is None:
        assert _index_is_sound(s3, prefix)
        checks += 1
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert checks > 0 and _index_is_sound(s3, prefix)
    assert "index.json" in s3.listing(prefix)


# ----------------------------------------------------------------------------------------------- ingest


def test_convert_to_s3_equals_a_local_conversion_and_verifies(demo, local_reference, s3, tmp_path, capsys):
    from unimed.ingest import cli

    staging = tmp_path / "staging"
    assert cli.main(_convert_args(demo, s3.url("train"), "--staging", str(staging))) == 0
    assert f"into {s3.url('train')}" in capsys.readouterr().out
    listing = s3.listing("train")
    assert "index.json" in listing and "summary.json" in listing and "rejects.jsonl" in listing
    _assert_equals_reference(s3, "train", local_reference)
    # The report folder (paths) stays local, beside the staging folder; the bucket holds no path at all.
    assert (tmp_path / "staging.report" / "rejects.jsonl").is_file()
    assert not any("report" in rel for rel in listing)
    blob = b"".join(s3.get("train", rel) for rel in listing)
    assert demo["crops"].encode() not in blob and str(tmp_path).encode() not in blob
    # Uploaded shards leave the staging folder; the chunks' index.json and done.json stay (resume state).
    assert not list(staging.rglob("*.mds*")) and list(staging.glob("p000-c*/done.json"))
    # A second run into the same prefix is refused without --resume, in one line.
    assert cli.main(_convert_args(demo, s3.url("train"))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and s3.url("train") in err

    assert cli.main(["verify", s3.url("train")]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {json.loads(s3.get('train', 'summary.json'))['images']} samples")


def test_verify_on_s3_finds_a_corrupted_shard(demo, local_reference, s3, capsys):
    from unimed.ingest import cli
    from unimed.remote import Store

    store = Store(s3.url("ds"))
    for rel, data in _local_files(local_reference).items():
        s3.client.put_object(Bucket=s3.bucket, Key=store.key(rel), Body=data)
    assert cli.main(["verify", s3.url("ds")]) == 0
    capsys.readouterr()
    shard = next(rel for rel in s3.listing("ds") if rel.endswith(".mds.zstd"))
    data = bytearray(s3.get("ds", shard))
    data[-1] ^= 0xFF
    s3.client.put_object(Bucket=s3.bucket, Key=store.key(shard), Body=bytes(data))
    assert cli.main(["verify", s3.url("ds")]) == 1  # the second fetch takes the changed object
    assert f"{shard}: xxh64 hash mismatch" in capsys.readouterr().err


def _stamps(s3: S3, prefix: str, listing: dict) -> dict[str, bytes]:
    """Each complete chunk's done.json: it holds the chunk's timings, so a chunk converted again differs."""
    return {rel: s3.get(prefix, rel) for rel in listing if rel.endswith("/done.json")}


@pytest.mark.slow
def test_killed_convert_resumes_to_the_same_dataset(demo, local_reference, s3, tmp_path):
    """Two worker processes (forked while chunks upload), killed, resumed with the same staging folder."""
    staging = tmp_path / "staging"
    args = _convert_args(demo, s3.url("k"), "--staging", str(staging), "--workers", "2")
    listing = _kill_after_first_chunk(s3, "k", args)
    assert ".unimed/plan-p000.json" in listing  # the plan went up before the first chunk
    stamps = _stamps(s3, "k", listing)
    _resume_watching(s3, "k", [*args, "--resume"])
    _assert_equals_reference(s3, "k", local_reference)
    assert _stamps(s3, "k", dict.fromkeys(stamps)) == stamps  # complete chunks: not redone


@pytest.mark.slow
def test_killed_convert_resumes_on_another_machine(demo, local_reference, s3, tmp_path):
    """The staging folder is lost with the machine: the resumed run adopts the chunks the bucket holds."""
    import shutil

    args = _convert_args(demo, s3.url("m"), "--staging", str(tmp_path / "first"))
    listing = _kill_after_first_chunk(s3, "m", args)
    shutil.rmtree(tmp_path / "first")
    shutil.rmtree(tmp_path / "first.report")
    stamps = _stamps(s3, "m", listing)
    _resume_watching(s3, "m", [*args[:-2], "--staging", str(tmp_path / "second"), "--resume"])
    _assert_equals_reference(s3, "m", local_reference)
    assert _stamps(s3, "m", dict.fromkeys(stamps)) == stamps  # adopted, not converted again
    assert (tmp_path / "second.report" / "rejects.jsonl").is_file()


# ----------------------------------------------------------------------------------------- train, eval


@pytest.mark.slow
def test_train_from_an_s3_mix_then_eval_zeroshot_on_s3(demo, s3, tmp_path, capsys, tiny_overrides):
    import yaml

    from unimed.cli import main as unimed_main
    from unimed.ingest import cli
    from unimed.train.config import config_path, load_config
    from unimed.train.trainer import train

    assert cli.main(_convert_args(demo, s3.url("train"))) == 0
    assert (
        cli.main(
            [
                "convert",
                demo["eval_crops"],
                "--out",
                s3.url("eval/demo-modality"),
                "--class-folders",
                "--labels",
                demo["eval_labels"],
                "--source",
                "demo-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    mix = tmp_path / "mix.yaml"
    cache = tmp_path / "stream-cache"
    mix.write_text(yaml.safe_dump({"cache_dir": str(cache), "streams": [{"path": s3.url("train"), "proportion": 1.0}]}))
    run = tmp_path / "run"
    cfg = load_config(
        config_path("demo-cpu"),
        tiny_overrides(
            sets=demo,
            **{
                "data.shards": "[]",
                "data.mix": str(mix),
                "max_duration": "3ba",
                "save_folder": str(run),
                "save_interval": "3ba",
                "autoresume": "false",
                "loss_log": str(tmp_path / "loss.jsonl"),
            },
        ),
    )
    train(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)
    # streaming downloaded the index and shards into the mix's cache_dir: nothing was read from a local copy.
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert any(p.name == "index.json" for p in cached) and any(".mds" in p.name for p in cached)

    ckpt = next(run.glob("ep*-ba3-rank0.pt"))
    capsys.readouterr()
    out = tmp_path / "eval-out"
    assert (
        unimed_main(["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", s3.url("eval"), "--out", str(out)]) == 0
    )
    results = json.loads((out / "zeroshot.json").read_text())
    assert list(results) == ["demo-modality"] and results["demo-modality"]["n"] == 36


def test_training_from_s3_killed_and_resumed_equals_an_uninterrupted_run(demo, s3, tmp_path, tiny_overrides):
    """A run reading an s3:// mix, killed after batch 4 and started again (with an empty stream cache, as on
    a new machine), continues from the batch-3 checkpoint with the loader at the same sample: its losses
    equal an uninterrupted run's."""
    import yaml
    from composer.core import Callback

    from unimed.ingest import cli
    from unimed.train.config import config_path, load_config
    from unimed.train.trainer import train

    class Crash(Callback):
        def batch_end(self, state, logger) -> None:
            if int(state.timestamp.batch.value) == 4:
                raise KeyboardInterrupt("simulated kill")

    assert cli.main(_convert_args(demo, s3.url("train-resume"))) == 0

    def cfg_for(name: str, cache: str | None = None):
        mix = tmp_path / f"{name}-mix.yaml"
        mix.write_text(
            yaml.safe_dump(
                {
                    "cache_dir": str(tmp_path / f"{cache or name}-cache"),
                    "streams": [{"path": s3.url("train-resume"), "proportion": 1.0}],
                }
            )
        )
        return load_config(
            config_path("demo-cpu"),
            tiny_overrides(
                sets=demo,
                **{
                    "data.shards": "[]",
                    "data.mix": str(mix),
                    "max_duration": "6ba",
                    "data.train": "true",
                    "data.shuffle": "true",
                    "model.text.dropout": 0.0,
                    "save_folder": str(tmp_path / f"{name}-ckpt"),
                    "save_interval": "3ba",
                    "loss_log": str(tmp_path / f"{name}.jsonl"),
                },
            ),
        )

    def losses(name: str) -> dict[int, float]:
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows}  # a resumed run re-logs; the last entry wins

    train(cfg_for("ref"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for("run"), extra_callbacks=[Crash()])
    resumed = train(cfg_for("run", cache="new-machine"))  # streaming downloads the shards again
    assert any((tmp_path / "new-machine-cache").rglob("*.mds*"))
    assert int(resumed.state.timestamp.batch) == 6
    expected, got = losses("ref"), losses("run")
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


# --------------------------------------------------------------------------------------------- errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_and_missing_bucket_are_one_line(demo, s3, monkeypatch, tmp_path, capsys, tiny_overrides):
    from unimed.cli import main as unimed_main
    from unimed.ingest import cli

    missing = "s3://no-such-bucket-unimed/ds"
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"cache_dir: {tmp_path / 'c'}\nstreams: [{s3.url('nothing-here')}]\n")
    cases = [
        (cli.main, _convert_args(demo, missing), missing, "does not exist"),
        (cli.main, ["verify", missing], missing, "does not exist"),
        (cli.main, ["verify", s3.url("nothing-here")], s3.url("nothing-here"), "no objects"),
        (unimed_main, ["eval", "zeroshot", "--checkpoint", "x.pt", "--data", missing], missing, "does not exist"),
        (
            unimed_main,
            [
                "train",
                "demo-cpu",
                *tiny_overrides(sets=demo, **{"data.shards": "[]", "data.mix": str(mix)}),
                "--dry-run",
            ],
            s3.url("nothing-here"),
            "no index.json",
        ),
    ]
    for main, argv, url, reason in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and url in err and reason in err, err
        assert "Traceback" not in err

    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    for main, argv in (
        (cli.main, _convert_args(demo, s3.url("x"))),
        (cli.main, ["verify", s3.url("x")]),
        (unimed_main, ["eval", "zeroshot", "--checkpoint", "x.pt", "--data", s3.url("x")]),
    ):
        start = time.monotonic()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and s3.url("x") in err and "cannot reach" in err, err
        assert time.monotonic() - start < 30
    assert not (tmp_path / "cache" / "staging").exists()  # nothing was staged for a store that never answered
