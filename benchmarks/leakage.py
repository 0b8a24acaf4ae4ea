"""Leakage detection: recall on planted copies and false pairs on distinct real images, per threshold.

Ground truth is planted: real images written by others (scikit-image's photographs, pathology and
fundus images; single-frame DICOM radiographs, CT, MR and ultrasound from pydicom and pydicom-data)
go through ``ingest convert`` into a training set; the evaluation set holds copies of a third of
them, each re-encoded (JPEG q55), resized (3/4), shifted by one pixel and cropped by 2%, beside
held-out images that are in no training set. A pair is true when it joins a copy to its original;
every other pair is false. Figures per ``max_distance``: recall (copies found) and false pairs.
Also run on the demo's training and evaluation sets (``unimed demo``'s data), which share no image
by construction: every pair reported there is a false pair (or a real overlap the demo has).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, base_parser  # noqa: E402

#: Single-frame DICOM images of distinct content (other encodings of the same image are left out).
DICOM = [
    ("pydicom_dir", "CT_small.dcm"),
    ("pydicom_dir", "MR_small.dcm"),
    ("pydicom_data_dir", "RG1_UNCR.dcm"),
    ("pydicom_data_dir", "RG3_UNCR.dcm"),
    ("pydicom_data_dir", "693_UNCR.dcm"),
    ("pydicom_data_dir", "MR2_UNCR.dcm"),
    ("pydicom_data_dir", "US1_UNCR.dcm"),
    ("pydicom_data_dir", "CT1_UNC.explicit_big_endian.dcm"),
    ("pydicom_dir", "explicit_VR-UN.dcm"),
    ("pydicom_data_dir", "RG2_UNCI.dcm"),
]


def _variants(im):  # noqa: ANN001, ANN202 - PIL images
    from PIL import Image

    w, h = im.size
    q = io.BytesIO()
    im.convert("RGB").save(q, "JPEG", quality=55)
    dx, dy = max(1, w // 50), max(1, h // 50)
    return {
        "reencoded": Image.open(io.BytesIO(q.getvalue())),
        "resized": im.resize((w * 3 // 4, h * 3 // 4)),
        "shifted": Image.fromarray(np.roll(np.asarray(im), 1, axis=1)),
        "cropped": im.crop((dx, dy, w, h)),
    }


def _pool(scratch: Path) -> list[Path]:
    """The distinct real images as PNG files (DICOM through ingest, so they are windowed as in training)."""
    import skimage
    from PIL import Image

    from unimed import samples
    from unimed.ingest.convert import ConvertConfig, convert
    from unimed.streaming.shards import iter_samples

    pool = scratch / "pool"
    pool.mkdir()
    d = Path(skimage.__file__).parent / "data"
    for p in sorted(d.iterdir()):
        if p.suffix in (".png", ".jpg") and "chessboard" not in p.name and p.name != "motorcycle_right.png":
            Image.open(p).convert("RGB").save(pool / f"{p.stem}.png")
    dicom_in = scratch / "dicom"
    dicom_in.mkdir()
    for fn, name in DICOM:
        src = getattr(samples, fn)() / name
        if src.is_file():
            shutil.copy(src, dicom_in / name)
    convert(
        ConvertConfig(inputs=[str(dicom_in)], out=str(scratch / "dicom-shards"), allow_burned_in=True, progress=False),
        echo=lambda s: None,
    )
    for k, s in enumerate(iter_samples(str(scratch / "dicom-shards"))):
        Image.open(io.BytesIO(s["image"])).save(pool / f"dicom-{k:02d}.png")
    return sorted(pool.iterdir())


def _convert(folder: Path, out: Path) -> None:
    from unimed.ingest.convert import ConvertConfig, convert

    convert(ConvertConfig(inputs=[str(folder)], out=str(out), modality="other", progress=False), echo=lambda s: None)


def planted(report: Report, scratch: Path, distances: list[int]) -> None:
    from PIL import Image

    from unimed.leakage import _distances, _prints, find_pairs

    images = _pool(scratch)
    held = images[::4]  # every fourth image is held out of training
    train = [p for p in images if p not in held]
    copied = train[::3]
    (scratch / "train_in").mkdir()
    (scratch / "eval_in").mkdir()
    for p in train:
        shutil.copy(p, scratch / "train_in" / p.name)
    truth: dict[str, str] = {}
    for p in copied:
        for kind, v in _variants(Image.open(p)).items():
            v.save(scratch / "eval_in" / f"{p.stem}__{kind}.png")
    for p in held:
        shutil.copy(p, scratch / "eval_in" / f"{p.stem}__held.png")
    _convert(scratch / "train_in", scratch / "train")
    _convert(scratch / "eval_in", scratch / "eval")
    # Ground truth by content: each converted sample is matched back to its file through its exact print.
    tr, ev = _prints(str(scratch / "train"), "train", False), _prints(str(scratch / "eval"), "eval", False)
    tr_name = _names(scratch / "train_in", tr)
    ev_name = _names(scratch / "eval_in", ev)
    for j, name in ev_name.items():
        stem, kind = name.rsplit("__", 1)
        if kind != "held":
            truth[str(j)] = stem
    kinds = {j: ev_name[int(j)].rsplit("__", 1)[1] for j in truth}
    for dist in distances:
        pairs = find_pairs(tr, ev, dist)
        found = {str(p.j) for p in pairs if truth.get(str(p.j)) == tr_name[p.i]}
        false = [p for p in pairs if truth.get(str(p.j)) != tr_name[p.i]]
        per_kind = {
            k: round(sum(kinds[j] == k for j in found) / sum(v == k for v in kinds.values()), 3)
            for k in sorted(set(kinds.values()))
        }
        report.add(
            f"planted@{dist}",
            copies=len(truth),
            found=len(found),
            recall=round(len(found) / len(truth), 4),
            false_pairs=len(false),
            train=len(tr.exact),
            eval=len(ev.exact),
            recall_by_kind=per_kind,
        )
    # The margin: the closest pair of images that are not copies of each other.
    d = _distances(tr.phash, ev.phash)
    closest = min(
        int(d[i, j]) for i in range(len(tr.exact)) for j in range(len(ev.exact)) if truth.get(str(j)) != tr_name[i]
    )
    report.add("planted", closest_distinct_bits=closest)


def compare_speed(report: Report, quick: bool) -> None:
    """Pairs compared per second by the exhaustive search (random hashes: the cost does not depend on them)."""
    from unimed.leakage import Prints, find_pairs

    rng = np.random.default_rng(0)
    n, m = (20000, 2000) if quick else (100000, 10000)
    a = Prints("a", exact=[f"a{i}" for i in range(n)], phash=rng.integers(0, 2**63, n, dtype=np.uint64))
    b = Prints("b", exact=[f"b{i}" for i in range(m)], phash=rng.integers(0, 2**63, m, dtype=np.uint64))
    t0 = time.perf_counter()
    find_pairs(a, b, 6)
    secs = time.perf_counter() - t0
    report.add(f"compare {n}x{m}", seconds=round(secs, 2), pairs_per_second=round(n * m / secs))


def _names(folder: Path, prints) -> dict[int, str]:  # noqa: ANN001
    """Sample index -> source file stem, through the uid ingest gives a plain image (a hash of its bytes)."""
    import hashlib

    from unimed.ingest.deid import keyed_uid, load_uid_key

    key = load_uid_key()
    by_uid = {keyed_uid(key, f"image:{hashlib.sha1(p.read_bytes()).hexdigest()}"): p.stem for p in folder.iterdir()}
    out = {i: by_uid[u] for i, u in enumerate(prints.uids) if u in by_uid}
    if len(out) != len(prints.uids):
        raise SystemExit(f"matched {len(out)} of {len(prints.uids)} samples of {folder} to their files")
    return out


def demo(report: Report, scratch: Path, quick: bool) -> None:
    from unimed.leakage import DEFAULT_MAX_DISTANCE, leakage
    from unimed.train.demodata import build_demo_sets

    sets = build_demo_sets(
        scratch / "demo",
        train_per_modality=16 if quick else 80,
        eval_per_modality=6 if quick else 24,
        size=96,
        workers=1,
    )
    for dist in sorted({DEFAULT_MAX_DISTANCE, 6, 10}):
        r = leakage(sets["train"], [sets["eval"]], max_distance=dist)
        ev = r["sets"][os.path.basename(sets["eval"])]
        report.add(
            f"demo@{dist}",
            train=r["train"]["samples"],
            eval=ev["samples"],
            train_eval_pairs=ev["exact_pairs"] + ev["near_pairs"],
            within_train_pairs=r["train"]["exact_pairs"] + r["train"]["near_pairs"],
        )


def main() -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("UNIMED_UID_KEY", "benchmark-key-0123456789abcdef0123456")
    report = Report("leakage", args.quick)
    with tempfile.TemporaryDirectory(prefix="unimed-leak-") as tmp:
        planted(report, Path(tmp), [2, 4, 6, 8, 10, 12])
        demo(report, Path(tmp), args.quick)
    compare_speed(report, args.quick)
    return report.finish(args.json)


if __name__ == "__main__":
    main()
