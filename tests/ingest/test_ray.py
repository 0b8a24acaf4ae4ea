"""``--engine ray``: one Ray task a chunk on a real local cluster, against the local 2-worker run.

The cluster is Ray's own (``ray.init(num_cpus=2)`` in this process); the conversions are the CLI in
their own processes, joining it with ``--address``. A run whose chunk task is killed midway (SIGKILL of
the Ray worker process once the chunk has written a shard, as an OOM killer would) is retried by Ray
and must still write the bytes of the local run. The chunk step every engine shares is run again over
a finished and over a half-written chunk; without Ray, ``--engine ray`` is one line naming the extra.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unimed.ingest.synthetic import write_ct_series
from unimed.samples import pydicom_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.dist

#: Files whose bytes depend on the run, not on the dataset: timings and the run lock.
RUN_FILES = {"summary.json", "done.json", "lock"}


def _env() -> dict[str, str]:
    """The environment of a conversion here: a fixed uid key (module fixtures run before the per-test
    one sets it), and what ``ray.init`` set for its children (the cluster's token authentication)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "UNIMED_UID_KEY": "unimed-test-key-0123456789abcdef0123"}


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray cluster for the module; its address."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'unimed[ray]')")
    # "local": a new cluster of its own, even where `ray start` left one running on this machine.
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    """Patient folders: pydicom's CT and MR, a truncated copy of that MR (the same SOP instance: a
    reject), two synthetic CT series."""
    root = tmp_path_factory.mktemp("patients")
    for folder, name in (
        ("PT-0001 Doe^John/CT 2019-03-02", "CT_small.dcm"),
        ("PT-0002 Roe^Jane/MR head", "MR_small.dcm"),
        ("PT-0003 Smith^Ann/MR", "MR_truncated.dcm"),
    ):
        (root / folder).mkdir(parents=True)
        shutil.copy(pydicom_dir() / name, root / folder / name)
    write_ct_series(root / "PT-0004 Lee^Kim" / "CT chest", 14, size=64, seed=1)
    write_ct_series(root / "PT-0005 Diaz^Luis" / "CT 1", 14, size=64, seed=2)
    return root


def _cli(*args: str, timeout: float = 240) -> tuple[int, list[str], str]:
    """Run ``ingest`` in its own process; its exit code, the heavy modules it loaded, its stderr."""
    code = (
        "import sys, json\nfrom unimed.ingest import cli\n"
        f"rc = cli.main({list(args)!r})\n"
        "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'streaming', 'composer', 'ray'})]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.stdout.strip(), proc.stderr
    rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, heavy, proc.stderr


def _convert(src: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", str(src), "--out", str(out), "--chunk-mb", "0.02", "--no-progress", *extra]


def _tree(out: Path) -> dict[str, bytes]:
    """Every file of a dataset folder and its report folder, but for the run's own (timings, lock)."""
    files = {}
    for base in (out, Path(f"{out}.report")):
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.name not in RUN_FILES:
                files[f"{base.name[len(out.name) :]}/{p.relative_to(base)}"] = p.read_bytes()
    return files


def _rejects(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if line.startswith("reject "))


@pytest.fixture(scope="module")
def local(patients, tmp_path_factory):
    """The reference: the same inputs converted by 2 local worker processes."""
    out = tmp_path_factory.mktemp("local") / "out"
    rc, heavy, stderr = _cli(*_convert(patients, out, "--workers", "2"))
    assert rc == 0, stderr
    assert "ray" not in heavy  # a local run never loads Ray
    return out, stderr


def test_ray_run_writes_the_bytes_of_a_two_worker_run(cluster, patients, local, tmp_path):
    out = tmp_path / "ray"
    rc, heavy, stderr = _cli(*_convert(patients, out, "--engine", "ray", "--address", cluster))
    assert rc == 0, stderr
    assert heavy == ["ray"]  # Ray, and through it no torch, transformers, streaming or composer
    ref, ref_stderr = local
    want, got = _tree(ref), _tree(out)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []  # index.json, every shard, rejects, plan: byte for byte
    index = json.loads((out / "index.json").read_text())
    assert len(index["shards"]) >= 8 and sum(s["samples"] for s in index["shards"]) == 30
    # A bad input is a reject line on stderr and in the rejects files, as in the local run.
    assert _rejects(stderr) == _rejects(ref_stderr) and len(_rejects(stderr)) == 1
    assert "Traceback" not in stderr


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _kill_a_chunk_task_midway(proc: subprocess.Popen, out: Path, timeout: float = 120) -> str | None:
    """SIGKILL the first Ray worker seen running a chunk task that has written a shard; its chunk.

    Ray titles a worker ``ray::<task name>`` while it runs a task. Its worker processes (``ray::...``,
    idle ones too) are listed every 50 ms and their titles read in between every half millisecond,
    so a task of a few milliseconds is caught running.
    """
    deadline = time.monotonic() + timeout
    workers: list[int] = []
    listed = 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        if time.monotonic() - listed > 0.05:
            workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _title(int(p)).startswith("ray::")]
            listed = time.monotonic()
        for pid in workers:
            title = _title(pid)
            if (
                title.startswith("ray::unimed-chunk ")
                and any((out / f"{title.split()[-1]}.tmp").glob("shard.*"))
                and _title(pid) == title
            ):
                os.kill(pid, signal.SIGKILL)  # the worker dies mid-chunk, as under an OOM killer
                return title.split()[-1]
        time.sleep(0.0005)  # leave the two cores to Ray's workers
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers through /proc")
def test_a_chunk_task_killed_midway_is_retried_and_the_result_is_the_same(cluster, tmp_path):
    src = tmp_path / "PT-0009 Roe^Max" / "CT 2020-01-01"
    write_ct_series(src, 64, size=512, seed=3)
    ref = tmp_path / "local"
    small = ("--chunk-mb", "64", "--size-limit", "100kb")  # 8 chunks of 8 slices, a shard every 2 or 3
    rc, _, stderr = _cli(*_convert(src, ref, "--workers", "2", *small))
    assert rc == 0, stderr
    out = tmp_path / "ray"
    args = _convert(src, out, "--engine", "ray", "--address", cluster, *small)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from unimed.ingest import cli; raise SystemExit(cli.main({args!r}))"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = _kill_a_chunk_task_midway(proc, out)
    partial = killed is not None and (out / f"{killed}.tmp").is_dir() and not (out / killed).exists()
    stdout, stderr = proc.communicate(timeout=240)
    assert killed, "no chunk task was caught running: make the chunks bigger"
    assert partial  # the killed attempt left shards in its .tmp folder and no chunk: the retry redid it
    assert len(json.loads((out / ".unimed" / "plan-p000.json").read_text())["chunks"]) == 8
    assert proc.returncode == 0, stderr
    assert _tree(out) == _tree(ref)
    assert not list(out.glob("*.tmp"))


def test_without_ray_the_error_names_the_extra(tmp_path):
    """Ray missing (kept from import for this process alone): one line naming the extra, no folder made."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_dir() / "CT_small.dcm", src)
    out = tmp_path / "out"
    code = (
        "import sys\nsys.modules['ray'] = None  # import ray now fails, as where it is not installed\n"
        "from unimed.ingest import cli\n"
        f"raise SystemExit(cli.main({_convert(src, out, '--engine', 'ray')!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ingest: error: --engine ray needs Ray: pip install 'unimed[ray]'"]
    assert not out.exists()
    from unimed.ingest import cli

    assert cli.main(_convert(src, out, "--address", "auto")) == 2  # --address belongs to --engine ray


def test_a_chunk_run_again_keeps_its_finished_folder_or_starts_clean(patients, tmp_path):
    """The one chunk step of every engine, run twice (a task retried after it had finished), then after
    a death midway (a folder without done.json, a stale .tmp): the same shard bytes each time."""
    from unimed.ingest.convert import ConvertConfig, convert_chunk, plan
    from unimed.ingest.sources.base import Options
    from unimed.ingest.writer import ChunkSpec, WriteOptions

    out, report = tmp_path / "out", tmp_path / "report"
    tasks, _ = plan(ConvertConfig(inputs=[str(patients)], out=str(out)), Options())
    spec = ChunkSpec("p000-c00000", tasks)
    args = (str(out), spec, Options(), WriteOptions(), b"unimed-test-key-0123456789abcdef0123")
    folder = out / spec.name

    def run() -> tuple[dict, list, dict[str, bytes]]:
        heard: list = []
        stats = convert_chunk(*args, report=lambda n, rejects: heard.append((n, rejects)), report_dir=str(report))
        return stats, heard, {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    first, heard, files = run()
    assert first["images"] == 30 and len(heard) == len(tasks)
    again, heard_again, files_again = run()  # kept, not redone: done.json's timings are the first run's
    assert again == first and files_again == files
    assert len(heard_again) == len(tasks) and sum(n for n, _ in heard_again) == 30
    assert [r for _, rs in heard_again for r in rs] == [r for _, rs in heard for r in rs]  # with their paths
    (folder / "done.json").unlink()  # a folder that never finished, beside a stale attempt
    (out / f"{spec.name}.tmp").mkdir()
    (out / f"{spec.name}.tmp" / "shard.00000.mds.zstd").write_bytes(b"partial")
    redone, _, files_redone = run()
    assert redone["images"] == 30 and not (out / f"{spec.name}.tmp").exists()
    assert {k: v for k, v in files_redone.items() if k != "done.json"} == {
        k: v for k, v in files.items() if k != "done.json"
    }
