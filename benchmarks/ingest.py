"""Ingest throughput: ``ingest convert`` against the reference system's way, in one run.

Inputs (written once into a scratch folder, reused across configurations):
  (a) a synthetic CT series of 512x512 int16 slices written with pydicom (2,000; --quick 200);
  (b) NIfTI volumes (.nii.gz) holding the same number of slices of the same size.
Configurations: ``ingest convert`` with 1 and 2 workers, and the baseline, which does what the
reference system's preprocessing scripts do: read each file with pydicom (or each volume once with
nibabel), window, encode with PIL (JPEG, quality 90, full size), and write an uncompressed
WebDataset-style tar (``NNNN.jpg`` + ``NNNN.txt``), in one process.

Figures: images per second, the ratio ``ingest/baseline`` (1 worker against the baseline: the same
CPU budget) and ``ingest_2workers/ingest_1worker``, the split of worker time into decode / transform /
encode / write, and bytes per image (JPEG payload and on-disk shard bytes).

Slides (``--slides``, on by default): synthetic pyramidal JPEG-tiled TIFFs written with tifffile
(4 slides of 24,576²; --quick 2 of 8,192²), tiled at 0.5 µm/px, 256² tiles: tiles per second of
``ingest convert`` with 1 and 2 workers against a baseline that reads every stored tile of the same
level one by one with tifffile, keeps those with tissue (the same saturation test) and writes PNGs
(ratio ``tiles/baseline``, 1 worker); and ``peak_rss_mb``, the peak resident memory of a process
converting one sparse 100,000² slide, beside that of the same process before converting.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, base_parser, peak_rss_mb  # noqa: E402


def baseline_dicom(files: list[Path], tar_path: Path) -> tuple[int, int]:
    import pydicom

    n = 0
    with tarfile.open(tar_path, "w") as tar:
        for f in files:
            ds = pydicom.dcmread(f)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            img = (np.clip((hu - (40 - 200)) / 400, 0, 1) * 255).astype(np.uint8)
            _add(tar, n, img, "A CT scan.")
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


def _add(tar: tarfile.TarFile, n: int, img: np.ndarray, caption: str) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    for name, data in ((f"{n:08d}.jpg", buf.getvalue()), (f"{n:08d}.txt", caption.encode())):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


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
import streaming, torch  # noqa: F401
def hwm():  # VmHWM: peak RSS of this process image (ru_maxrss would include the parent's before exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
base = hwm()
s = convert(ConvertConfig(inputs=[sys.argv[1]], out=sys.argv[2], progress=False), echo=lambda s: None)
print(json.dumps({"tiles": s["images"], "base": base, "peak": hwm()}))
"""


def bench_slides(report: Report, scratch: Path, quick: bool) -> None:
    """Tiles per second (ingest 1 and 2 workers, baseline) and the peak memory of a 100,000² slide."""
    import json
    import subprocess

    import streaming  # noqa: F401  (imported outside the timings, as in the warm-up above)

    from unimed.ingest.synthetic import write_slide

    n, side = (2, 8192) if quick else (4, 24576)
    slides = scratch / "slides"
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
        report.add(f"slides/ingest_{workers}worker", tiles=s["images"], seconds=round(t, 3),
                   tiles_per_second=round(rates[workers], 2), bytes_per_tile=s["bytes_per_image"])
    report.ratio("tiles/baseline", rates[1], nb / tb)
    report.ratio("slides:ingest_2workers/ingest_1worker", rates[2], rates[1])
    big = scratch / "big_slide.tif"
    if not big.exists():
        write_slide(big, 100_000, 100_000, levels=7, mpp=0.25, blobs=[(0.5, 0.5, 0.01), (0.2, 0.8, 0.005)])
    out = subprocess.run([sys.executable, "-c", _RSS, str(big), str(scratch / "out_big")], capture_output=True,
                         text=True, check=True)
    figs = json.loads(out.stdout.strip().splitlines()[-1])
    report.add("slides/100k_slide", tiles=figs["tiles"], file_mb=round(big.stat().st_size / 1e6, 1),
               peak_rss_mb=round(figs["peak"], 1), rss_before_convert_mb=round(figs["base"], 1))
    report.ratios["peak_rss_mb"] = round(figs["peak"], 1)


def run_ingest(inputs: Path, out: Path, workers: int, modality: str, **kw: object) -> dict:
    from unimed.ingest.convert import ConvertConfig, convert

    if out.exists():
        shutil.rmtree(out)
    cfg = ConvertConfig(inputs=[str(inputs)], out=str(out), workers=workers, modality=modality, progress=False,
                        **kw)  # type: ignore[arg-type]
    return convert(cfg, echo=lambda s: None)


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=None, help="slices per input kind (default 2000; quick 200)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--no-slides", dest="slides", action="store_false", help="skip the whole-slide section")
    parser.add_argument("--no-volumes", dest="volumes", action="store_false", help="skip the DICOM/NIfTI section")
    parser.add_argument("--scratch", default=None, help="folder for inputs and outputs (default: a temp folder)")
    args = parser.parse_args(argv)
    n = args.slices or (200 if args.quick else 2000)
    os.environ.setdefault("UNIMED_UID_KEY", "benchmark-key-0123456789abcdef0123456")
    from unimed.ingest.synthetic import write_ct_series, write_nifti_volumes

    report = Report("ingest", args.quick)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="unimed-bench-"))
    try:
        if args.volumes:
            series = scratch / "ct_series"
            vols = scratch / "nifti"
            per_vol = min(250, n)
            if not series.exists():
                write_ct_series(series, n, size=args.size)
            if not vols.exists():
                write_nifti_volumes(vols, max(1, n // per_vol), per_vol, size=args.size)
            # Warm-up outside the timings: imports (streaming pulls in torch) and first-call costs.
            warm = scratch / "warm"
            warm.mkdir(exist_ok=True)
            for f in sorted(series.iterdir())[:4]:
                shutil.copy(f, warm / f.name)
            run_ingest(warm, scratch / "out_warm", 1, "ct")
            baseline_dicom(sorted(warm.iterdir()), scratch / "warm.tar")
            kinds = {"dicom": (series, "ct", baseline_dicom), "nifti": (vols, "ct", baseline_nifti)}
            for kind, (inputs, modality, baseline) in kinds.items():
                files = sorted(p for p in inputs.iterdir() if p.is_file())
                t0 = time.perf_counter()
                nb, tar_bytes = baseline(files, scratch / f"baseline_{kind}.tar")
                tb = time.perf_counter() - t0
                report.add(f"{kind}/baseline", images=nb, seconds=round(tb, 3), images_per_second=round(nb / tb, 2),
                           bytes_per_image=round(tar_bytes / nb, 1))
                rates = {}
                for workers in (1, 2):
                    t0 = time.perf_counter()
                    s = run_ingest(inputs, scratch / f"out_{kind}_{workers}", workers, modality)
                    t = time.perf_counter() - t0
                    rates[workers] = s["images"] / t
                    split = s["worker_seconds"]
                    busy = sum(split.get(k, 0.0) for k in ("decode", "transform", "encode", "write"))
                    report.add(f"{kind}/ingest_{workers}worker", images=s["images"], seconds=round(t, 3),
                               images_per_second=round(rates[workers], 2),
                               bytes_per_image=s["bytes_per_image"],
                               shard_bytes_per_image=round(s["shard_bytes"] / max(s["images"], 1), 1),
                               time_split={k: round(split.get(k, 0.0) / busy, 3) for k in
                                           ("decode", "transform", "encode", "write")} if busy else {})
                report.ratio(f"{kind}:ingest/baseline", rates[1], nb / tb)
                report.ratio(f"{kind}:ingest_2workers/ingest_1worker", rates[2], rates[1])
            # The headline keys the issue names: the DICOM series figures.
            report.ratios["ingest/baseline"] = report.ratios["dicom:ingest/baseline"]
            report.ratios["ingest_2workers/ingest_1worker"] = report.ratios["dicom:ingest_2workers/ingest_1worker"]
        if args.slides:
            bench_slides(report, scratch, args.quick)
        report.add("memory", peak_rss_mb_main=round(peak_rss_mb(), 1),
                   peak_rss_mb_children=round(peak_rss_mb(children=True), 1))
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return report.finish(args.json)


if __name__ == "__main__":
    main()
