"""Train/eval leakage: the same image in a training set and an evaluation set, or twice in one set.

Public medical sets overlap (the same chest film in two releases, a slide re-tiled, an image re-saved
at another size), and an evaluation figure over images the model trained on means little. Two kinds
of pair are found between the training folder and each evaluation folder, and within the training
folder itself:

* **exact**: the decoded pixels are identical (SHA-1 of shape, mode and pixel bytes);
* **near**: the 64-bit perceptual hashes (DCT hash of ``imagehash``, on grey levels) differ in at most
  ``max_distance`` bits: re-encoded, resized, slightly shifted or recompressed copies.

Comparison is an exhaustive, blocked XOR-and-popcount over all pairs in numpy (the figure is in
benchmarks/RESULTS.md), so the answer never depends on an index's approximations. ``drop`` writes the training set
without every
sample that has a pair in an evaluation set, and without the later copies of its own duplicates.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unimed.errors import UserError

__all__ = ["Prints", "Pair", "fingerprint", "find_pairs", "leakage", "DEFAULT_MAX_DISTANCE"]

#: Bits in which two perceptual hashes may differ and still be called the same image, chosen from the
#: planted-copy figures in benchmarks/RESULTS.md: re-encoded, resized and 1-pixel-shifted copies lie
#: within 2 bits of their originals, 2%-cropped ones within 10, distinct real images 20 or more apart;
#: at 8 bits small dark crops of different demo images begin to pair, at 6 none do.
DEFAULT_MAX_DISTANCE = 6

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class Prints:
    """The fingerprints of one folder's samples, in sample order."""

    name: str
    exact: list[str] = field(default_factory=list)
    phash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    uids: list[str] = field(default_factory=list)
    thumbs: list[bytes] = field(default_factory=list)  # the encoded images (for the contact sheet)


@dataclass
class Pair:
    """Sample ``i`` of one set and sample ``j`` of another (or the same) set look alike."""

    kind: str  # "exact" or "near"
    i: int
    j: int
    distance: int


def fingerprint(image: bytes) -> tuple[str, int]:
    """(exact hash, 64-bit perceptual hash) of one encoded image."""
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        im.load()
        pixels = np.asarray(im)
        exact = hashlib.sha1(f"{im.mode}{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
        grey = (
            im.convert("L")
            if im.mode not in ("I;16", "I")
            else Image.fromarray((pixels.astype(np.float32) / 256.0).astype(np.uint8))
        )
    bits = imagehash.phash(grey, hash_size=8).hash.flatten()
    return exact, int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def _prints(folder: str, name: str, keep_images: bool) -> Prints:
    from unimed.streaming.shards import iter_samples

    out = Prints(name)
    hashes: list[int] = []
    for s in iter_samples(folder):  # a folder without an index is a UserError there
        exact, ph = fingerprint(s["image"])
        out.exact.append(exact)
        hashes.append(ph)
        out.uids.append(s["uid"])
        out.thumbs.append(s["image"] if keep_images else b"")
    out.phash = np.array(hashes, dtype=np.uint64)
    return out


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between every hash of ``a`` and every hash of ``b`` (uint8, len(a) x len(b))."""
    x = a[:, None] ^ b[None, :]
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a popcount instruction
        return np.bitwise_count(x)
    return _POPCOUNT[x.view(np.uint8).reshape(len(a), len(b), 8)].sum(axis=2, dtype=np.uint8)


def find_pairs(a: Prints, b: Prints | None, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[Pair]:
    """Pairs between ``a`` and ``b``, or within ``a`` when ``b`` is None (each pair once, i < j)."""
    same = b is None
    b = a if b is None else b
    pairs: list[Pair] = []
    by_exact: dict[str, list[int]] = {}
    for j, h in enumerate(b.exact):
        by_exact.setdefault(h, []).append(j)
    exact_pairs = {(i, j) for i, h in enumerate(a.exact) for j in by_exact.get(h, []) if not same or i < j}
    pairs += [Pair("exact", i, j, 0) for i, j in sorted(exact_pairs)]
    block = max(1, (1 << 22) // max(len(b.phash), 1))  # rows per block: ~100 MB of working memory
    for lo in range(0, len(a.phash), block):
        d = _distances(a.phash[lo : lo + block], b.phash)
        ii, jj = np.nonzero(d <= max_distance)
        for i, j in zip(ii.tolist(), jj.tolist()):
            i += lo
            if (same and i >= j) or (i, j) in exact_pairs:
                continue
            pairs.append(Pair("near", i, j, int(d[i - lo, j])))
    return pairs


def _sheet(pairs: list[tuple[str, Prints, Prints, Pair]], path: str, limit: int = 24) -> str:
    """Side-by-side thumbnails of up to ``limit`` pairs, each labelled with its set and distance."""
    from PIL import Image, ImageDraw, ImageOps

    from unimed.ingest.inspect import _font

    tile, text = 160, 18
    shown = pairs[:limit]
    sheet = Image.new("RGB", (2 * tile + 8, max(1, len(shown)) * (tile + text)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, a, b, p) in enumerate(shown):
        y = r * (tile + text)
        for k, blob in enumerate((a.thumbs[p.i], b.thumbs[p.j])):
            with Image.open(io.BytesIO(blob)) as im:
                im = ImageOps.contain(im.convert("RGB"), (tile - 4, tile - 4))
                sheet.paste(im, (k * (tile + 8) + (tile - im.width) // 2, y + (tile - im.height) // 2))
        draw.text((4, y + tile), f"{name}: {p.kind}, {p.distance} bits", fill="black", font=_font())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def _drop(train: str, out: str, remove: set[int]) -> int:
    """Write ``train`` without the samples ``remove`` into a new MDS folder ``out``; return the count kept.

    The cleaned set keeps the columns of ``train``: one converted before a column was added stays without it.
    """
    from unimed.schema import shard_columns
    from unimed.shards import ShardWriter, read_index
    from unimed.streaming.shards import find_mds_dirs, iter_samples

    if os.path.exists(out) and os.listdir(out):
        raise UserError(f"--drop {out}: folder exists and is not empty; choose a new one")
    shards = [s for d in find_mds_dirs(train) for s in read_index(d)["shards"]]
    first = (shards or [{}])[0]
    columns = shard_columns(shards)
    kept = 0
    with ShardWriter(
        out,
        columns,
        compression=first.get("compression"),
        hashes=["xxh64"],
        size_limit=first.get("size_limit") or 1 << 26,
    ) as writer:
        for k, s in enumerate(iter_samples(train)):
            if k not in remove:
                writer.write({c: s[c] for c in columns})
                kept += 1
    return kept


def leakage(
    train: str,
    evals: list[str],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    sheet: str | None = None,
    drop: str | None = None,
) -> dict[str, Any]:
    """Pairs between ``train`` and each of ``evals``, and within ``train``: counts, pairs, and the cleaned set."""
    keep_images = sheet is not None
    tr = _prints(train, os.path.basename(os.path.normpath(train)) or "train", keep_images)
    report: dict[str, Any] = {"train": {"samples": len(tr.exact)}, "max_distance": max_distance, "sets": {}}
    shown: list[tuple[str, Prints, Prints, Pair]] = []
    remove: set[int] = set()
    within = find_pairs(tr, None, max_distance)
    report["train"].update(
        exact_pairs=sum(p.kind == "exact" for p in within), near_pairs=sum(p.kind == "near" for p in within)
    )
    remove |= {p.j for p in within}  # the later copy of a duplicate inside the training set
    shown += [("train/train", tr, tr, p) for p in within[:8]]
    for k, folder in enumerate(evals):
        name = os.path.basename(os.path.normpath(folder)) or f"eval{k}"
        ev = _prints(folder, name, keep_images)
        pairs = find_pairs(tr, ev, max_distance)
        remove |= {p.i for p in pairs}
        report["sets"][name] = {
            "samples": len(ev.exact),
            "exact_pairs": sum(p.kind == "exact" for p in pairs),
            "near_pairs": sum(p.kind == "near" for p in pairs),
            "eval_samples_in_train": len({p.j for p in pairs}),
            "pairs": [
                {"kind": p.kind, "train_uid": tr.uids[p.i], "eval_uid": ev.uids[p.j], "distance": p.distance}
                for p in pairs
            ],
        }
        shown += [(f"train/{name}", tr, ev, p) for p in pairs]
    report["train"]["to_drop"] = len(remove)
    if sheet is not None:
        report["sheet"] = _sheet(shown, sheet)
    if drop is not None:
        report["train"]["kept"] = _drop(train, drop, remove)
        report["cleaned"] = drop
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as one Markdown table (a row per evaluation set, and one for the training set itself)."""
    t = report["train"]
    rows = [
        "| set | samples | exact pairs | near pairs | samples also in train |",
        "|---|---:|---:|---:|---:|",
        f"| train (within) | {t['samples']} | {t['exact_pairs']} | {t['near_pairs']} | – |",
    ]
    for name, s in report["sets"].items():
        rows.append(
            f"| {name} | {s['samples']} | {s['exact_pairs']} | {s['near_pairs']} | {s['eval_samples_in_train']} |"
        )
    return "\n".join(rows) + f"\n\nnear: perceptual hashes within {report['max_distance']} of 64 bits\n"
