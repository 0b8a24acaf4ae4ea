"""The demo's training and held-out evaluation sets: real images of all six modalities, no overlap.

Real files written by others (pydicom, pydicom-data, nibabel's tests, scikit-image) go through
``ingest convert`` (its Python API, :func:`unimed.ingest.convert.convert`) into a pool per split;
the pooled images are cut into crops (the demo's "augmentation by sampling"), and the crops are
converted again: training crops with a label table (modality per file, captions from the caption
banks), evaluation crops from a class-folder layout (``eval/<modality>/*.png`` with
``class_folders``, the CLI's ``--class-folders``), as a user's evaluation set would be. Held out:
where a modality has several files, the evaluation files are others than the training files; where
it has one or two images (chest/limb radiograph, the IHC slide, the retina), evaluation crops come
from a region of the image no training crop touches.

The ultrasound test files carry burned-in annotation flags (or cannot be shown free of them), so they
are converted with ``allow_burned_in`` (the CLI's ``--allow-burned-in``): public test data, fine for a
demo, never for patient data.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["POOL", "build_demo_sets", "convert_folder"]

#: modality -> (train files, eval files); "region" entries are split by image region instead.
POOL: dict[str, dict[str, list[tuple[str, str]]]] = {
    "xray": {"region": [("pydicom_data_dir", "RG1_UNCR.dcm"), ("pydicom_data_dir", "RG3_UNCR.dcm")]},
    "ct": {
        "train": [
            ("pydicom_dir", "CT_small.dcm"),
            ("pydicom_data_dir", "693_UNCR.dcm"),
            ("pydicom_dir", "explicit_VR-UN.dcm"),
        ],
        "eval": [("pydicom_data_dir", "eCT_Supplemental.dcm"), ("pydicom_dir", "J2K_pixelrep_mismatch.dcm")],
    },
    "mri": {
        "train": [
            ("nibabel_dir", "anatomical.nii"),
            ("pydicom_dir", "MR_small.dcm"),
            ("pydicom_dir", "emri_small.dcm"),
        ],
        "eval": [
            ("pydicom_data_dir", "MR2_UNCR.dcm"),
            ("nibabel_dir", "example4d.nii.gz"),
            ("pydicom_dir", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
        ],
    },
    "ultrasound": {
        "train": [
            ("pydicom_data_dir", "US1_UNCR.dcm"),
            ("pydicom_dir", "examples_ybr_color.dcm"),
            ("pydicom_dir", "OBXXXX1A.dcm"),
        ],
        "eval": [
            ("pydicom_data_dir", "gdcm-US-ALOKA-16.dcm"),
            ("pydicom_dir", "examples_palette.dcm"),
            ("pydicom_dir", "JPGLosslessP14SV1_1s_1f_8b.dcm"),
        ],
    },
    "pathology": {"region": [("skimage_dir", "ihc.png")]},
    "fundus": {"region": [("skimage_dir", "retina.jpg")]},
}
_SPLIT_AT = 0.6  # region split: training crops left of 60% of the width, evaluation crops right of it


def _find(folder_fn: str, name: str) -> Path | None:
    from unimed import samples

    root = getattr(samples, folder_fn)()
    hits = [root / name] if (root / name).is_file() else sorted(root.rglob(name))
    return hits[0] if hits else None


def convert_folder(inputs: list[str], out: str, **options: Any) -> dict:
    """``ingest convert`` through its Python API (flat ``ConvertConfig`` keywords, no progress bar),
    printing the command's summary line; return the summary. Converting no image is an error."""
    from unimed.ingest.convert import ConvertConfig, convert

    cfg = ConvertConfig(inputs=list(inputs), out=str(out), progress=False, **options)
    summary = convert(cfg, echo=lambda s: print(s, file=sys.stderr))
    mods = ", ".join(f"{k} {v}" for k, v in summary["modality"].items()) or "none"
    rejected = f"{summary['rejects']} rejected"
    if summary["rejects"]:
        rejected += f" (paths in {os.path.join(cfg.report_dir, 'rejects.jsonl')})"
    print(
        f"converted {summary['images']} images ({mods}) into {cfg.out}; {rejected}; "
        f"{summary['images_per_second']} img/s",
        flush=True,
    )
    if not summary["images"]:
        raise SystemExit(
            f"ingest convert into {out}: no image was converted; the reasons are in "
            f"{os.path.join(str(out), 'rejects.jsonl')}"
        )
    return summary


def _pool(root: Path, split: str, workers: int) -> Path:
    """Copy the split's files (and the region-split ones) and convert them; return the shard folder."""
    files = root / f"pool-{split}" / "files"
    rows = []
    for modality, parts in POOL.items():
        for folder_fn, name in parts.get(split, []) + parts.get("region", []):
            src = _find(folder_fn, name)
            if src is None:
                continue
            dest = files / modality / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            rows.append({"path": f"files/{modality}/{name}", "modality": modality, "labels": ""})
    table = files.parent / "modality.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "modality", "labels"])
        w.writeheader()
        w.writerows(rows)
    out = files.parent / "shards"
    # allow_burned_in: the ultrasound files are public test data (see the module docstring).
    convert_folder(
        [str(files)],
        str(out),
        labels=str(table),
        allow_burned_in=True,
        workers=workers,
        source_name=f"demo-pool-{split}",
    )
    return out


def _crops(pool: Path, split: str, per_modality: int, size: int, out: Path, seed: int) -> dict[str, int]:
    """Cut ``per_modality`` random crops per modality from the pool images into ``out/<modality>/``."""
    from PIL import Image

    from unimed.streaming.shards import iter_samples

    region = {m for m, parts in POOL.items() if "region" in parts}
    images: dict[str, list[Image.Image]] = {}
    for sample in iter_samples(str(pool)):
        img = Image.open(io.BytesIO(sample["image"]))
        img = img.convert("RGB" if img.mode in ("RGB", "RGBA", "P", "YCbCr") else "L")
        if sample["modality"] in region:
            w, h = img.size
            cut = int(w * _SPLIT_AT)
            img = img.crop((0, 0, cut, h)) if split == "train" else img.crop((cut, 0, w, h))
        images.setdefault(sample["modality"], []).append(img)
    rng = np.random.default_rng(seed)
    counts = {}
    for modality, imgs in sorted(images.items()):
        (out / modality).mkdir(parents=True, exist_ok=True)
        for i in range(per_modality):
            img = imgs[int(rng.integers(len(imgs)))]
            w, h = img.size
            side = int(min(w, h) * rng.uniform(0.5, 1.0))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = img.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
            crop.save(out / modality / f"{split}-{i:04d}.png")
        counts[modality] = per_modality
    return counts


def _modality_table(folder: Path, labels: bool) -> None:
    """``<folder>.csv`` beside ``folder``: each ``<modality>/*.png`` with its modality (and the folder as label)."""
    rows = [
        {
            "path": str(p.relative_to(folder.parent)),
            "modality": p.parent.name,
            "labels": p.parent.name if labels else "",
        }
        for p in sorted(folder.rglob("*.png"))
    ]
    with open(folder.parent / f"{folder.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "modality", "labels"])
        w.writeheader()
        w.writerows(rows)


def build_demo_sets(
    root: str | Path, train_per_modality: int = 80, eval_per_modality: int = 24, size: int = 96, workers: int = 2
) -> dict[str, str]:
    """Write ``root/train-shards`` (with a tokenizer) and ``root/eval/demo-modality``; return their paths."""
    from unimed.streaming.tokenizer import train_tokenizer

    root = Path(root).resolve()  # absolute: ingest matches label-table rows by absolute path
    pools = {split: _pool(root, split, workers) for split in ("train", "eval")}
    train_dir = root / "crops" / "train"
    _crops(pools["train"], "train", train_per_modality, size, train_dir, seed=1)
    _modality_table(train_dir, labels=False)
    train_shards = root / "train-shards"
    convert_folder(
        [str(train_dir)],
        str(train_shards),
        labels=str(train_dir.parent / "train.csv"),
        workers=workers,
        source_name="demo-train",
    )
    eval_dir = root / "crops" / "eval"
    _crops(pools["eval"], "eval", eval_per_modality, size, eval_dir, seed=2)
    eval_shards = root / "eval" / "demo-modality"
    # The label is the class folder (as `--class-folders` gives it); the table adds each crop's modality.
    _modality_table(eval_dir, labels=True)
    convert_folder(
        [str(eval_dir)],
        str(eval_shards),
        class_folders=True,
        labels=str(eval_dir.parent / "eval.csv"),
        workers=workers,
        source_name="demo-eval",
    )
    tokenizer = train_tokenizer(str(train_shards), str(train_shards / "tokenizer"), vocab_size=400, context_length=32)
    return {
        "train": str(train_shards),
        "eval_root": str(root / "eval"),
        "eval": str(eval_shards),
        "tokenizer": tokenizer,
    }
