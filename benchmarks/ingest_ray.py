"""Ingest on Ray: ``ingest convert --engine ray`` against the plain 2-worker run, whole-process.

Input: a synthetic CT series of 512x512 int16 slices written with pydicom into a patient folder
(10,000 slices; --quick 1,000), read into the page cache before each run. Three configurations, each
``python -m unimed.ingest.cli convert`` as its own process, start-up included, ``--repeats`` times
interleaved, the best run of each kept:
  local         ``--workers 2`` (the reference);
  ray           ``--engine ray`` with no cluster running: the run starts a 2-CPU Ray cluster on this
                machine and stops it (what one machine pays for asking for Ray);
  ray_joined    ``--engine ray --address ADDR``, joining a 2-CPU cluster this script started before
                (what a run on a standing cluster pays).
Figures: wall seconds and images per second of each; ``whole:ray/local_2workers`` and
``whole:ray_joined/local_2workers``, the wall-time ratios (the overhead of the engine: 1.0 is none);
``ray_fixed_s``, the wall time of a joined Ray run of one slice less that of a local one (the fixed
cost per run). Each Ray run's dataset is checked byte for byte against the local run's (index.json
and every shard file).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, base_parser, process_seconds  # noqa: E402
from ingest import UID_KEY, _cache, _env, _fresh  # noqa: E402


def convert_process(inputs: Path, out: Path, *extra: str) -> float:
    """Whole-process wall seconds of ``ingest convert`` (CPU is not comparable: Ray's workers are the
    raylet's children, not the command's)."""
    _fresh(out)
    return process_seconds(
        [sys.executable, "-m", "unimed.ingest.cli", "convert", str(inputs), "--out", str(out), "--no-progress", *extra],
        _env(),
    )[0]


def same_dataset(a: Path, b: Path) -> bool:
    """index.json and every shard file of ``a`` and ``b`` equal byte for byte."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.name == "index.json" or ".mds" in p.name)
    others = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.name == "index.json" or ".mds" in p.name)
    return names == others and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=None, help="DICOM slices (default 10000; quick 1000)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved (best kept)")
    parser.add_argument("--scratch", default=None, help="folder for inputs and outputs (default: a temp folder)")
    args = parser.parse_args(argv)
    import ray

    from unimed.ingest.synthetic import write_ct_series

    n = args.slices or (1000 if args.quick else 10000)
    os.environ.setdefault("UNIMED_UID_KEY", UID_KEY)
    report = Report("ingest_ray", args.quick)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="unimed-bench-ray-"))
    try:
        series = scratch / f"patients_{n}" / "PT-0001 Doe^John" / "CT 2026-01-01"
        if not series.exists():
            write_ct_series(series, n, size=args.size)
        inputs = series.parents[1]
        one = scratch / "one" / "PT-0002 Roe^Jane"
        one.mkdir(parents=True, exist_ok=True)
        shutil.copy(sorted(series.iterdir())[0], one / "slice.dcm")
        files = sorted(series.iterdir())
        configs = {"local": ("--workers", "2"), "ray": ("--engine", "ray")}
        best: dict[str, float] = {}
        same = True
        for _ in range(args.repeats):  # interleaved: a burst of load on the machine hits every configuration alike
            for name, extra in configs.items():  # no cluster runs yet: "ray" starts its own
                _cache(files)
                best[name] = min(best.get(name, 1e9), convert_process(inputs, scratch / f"out_{name}", *extra))
            same &= same_dataset(scratch / "out_local", scratch / "out_ray")
        # "local": its own cluster, even where `ray start` left one running on this machine.
        ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            address = ctx.address_info["address"]
            joined = ("--engine", "ray", "--address", address)
            for _ in range(args.repeats):
                _cache(files)
                best["ray_joined"] = min(
                    best.get("ray_joined", 1e9), convert_process(inputs, scratch / "out_ray_joined", *joined)
                )
                same &= same_dataset(scratch / "out_local", scratch / "out_ray_joined")
            fixed = {
                name: min(convert_process(one, scratch / f"one_{name}", *extra) for _ in range(3))
                for name, extra in (("local", ("--workers", "2")), ("ray_joined", joined))
            }
        finally:
            ray.shutdown()
        for name, seconds in best.items():
            report.add(name, images=n, whole_process_seconds=round(seconds, 3), images_per_second=round(n / seconds, 1))
        report.add("one_slice", local_s=round(fixed["local"], 3), ray_joined_s=round(fixed["ray_joined"], 3))
        report.add("identical", ray_and_local=same)
        report.ratio("whole:ray/local_2workers", best["ray"], best["local"])
        report.ratio("whole:ray_joined/local_2workers", best["ray_joined"], best["local"])
        report.ratios["ray_fixed_s"] = round(fixed["ray_joined"] - fixed["local"], 3)
        if not same:
            raise SystemExit("ingest_ray: a Ray run's dataset differs from the local run's")
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return report.finish(args.json)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"  ({time.perf_counter() - start:.0f} s in all)")
