"""Synthetic MDS shards in the unimed schema, for tests and benchmarks.

Real shards come from ``unimed.ingest``; this generator exists so the loader's tests and
``benchmarks/loader.py`` can run anywhere, offline, on data of a realistic kind: smooth grey or
colour images (so JPEG sizes are like medical images, not like noise) at the ingested size, one
shard folder per modality (so a mix can weight them), captions from a few templates, optional
8/16-bit PNGs and optional broken images to exercise the bad-data path.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from unimed.schema import COLUMNS

__all__ = ["SyntheticSpec", "synthetic_image", "write_synthetic_shards", "COLOR_MODALITIES"]

#: Modalities stored as RGB; the others are single-channel.
COLOR_MODALITIES: frozenset[str] = frozenset({"pathology", "fundus"})

_FINDINGS = ("normal", "effusion", "nodule", "fracture", "edema", "tumor", "lesion", "atrophy")
_TEMPLATES = (
    "a {m} image showing {f}",
    "{m} scan with findings of {f}",
    "this {m} demonstrates {f} in the {s}",
    "an example of {f} on {m}",
)
_SITES = ("left lung", "right lung", "liver", "brain", "retina", "kidney", "knee")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to write: per-modality counts, image size and the share of PNG and broken images."""

    counts: dict[str, int]
    size: int = 512  # longer side, like the converter's default
    png_fraction: float = 0.0  # share of images stored as PNG (half of them 16-bit)
    corrupt: int = 0  # broken images per modality (truncated or not an image)
    seed: int = 0
    size_limit: int | str = 1 << 26  # MDS shard size (bytes)


def synthetic_image(rng: np.random.Generator, size: int, color: bool, bit_depth: int = 8) -> np.ndarray:
    """A smooth random image (a few low-frequency blobs plus mild noise), ``size`` on its longer side."""
    aspect = rng.uniform(0.75, 1.0)
    h, w = (size, int(size * aspect)) if rng.random() < 0.5 else (int(size * aspect), size)
    channels = 3 if color else 1
    low = rng.random((8, 8, channels)).astype(np.float32)
    field = np.stack(
        [np.asarray(Image.fromarray(low[..., c]).resize((w, h), Image.BICUBIC)) for c in range(channels)], -1
    )
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    field += rng.normal(0.0, 0.03, size=(h, w, 1)).astype(np.float32)
    field = np.clip(field, 0.0, 1.0)
    if bit_depth == 16:
        return (field[..., 0] * 65535.0).astype(np.uint16)
    out = (field * 255.0).astype(np.uint8)
    return out if color else out[..., 0]


def _encode(arr: np.ndarray, codec: str) -> bytes:
    buf = io.BytesIO()
    if codec == "jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    else:
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _caption(rng: np.random.Generator, modality: str, finding: str) -> str:
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(m=modality, f=finding, s=_SITES[int(rng.integers(len(_SITES)))])


def _write_modality(out_dir: str, modality: str, count: int, spec: SyntheticSpec, index: int) -> str:
    from streaming import MDSWriter

    rng = np.random.default_rng([spec.seed, index])
    color = modality in COLOR_MODALITIES
    corrupt_at = set(rng.choice(count, size=min(spec.corrupt, count), replace=False).tolist())
    path = os.path.join(out_dir, modality)
    with MDSWriter(out=path, columns=COLUMNS, compression="zstd", size_limit=spec.size_limit) as writer:
        for i in range(count):
            codec, depth = "jpeg", 8
            if not color and rng.random() < spec.png_fraction:
                codec, depth = "png", (16 if rng.random() < 0.5 else 8)
            arr = synthetic_image(rng, spec.size, color, depth)
            data = _encode(arr, codec)
            if i in corrupt_at:  # alternate the two common faults: truncation and a non-image
                data = data[: len(data) // 3] if i % 2 == 0 else b"<html>not an image</html>"
            finding = _FINDINGS[int(rng.integers(len(_FINDINGS)))]
            captions = [_caption(rng, modality, finding) for _ in range(int(rng.integers(1, 4)))]
            writer.write(
                {
                    "image": data,
                    "captions": captions,
                    "modality": modality,
                    "labels": [finding],
                    "source": "synthetic",
                    "uid": f"syn-{modality}-{spec.seed}-{i:07d}",
                    "patient": "",  # synthetic images belong to no patient
                    "study": "",
                    "meta": {
                        "codec": codec,
                        "bit_depth": depth,
                        "height": arr.shape[0],
                        "width": arr.shape[1],
                    },
                }
            )
    return path


def write_synthetic_shards(out_dir: str, spec: SyntheticSpec, processes: int = 1) -> dict[str, str]:
    """Write one MDS folder per modality under ``out_dir``; return modality -> folder.

    ``processes > 1`` writes modalities in parallel (the benchmark's 20,000 images take about a
    minute per core).
    """
    os.makedirs(out_dir, exist_ok=True)
    jobs: Sequence[tuple[str, int, int]] = [(m, n, i) for i, (m, n) in enumerate(sorted(spec.counts.items()))]
    if processes > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as pool:
            paths = list(pool.map(_write_modality, *zip(*[(out_dir, m, n, spec, i) for m, n, i in jobs])))
    else:
        paths = [_write_modality(out_dir, m, n, spec, i) for m, n, i in jobs]
    return {m: p for (m, _, _), p in zip(jobs, paths)}
