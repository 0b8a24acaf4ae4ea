"""Ingest throughput: ``ingest convert`` against a naive script, in one run, in-stage and whole-process.

Inputs (written once into a scratch folder, reused across configurations):
  (a) a synthetic CT series of 512x512 int16 slices written with pydicom (10,000; --quick 1,000);
  (b) NIfTI volumes (.nii.gz) of 250 such slices (2,000 slices; --quick 500).
Baselines, one process each, what a competent user writes without an engine:
  DICOM: pydicom ``dcmread`` + ``apply_modality_lut`` + a numpy window + PIL JPEG q95 at full size +
  an uncompressed WebDataset-style tar (``NNNN.jpg`` + ``NNNN.txt``);
  NIfTI: each volume loaded once with nibabel ``get_fdata``, a numpy window, PIL JPEG q90, the tar.
Configurations: ``ingest convert`` with 1 and 2 workers (its defaults: JPEG q90 at <=512 px, zstd
MDS with captions, keyed uids and meta). Each is timed twice: in-stage (the library call in a warm
process, imports excluded) and whole-process (``python -m unimed.ingest.cli convert`` against
``python <baseline>``, start-up included). Every configuration runs ``--repeats`` times, interleaved;
the best run of each is reported (a shared machine's bursts hit any run; the best is the code's).

Figures: images per second; ``ingest/baseline`` (1 worker against the single-process baseline: per
core) and ``ingest_2workers/ingest_1worker``, in-stage and ``whole:``-prefixed;
``whole:side_by_side/ingest_1worker``, two independent 1-worker conversions of the two halves of the
input run at the same time against one conversion of all of it (the machine's own 2-process ceiling:
two processes sharing nothing, on a VM whose cores slow each other through shared caches and the host),
and ``whole:ingest_2workers/side_by_side``, how much of that ceiling the 2-worker run reaches; ``startup_s``, the
wall time of a whole-process conversion of one slice; the split of worker time into decode /
transform / encode / write; bytes per image; and ``zstd``: for no compression and levels 1 and 3, the
bytes and milliseconds per image of compressing the converter's shards (the default level is the
one these figures choose).

Slides (``--slides``, on by default): synthetic pyramidal JPEG-tiled TIFFs written with tifffile
(4 slides of 24,576²; --quick 2 of 8,192²), tiled at 0.5 µm/px, 256² tiles: tiles per second of
``ingest convert`` with 1 and 2 workers against a baseline that reads every stored tile of the same
level one by one with tifffile, keeps those with tissue (the same saturation test) and writes PNGs
(ratio ``tiles/baseline``, 1 worker); and ``peak_rss_mb``, the peak resident memory of a process
converting one sparse 100,000² slide, beside that of the same process before converting.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, base_parser, cpu_seconds, peak_rss_mb, process_seconds, processes_seconds  # noqa: E402

UID_KEY = "benchmark-key-0123456789abcdef0123456"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def baseline_dicom(files: list[Path], tar_path: Path) -> tuple[int, int]:
    """The naive DICOM script: pydicom, its modality LUT, a numpy soft-tissue window, PIL q95, a tar."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    n = 0
    with tarfile.open(tar_path, "w") as tar:
        for f in files:
            ds = pydicom.dcmread(f)
            hu = apply_modality_lut(ds.pixel_array, ds)
            img = (np.clip((hu - (40 - 200)) / 400, 0, 1) * 255).astype(np.uint8)
            _add(tar, n, img, "A CT scan.", quality=95)
            n += 1
    return n, tar_path.stat().st_size


def baseline_nifti(files: list[Path], tar_path: Path) -> tuple[int, int]:
    import nibabel as nib

    n = 0
    with tarfile.open(tar_path, "w") as tar:
        for f in files:
            vol = nib.load(f).get_fdata()
            for k in range(vol.shape[2]):
                img = (np.clip((vol[:, :, k] - (40 - 200)) / 400, 0, 1) * 255).astype(np.uint8)
                _add(tar, n, np.rot90(img), "A CT scan.")
                n += 1
    return n, tar_path.stat().st_size


def _add(tar: tarfile.TarFile, n: int, img: np.ndarray, caption: str, quality: int = 90) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    for name, data in ((f"{n:08d}.jpg", buf.getvalue()), (f"{n:08d}.txt", caption.encode())):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


BASELINES = {"dicom": baseline_dicom, "nifti": baseline_nifti}


def baseline_slides(files: list[Path], out: Path, level: int = 1) -> int:
    """Read each stored tile of ``level`` with tifffile, keep tissue tiles, write PNGs; return the count."""
    import tifffile
    from PIL import Image

    from unimed.ingest.sources.slide import saturation

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in files:
        with tifffile.TiffFile(f) as tif:
            page = tif.series[0].levels[level].keyframe
            fh = tif.filehandle
            decode, tables = page.decode, page.jpegtables
            for i, (off, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
                if not count:
                    continue
                fh.seek(off)
                seg, _, shape = decode(fh.read(count), i, jpegtables=tables)
                tile = seg.reshape(shape[-3:])
                if (saturation(tile) > 0.07).mean() >= 0.5:
                    Image.fromarray(tile).save(out / f"{f.stem}_{i}.png")
                    n += 1
    return n


_RSS = """
import json, os, sys
os.environ.setdefault("UNIMED_UID_KEY", "benchmark-key-0123456789abcdef0123456")
from unimed.ingest.convert import ConvertConfig, convert
def hwm():  # VmHWM: peak RSS of this process image (ru_maxrss would include the parent's before exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
base = hwm()
s = convert(ConvertConfig(inputs=[sys.argv[1]], out=sys.argv[2], progress=False), echo=lambda s: None)
print(json.dumps({"tiles": s["images"], "base": base, "peak": hwm()}))
"""


def bench_slides(report: Report, scratch: Path, quick: bool) -> None:
    """Tiles per second (ingest 1 and 2 workers, baseline) and the peak memory of a 100,000² slide."""
    import subprocess

    from unimed.ingest.synthetic import write_slide

    n, side = (2, 8192) if quick else (4, 24576)
    slides = scratch / f"slides_{n}x{side}"
    blobs = [(0.3, 0.35, 0.12), (0.65, 0.6, 0.18)]
    for k in range(n):
        if not (slides / f"s{k}.tif").exists():
            write_slide(slides / f"s{k}.tif", side, side, levels=6, mpp=0.25, blobs=blobs, seed=k)
    files = sorted(slides.glob("*.tif"))
    t0 = time.perf_counter()
    nb = baseline_slides(files, scratch / "slide_pngs")
    tb = time.perf_counter() - t0
    report.add("slides/baseline", tiles=nb, seconds=round(tb, 3), tiles_per_second=round(nb / tb, 2))
    rates = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        s = run_ingest(slides, scratch / f"out_slides_{workers}", workers, "auto", max_tiles=0)
        t = time.perf_counter() - t0
        rates[workers] = s["images"] / t
        report.add(
            f"slides/ingest_{workers}worker",
            tiles=s["images"],
            seconds=round(t, 3),
            tiles_per_second=round(rates[workers], 2),
            bytes_per_tile=s["bytes_per_image"],
        )
    report.ratio("tiles/baseline", rates[1], nb / tb)
    report.ratio("slides:ingest_2workers/ingest_1worker", rates[2], rates[1])
    big = scratch / "big_slide.tif"
    if not big.exists():
        write_slide(big, 100_000, 100_000, levels=7, mpp=0.25, blobs=[(0.5, 0.5, 0.01), (0.2, 0.8, 0.005)])
    shutil.rmtree(scratch / "out_big", ignore_errors=True)
    shutil.rmtree(scratch / "out_big.report", ignore_errors=True)
    out = subprocess.run(
        [sys.executable, "-c", _RSS, str(big), str(scratch / "out_big")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    figs = json.loads(out.stdout.strip().splitlines()[-1])
    report.add(
        "slides/100k_slide",
        tiles=figs["tiles"],
        file_mb=round(big.stat().st_size / 1e6, 1),
        peak_rss_mb=round(figs["peak"], 1),
        rss_before_convert_mb=round(figs["base"], 1),
    )
    report.ratios["peak_rss_mb"] = round(figs["peak"], 1)


def _fresh(out: Path) -> None:
    for p in (out, Path(f"{out}.report")):
        if p.exists():
            shutil.rmtree(p)


def run_ingest(inputs: Path, out: Path, workers: int, modality: str, **kw: object) -> dict:
    from unimed.ingest.convert import ConvertConfig, convert

    _fresh(out)
    cfg = ConvertConfig(inputs=[str(inputs)], out=str(out), workers=workers, modality=modality, progress=False, **kw)  # type: ignore[arg-type]
    return convert(cfg, echo=lambda s: None)


def _env() -> dict[str, str]:
    return {**os.environ, "UNIMED_UID_KEY": UID_KEY, "PYTHONPATH": ROOT}


def _convert_cmd(inputs: Path, out: Path, workers: int, modality: str) -> list[str]:
    """The ``ingest convert`` command line (its defaults but for an explicit level), ``out`` cleared."""
    from unimed.ingest.convert import ConvertConfig

    _fresh(out)
    level = ConvertConfig(inputs=[], out="").compression or "none"
    return [
        sys.executable,
        "-m",
        "unimed.ingest.cli",
        "convert",
        str(inputs),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--modality",
        modality,
        "--no-progress",
        "--compression",
        level,
    ]


def ingest_process(inputs: Path, out: Path, workers: int, modality: str) -> tuple[float, float]:
    """Whole-process wall and CPU seconds of ``ingest convert``."""
    return process_seconds(_convert_cmd(inputs, out, workers, modality), _env())


def halves(inputs: Path, scratch: Path) -> list[Path]:
    """Two folders holding (hard links to) the first and the second half of the files in ``inputs``."""
    files = sorted(p for p in inputs.iterdir() if p.is_file())
    parts = [scratch / f"{inputs.name}_half{i}" for i in (0, 1)]
    for i, part in enumerate(parts):
        if not part.exists():
            part.mkdir()
            for f in files[i * len(files) // 2 : (i + 1) * len(files) // 2]:
                os.link(f, part / f.name)
    return parts


def side_by_side(parts: list[Path], scratch: Path, kind: str, modality: str) -> tuple[float, float]:
    """Wall and CPU seconds of two independent 1-worker ``ingest convert`` processes, one per half of
    the input, run at the same time: what two cores of this machine give two processes that share
    nothing (no scheduler, no merge), the ceiling of any 2-worker run here."""
    cmds = [_convert_cmd(p, scratch / f"outs_{kind}_{i}", 1, modality) for i, p in enumerate(parts)]
    return processes_seconds(cmds, _env())


def baseline_process(kind: str, inputs: Path, tar: Path) -> tuple[float, float]:
    """Whole-process wall and CPU seconds of the baseline script."""
    return process_seconds(
        [sys.executable, os.path.abspath(__file__), "--baseline-only", kind, str(inputs), str(tar)], _env()
    )


def zstd_levels(out: Path, images: int) -> dict[str, dict[str, float]]:
    """Bytes and ms per image of compressing a dataset's shards with no zstd, level 1 and level 3."""
    from unimed.shards import compress, decompress, read_index, shard_file

    raws = []
    for shard in read_index(str(out))["shards"]:
        data = (out / shard_file(shard)["basename"]).read_bytes()
        raws.append(decompress(shard.get("compression") if shard.get("zip_data") else None, data))
    figs = {}
    for level in (None, "zstd:1", "zstd:3"):
        best, size = float("inf"), 0
        for _ in range(3):
            t0 = time.perf_counter()
            size = sum(len(compress(level, r)) for r in raws)
            best = min(best, time.perf_counter() - t0)
        figs[level or "none"] = {
            "bytes_per_image": round(size / images, 1),
            "ms_per_image": round(best / images * 1e3, 4),
        }
    return figs


def _cache(files: list[Path]) -> None:
    """Read the inputs (untimed) so every configuration starts from the page cache: this machine's
    kernel reclaims cold cached pages within seconds, and a run that reads from disk measures the disk."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 22):
                pass


def bench_kind(report: Report, kind: str, inputs: Path, scratch: Path, repeats: int) -> None:
    """Baseline and ingest (1 and 2 workers), in-stage and whole-process, ``repeats`` times interleaved."""
    files = sorted(p for p in inputs.iterdir() if p.is_file())
    parts = halves(inputs, scratch) if len(files) > 1 else []
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    summaries: dict[int, dict] = {}
    nb = tar_bytes = 0

    cores: dict[str, float] = {}  # CPU seconds over wall seconds of the best run: the cores it got

    def keep(key: str, wall: float, used: float) -> None:
        if wall < best.get(key, 1e9):
            best[key], cores[key] = wall, used / wall
        cpu[key] = min(cpu.get(key, 1e9), used)

    for _ in range(repeats):  # interleaved: a burst of load on the machine hits every configuration alike
        _cache(files)
        c0, t0 = cpu_seconds(), time.perf_counter()
        nb, tar_bytes = BASELINES[kind](files, scratch / f"baseline_{kind}.tar")
        keep("baseline", time.perf_counter() - t0, cpu_seconds() - c0)
        for workers in (1, 2):
            _cache(files)
            c0, t0 = cpu_seconds(), time.perf_counter()
            summaries[workers] = run_ingest(inputs, scratch / f"out_{kind}_{workers}", workers, "ct")
            keep(f"ingest_{workers}", time.perf_counter() - t0, cpu_seconds() - c0)
        _cache(files)
        keep("whole_baseline", *baseline_process(kind, inputs, scratch / f"baseline_{kind}_p.tar"))
        for workers in (1, 2):
            _cache(files)
            keep(f"whole_ingest_{workers}", *ingest_process(inputs, scratch / f"outp_{kind}_{workers}", workers, "ct"))
        if parts:
            _cache(files)
            keep("whole_side_by_side", *side_by_side(parts, scratch, kind, "ct"))
    rate = {k: nb / v for k, v in best.items()}
    report.add(
        f"{kind}/baseline",
        images=nb,
        seconds=round(best["baseline"], 3),
        images_per_second=round(rate["baseline"], 1),
        bytes_per_image=round(tar_bytes / nb, 1),
        cpu_ms_per_image=round(cpu["baseline"] / nb * 1e3, 3),
        whole_process_seconds=round(best["whole_baseline"], 3),
        cores=round(cores["baseline"], 2),
    )
    for workers in (1, 2):
        s = summaries[workers]
        split = s["worker_seconds"]
        busy = sum(split.get(k, 0.0) for k in ("decode", "transform", "encode", "write"))
        report.add(
            f"{kind}/ingest_{workers}worker",
            images=s["images"],
            chunks=s["chunks"],
            seconds=round(best[f"ingest_{workers}"], 3),
            images_per_second=round(rate[f"ingest_{workers}"], 1),
            whole_process_seconds=round(best[f"whole_ingest_{workers}"], 3),
            cpu_ms_per_image=round(cpu[f"ingest_{workers}"] / max(s["images"], 1) * 1e3, 3),
            cores=round(cores[f"ingest_{workers}"], 2),
            whole_cores=round(cores[f"whole_ingest_{workers}"], 2),
            bytes_per_image=s["bytes_per_image"],
            shard_bytes_per_image=round(s["shard_bytes"] / max(s["images"], 1), 1),
            time_split={k: round(split.get(k, 0.0) / busy, 3) for k in ("decode", "transform", "encode", "write")}
            if busy
            else {},
        )
    for prefix, b, one, two in (
        ("", "baseline", "ingest_1", "ingest_2"),
        ("whole:", "whole_baseline", "whole_ingest_1", "whole_ingest_2"),
    ):
        report.ratio(f"{prefix}{kind}:ingest/baseline", rate[one], rate[b])
        report.ratio(f"{prefix}{kind}:ingest_2workers/ingest_1worker", rate[two], rate[one])
        # Per core by CPU time: what the wall ratio reads on a quiet machine (both single-process).
        report.ratio(f"cpu:{prefix}{kind}:ingest/baseline", cpu[b], cpu[one])
    if kind == "dicom":
        from unimed.ingest.convert import ConvertConfig

        report.add(
            "zstd",
            default=ConvertConfig(inputs=[], out="").compression,
            **zstd_levels(scratch / "out_dicom_1", summaries[1]["images"]),
        )
    if parts:  # the machine's own 2-process ceiling, and how much of it the 2-worker run reaches.
        report.ratio(f"whole:{kind}:side_by_side/ingest_1worker", rate["whole_side_by_side"], rate["whole_ingest_1"])
        report.ratio(f"whole:{kind}:ingest_2workers/side_by_side", rate["whole_ingest_2"], rate["whole_side_by_side"])
        report.add(
            f"{kind}/side_by_side",
            what="two independent 1-worker conversions, one per half of the input, at the same time",
            whole_process_seconds=round(best["whole_side_by_side"], 3),
            cores=round(cores["whole_side_by_side"], 2),
            cpu_ms_per_image=round(cpu["whole_side_by_side"] / nb * 1e3, 3),
        )


def bench_volumes(report: Report, scratch: Path, n: int, n_nifti: int, size: int, repeats: int) -> None:
    from unimed.ingest.synthetic import write_ct_series, write_nifti_volumes

    series, vols = scratch / f"ct_series_{n}", scratch / f"nifti_{n_nifti}"
    per_vol = min(250, n_nifti)
    if not series.exists():
        write_ct_series(series, n, size=size)
    if not vols.exists():
        write_nifti_volumes(vols, max(1, n_nifti // per_vol), per_vol, size=size)
    # Warm-up outside the timings: first-call costs, page cache.
    warm = scratch / "warm"
    warm.mkdir(exist_ok=True)
    for f in sorted(series.iterdir())[:4]:
        shutil.copy(f, warm / f.name)
    run_ingest(warm, scratch / "out_warm", 1, "ct")
    baseline_dicom(sorted(warm.iterdir()), scratch / "warm.tar")
    one = scratch / "one"
    one.mkdir(exist_ok=True)
    shutil.copy(sorted(series.iterdir())[0], one / "slice.dcm")
    startup = min(ingest_process(one, scratch / "out_startup", 1, "ct")[0] for _ in range(3))
    report.add("startup", seconds=round(startup, 3), what="whole-process ingest convert of one slice")
    report.ratios["startup_s"] = round(startup, 3)
    bench_kind(report, "dicom", series, scratch, repeats)
    bench_kind(report, "nifti", vols, scratch, repeats)
    # The headline keys the issue names: the DICOM series figures.
    for prefix in ("", "whole:"):
        report.ratios[f"cpu:{prefix}ingest/baseline"] = report.ratios[f"cpu:{prefix}dicom:ingest/baseline"]
        report.ratios[f"{prefix}ingest/baseline"] = report.ratios[f"{prefix}dicom:ingest/baseline"]
        report.ratios[f"{prefix}ingest_2workers/ingest_1worker"] = report.ratios[
            f"{prefix}dicom:ingest_2workers/ingest_1worker"
        ]
    for key in ("side_by_side/ingest_1worker", "ingest_2workers/side_by_side"):
        if f"whole:dicom:{key}" in report.ratios:
            report.ratios[f"whole:{key}"] = report.ratios[f"whole:dicom:{key}"]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--baseline-only"]:  # the whole-process baseline: this script, nothing else imported
        kind, inputs, tar = argv[1:4]
        BASELINES[kind](sorted(p for p in Path(inputs).iterdir() if p.is_file()), Path(tar))
        return {}
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=None, help="DICOM slices (default 10000; quick 1000)")
    parser.add_argument("--nifti-slices", type=int, default=None, help="NIfTI slices (default 2000; quick 500)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved (best kept)")
    parser.add_argument("--no-slides", dest="slides", action="store_false", help="skip the whole-slide section")
    parser.add_argument("--no-volumes", dest="volumes", action="store_false", help="skip the DICOM/NIfTI section")
    parser.add_argument("--scratch", default=None, help="folder for inputs and outputs (default: a temp folder)")
    args = parser.parse_args(argv)
    n = args.slices or (1000 if args.quick else 10000)
    n_nifti = args.nifti_slices or (500 if args.quick else 2000)
    os.environ.setdefault("UNIMED_UID_KEY", UID_KEY)
    report = Report("ingest", args.quick)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="unimed-bench-"))
    try:
        if args.volumes:
            bench_volumes(report, scratch, n, n_nifti, args.size, args.repeats)
        if args.slides:
            bench_slides(report, scratch, args.quick)
        report.add(
            "memory",
            peak_rss_mb_main=round(peak_rss_mb(), 1),
            peak_rss_mb_children=round(peak_rss_mb(children=True), 1),
        )
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return report.finish(args.json)


if __name__ == "__main__":
    main()
