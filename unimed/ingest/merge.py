"""Merging chunk folders into one dataset: the index, the rejects and ``summary.json``.

``convert`` calls :func:`merge` after its chunks; ``ingest merge DIR`` runs it on a folder into which
the chunk folders of a split job were copied. The merged ``index.json`` is the one
``streaming.base.util.merge_index`` writes (each chunk's shards, their basenames prefixed with the
chunk folder), written by :func:`unimed.shards.merge_index` to a temporary name and renamed, so a
full disk never leaves a partial index. The dataset's ``rejects.jsonl`` names rejected inputs by
keyed uid; the report folder's ``rejects.jsonl`` (outside the dataset) adds their paths for the
operator.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter

from unimed.errors import UserError
from unimed.ingest.writer import DONE_FILE, PARTS_DIR, write_jsonl
from unimed.shards import INDEX, merge_index

__all__ = ["STATE_DIR", "chunk_stats", "done_chunks", "merge", "merge_indexes", "merge_report", "write_summary"]

STATE_DIR = ".unimed"  # plan fingerprints, planning rejects (uid and reason), the run lock


def chunk_stats(folder: str) -> dict | None:
    """The stats of a complete chunk folder (``done.json`` and ``index.json`` present), else None."""
    f = os.path.join(folder, DONE_FILE)
    if folder.endswith(".tmp") or not (os.path.isfile(f) and os.path.isfile(os.path.join(folder, INDEX))):
        return None
    try:
        with open(f) as fh:
            return json.load(fh)
    except ValueError:  # a chunk whose done.json was cut short is not done: it is redone
        return None


def done_chunks(out: str) -> dict[str, dict]:
    """The complete chunk folders of ``out`` and their stats."""
    done = {}
    for d in sorted(os.listdir(out)):
        stats = chunk_stats(os.path.join(out, d))
        if stats is not None:
            done[d] = stats
    return done


def _replace_json(path: str, obj: object, indent: int | None = None) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def merge_indexes(out: str, chunks: list[str]) -> None:
    """Write ``<out>/index.json`` over the shards of the given chunk folders, atomically."""
    merge_index(out, chunks)


def merge_report(report: str) -> int:
    """Gather the report folder's parts into ``<report>/rejects.jsonl`` (uid, path, reason); return the count."""
    rows: list[dict] = []
    for f in sorted(glob.glob(os.path.join(report, PARTS_DIR, "*.jsonl"))):
        with open(f) as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    write_jsonl(os.path.join(report, "rejects.jsonl"), sorted(rows, key=lambda r: (r["path"], r["reason"])))
    return len(rows)


def merge(out: str, report: str | None = None) -> dict:
    """Merge every complete chunk folder of ``out`` into one index, rejects list and summary.

    ``report``, when given and present, is the run's report folder: its per-chunk reject lists
    (with paths) are gathered into ``<report>/rejects.jsonl``.
    """
    if not os.path.isdir(out):
        raise UserError(f"{out}: no such folder")
    done = done_chunks(out)
    merge_indexes(out, list(done))
    rejects: list[dict] = []
    for f in sorted(glob.glob(os.path.join(out, STATE_DIR, "plan-rejects-*.jsonl"))):
        with open(f) as fh:
            rejects.extend(json.loads(line) for line in fh if line.strip())
    modality: Counter = Counter()
    source: Counter = Counter()
    secs: Counter = Counter()
    images = image_bytes = tasks = 0
    for stats in done.values():
        rejects.extend(stats["rejects"])
        modality.update(stats["modality"])
        source.update(stats["source"])
        secs.update(stats["seconds"])
        images += stats["images"]
        image_bytes += stats["image_bytes"]
        tasks += stats["tasks"]
    shard_bytes = sum(
        os.path.getsize(os.path.join(dp, f)) for d in done for dp, _, fs in os.walk(os.path.join(out, d)) for f in fs
        if ".mds" in f
    )
    write_jsonl(os.path.join(out, "rejects.jsonl"), sorted(rejects, key=lambda r: (r["uid"], r["reason"])))
    if report is not None and os.path.isdir(report):
        merge_report(report)
    return {
        "images": images,
        "tasks": tasks,
        "rejects": len(rejects),
        "chunks": len(done),
        "modality": dict(sorted(modality.items())),
        "source": dict(sorted(source.items())),
        "image_bytes": image_bytes,
        "shard_bytes": shard_bytes,
        "bytes_per_image": round(image_bytes / images, 1) if images else 0,
        "worker_seconds": {k: round(v, 3) for k, v in sorted(secs.items())},
    }


def write_summary(out: str, summary: dict) -> None:
    """Write ``<out>/summary.json`` atomically."""
    _replace_json(os.path.join(out, "summary.json"), summary, indent=2)
