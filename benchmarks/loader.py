"""Loader benchmark: images per second to 224x224 image tensors, four ways over the same images.

1. ``loader``: unimed.streaming exactly as the trainer builds it (``build_dataloader``; the trainer
   wraps it in a Composer ``DataSpec``): DALI nvJPEG on a GPU, else decode in the workers (reduced
   DCT scale, crop, resize, flip); uint8 batches, normalized later by the model on the device.
   ``rss_end_mb`` is the main process's resident memory at the end of the epoch (goal: 600 MB).
2. ``pil``: the same MDS shards through a stock ``StreamingDataset``, decoded by PIL and augmented by
   torchvision in a ``DataLoader`` with the same number of workers.
3. ``webdataset``: the reference system's pipeline: the same images in uncompressed WebDataset-style
   tars (``{key}.jpg``/``.png`` + ``{key}.json``), read with ``tarfile``, PIL + torchvision.
4. ``decode_ceiling``: decoding alone (DALI's decoder, all threads), images already in memory.

Each run also reports ``cpu_ms_per_image`` (CPU time of the process and its workers over the images
delivered), and the ``cpu:`` ratios compare those (a baseline's ms·core an image over the loader's):
on a machine shared with other jobs they move far less than the images/s ratios.

Each configuration runs in its own process (clean peak memory, no shared-memory reuse), ``--repeats``
times, interleaved; the median run is reported. Throughput excludes the first batch, whose latency
is reported as ``ttfb_s``. Run:
``python benchmarks/loader.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Report, base_parser, cpu_seconds, peak_rss_mb  # noqa: E402

__all__ = ["main"]

SHARE = {"xray": 0.3, "ct": 0.2, "mri": 0.15, "pathology": 0.15, "fundus": 0.1, "ultrasound": 0.1}
CONFIGS = ("loader", "pil", "webdataset", "decode_ceiling")


def prepare(data: str, images: int, size: int) -> tuple[str, str, str]:
    """Write (once) the synthetic shards, their tar copy and a tokenizer; return the three paths."""
    from unimed.streaming.shards import iter_samples
    from unimed.streaming.synthetic import SyntheticSpec, write_synthetic_shards
    from unimed.streaming.tokenizer import train_tokenizer

    root = os.path.join(data, f"n{images}-s{size}")
    shards, tars, tok = (os.path.join(root, d) for d in ("mds", "tar", "tokenizer"))
    if not os.path.isfile(os.path.join(root, "done")):
        counts = {m: max(1, round(images * p)) for m, p in SHARE.items()}
        spec = SyntheticSpec(counts=counts, size=size, png_fraction=0.1, seed=7, size_limit=1 << 26)
        t0 = time.perf_counter()
        write_synthetic_shards(shards, spec, processes=os.cpu_count() or 1)
        _write_tars(iter_samples(shards), tars)
        train_tokenizer(shards, tok, vocab_size=1000)
        _decompress_in_place(shards)
        with open(os.path.join(root, "done"), "w") as fh:
            fh.write(f"{time.perf_counter() - t0:.1f}s\n")
    return shards, tars, tok


def _write_tars(samples, out: str, per_tar: int = 1000) -> None:
    import io

    os.makedirs(out, exist_ok=True)
    tar, n = None, 0
    for sample in samples:
        if n % per_tar == 0:
            if tar:
                tar.close()
            tar = tarfile.open(os.path.join(out, f"shard-{n // per_tar:05d}.tar"), "w")  # uncompressed
        ext = "png" if sample["meta"]["codec"] == "png" else "jpg"
        meta = json.dumps({k: sample[k] for k in ("captions", "modality", "labels", "uid")}).encode()
        for name, payload in ((f"{n:08d}.{ext}", sample["image"]), (f"{n:08d}.json", meta)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        n += 1
    if tar:
        tar.close()


def _decompress_in_place(root: str) -> None:
    """Do once what StreamingDataset does on first read of local zstd shards, so no run pays it."""
    from streaming.base.compression import decompress

    from unimed.streaming.shards import find_mds_dirs

    for d in find_mds_dirs(root):
        for info in json.load(open(os.path.join(d, "index.json")))["shards"]:
            raw = os.path.join(d, info["raw_data"]["basename"])
            if info.get("zip_data") and not os.path.exists(raw):
                with open(os.path.join(d, info["zip_data"]["basename"]), "rb") as fh:
                    data = decompress(info["compression"], fh.read())
                with open(raw, "wb") as fh:
                    fh.write(data)


def _measure(batches, batch_images) -> dict[str, float]:
    """Time to first batch, then images/s over the rest; and the CPU time per image of the whole epoch
    (this process and its workers, reaped when the epoch ends; start-up included), which other jobs on
    a shared machine disturb far less than the wall clock."""
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    it = iter(batches)
    first = next(it)
    t_first = time.perf_counter()
    n = 0
    for batch in it:
        n += batch_images(batch)
    elapsed = time.perf_counter() - t_first
    total = n + batch_images(first)
    del first, it
    cpu = cpu_seconds() - cpu0
    return {
        "ttfb_s": round(t_first - start, 3),
        "images_per_s": round(n / elapsed, 1),
        "images": n,
        "cpu_ms_per_image": round(1000 * cpu / total, 3),
    }


def run_one(name: str, shards: str, tars: str, tok: str, workers: int, batch: int) -> dict[str, Any]:
    """Measure one configuration in this process (the baselines' module, which imports the stock
    ``streaming`` package whole, only for the baselines: it is not the loader's memory)."""
    if name != "loader":
        from benchmarks import loader_baselines as bl

    if name == "loader":
        from unimed.streaming.loader import LoaderConfig, build_dataloader

        cfg = LoaderConfig(
            shards=sorted(os.path.join(shards, m) for m in SHARE),
            tokenizer=tok,
            batch_size=batch,
            num_workers=workers,
            dali_threads=workers + 1,  # one spare: the proxy's feed thread blocks on outputs between feeds
            image_size=224,
            drop_last=False,
        )
        loader = build_dataloader(cfg)
        out = _measure(loader, lambda b: b["image"].shape[0])
        out["rss_end_mb"] = _status_mb("VmRSS")  # at the end of the epoch, the loader still alive
        server = getattr(loader, "dali_server", None)
        out["device"] = "gpu" if server is not None and server._pipe.device_id is not None else "cpu"
        out["dali_imported"] = any(m.startswith("nvidia.dali") for m in sys.modules)
    elif name == "pil":
        out = _measure(bl.pil_loader(shards, tok, workers, batch), lambda b: b[0].shape[0])
    elif name == "webdataset":
        out = _measure(bl.tar_loader(tars, tok, workers, batch), lambda b: b[0].shape[0])
    elif name == "decode_ceiling":
        out = bl.decode_ceiling(shards, threads=workers, batch=batch)
    else:
        raise ValueError(f"unknown configuration {name!r}")
    out["peak_rss_main_mb"] = _status_mb("VmHWM") or round(peak_rss_mb(), 1)
    out["peak_rss_worker_mb"] = round(peak_rss_mb(children=True), 1)
    return out


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (0 where /proc is missing). ``ru_maxrss`` would
    carry a forking parent's size over ``exec``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="images in the shards (20000; --quick 2000)")
    parser.add_argument("--size", type=int, default=512, help="stored longer side (the converter's default)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default=os.environ.get("UNIMED_BENCH_DATA", "/tmp/unimed-bench-loader"))
    parser.add_argument("--repeats", type=int, default=None, help="runs per configuration (3; full: 2)")
    parser.add_argument("--only", choices=CONFIGS, help=argparse_suppress())
    args = parser.parse_args(argv)
    images = args.images or (2000 if args.quick else 20000)
    shards, tars, tok = prepare(args.data, images, args.size)
    if args.only:  # child process: one configuration, JSON on the last line
        print(json.dumps(run_one(args.only, shards, tars, tok, args.workers, args.batch_size)))
        return {}
    report = Report("loader", args.quick)
    repeats = args.repeats or (3 if args.quick else 2)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for _ in range(repeats):  # interleaved, so a busy spell on a shared machine hits every config
        for name in CONFIGS:
            cmd = [sys.executable, os.path.abspath(__file__), "--only", name, "--images", str(images)]
            cmd += ["--size", str(args.size), "--workers", str(args.workers)]
            cmd += ["--batch-size", str(args.batch_size), "--data", args.data]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for name, results in runs.items():
        median = sorted(results, key=lambda r: r["images_per_s"])[len(results) // 2]
        report.add(name, **median, all_images_per_s=[r["images_per_s"] for r in results])
    report.add(
        "setup",
        images=images,
        stored_size=args.size,
        workers=args.workers,
        batch_size=args.batch_size,
        repeats=repeats,
    )
    ips = {k: report.results[k]["images_per_s"] for k in CONFIGS}
    report.ratio("loader/pil", ips["loader"], ips["pil"])
    report.ratio("loader/webdataset", ips["loader"], ips["webdataset"])
    report.ratio("loader/decode_ceiling", ips["loader"], ips["decode_ceiling"])
    cpu = {k: report.results[k].get("cpu_ms_per_image") for k in CONFIGS}
    if all(cpu.values()):  # the same comparisons by CPU time an image (baseline's over the loader's)
        for k in ("pil", "webdataset", "decode_ceiling"):
            report.ratio(f"cpu: {k}/loader", cpu[k], cpu["loader"])
    report.add("loader_memory", rss_end_mb=report.results["loader"].get("rss_end_mb"), goal_mb=600)
    return report.finish(args.json)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
