"""Writing one chunk of tasks into its own MDS folder, atomically.

A chunk is written to ``<out>/<chunk>.tmp/`` and renamed to ``<out>/<chunk>/`` only after the MDS
writer has finished (index.json written) and the chunk's ``done.json`` (counts, rejects, timings) is
in place. A killed run therefore leaves either a complete chunk folder or a ``.tmp`` folder that
``--resume`` deletes and redoes; no index ever points at a partial shard.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from unimed.errors import safe_reason
from unimed.ingest import intensity
from unimed.ingest.captions import CaptionEngine
from unimed.ingest.deid import keyed_uid
from unimed.ingest.sources.base import TIMES, Options, Task, get_source, timed
from unimed.schema import COLUMNS

__all__ = ["ChunkSpec", "WriteOptions", "process_chunk", "DONE_FILE"]

DONE_FILE = "done.json"


@dataclass
class WriteOptions:
    """How items become samples: codec, size, compression, captions."""

    codec: str = "jpeg"
    quality: int = 90
    max_side: int = 512
    compression: str | None = "zstd:3"
    size_limit: str = "64mb"
    banks: list[str] = field(default_factory=list)


@dataclass
class ChunkSpec:
    """One unit of the job: a folder name and its tasks."""

    name: str
    tasks: list[Task]


def _sample(item: Any, task: Task, engine: CaptionEngine, wopts: WriteOptions, key: bytes) -> dict:
    with timed("encode"):
        pixels = intensity.resize_max(item.pixels, wopts.max_side)
        codec = wopts.codec
        if codec == "jpeg" and pixels.dtype != "uint8":
            codec = "png"  # 16-bit never goes through JPEG
        data = intensity.encode(pixels, codec, wopts.quality)
    labels = list(task.extra.get("labels") or item.labels)
    # Free-text captions first; label captions beside them only when there are labels (a bank's
    # generic "unlabeled" phrasings would only dilute a real caption).
    captions = engine.captions(item.modality, labels, item.anatomy) if labels or not item.texts else []
    captions = list(dict.fromkeys([*item.texts, *captions]))
    meta = dict(item.meta)
    meta.update(
        codec=codec,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        channels=1 if pixels.ndim == 2 else int(pixels.shape[2]),
        bit_depth=16 if pixels.dtype == "uint16" else 8,
    )
    return {
        "image": data,
        "captions": captions,
        "modality": item.modality,
        "labels": labels,
        "source": task.extra.get("source_name", "unknown"),
        "uid": keyed_uid(key, item.key),
        "meta": meta,
    }


def process_chunk(out: str, spec: ChunkSpec, opts: Options, wopts: WriteOptions, key: bytes,
                  report: Any = None) -> dict:
    """Convert a chunk's tasks into ``<out>/<spec.name>/``; return its stats.

    ``report(n_images, rejects)`` is called after each task (progress and reject lines).
    """
    from streaming import MDSWriter

    final = os.path.join(out, spec.name)
    tmp = final + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    TIMES.clear()
    engine = CaptionEngine(wopts.banks)
    start = time.perf_counter()
    counts: Counter = Counter()
    sources: Counter = Counter()
    rejects: list[dict] = []
    n = 0
    image_bytes = 0
    gen_time = 0.0
    with MDSWriter(out=tmp, columns=COLUMNS, compression=wopts.compression, hashes=["xxh64"],
                   size_limit=wopts.size_limit, exist_ok=False, progress_bar=False) as writer:
        for task in spec.tasks:
            samples: list[dict] = []
            t0 = time.perf_counter()
            enc0 = TIMES.get("encode", 0.0)
            try:
                source = get_source(task.source)
                for item in source.iter_items(task, opts):
                    samples.append(_sample(item, task, engine, wopts, key))
                if not samples:
                    raise _Empty()
            except _Empty:
                rejects.append({"path": task.name, "reason": "no image left after skipping empty slices"})
                samples = []
            except Exception as exc:  # RejectError, or a bug: either way the run goes on
                rejects.append({"path": task.name, "reason": safe_reason(exc)})
                samples = []
            gen_time += (time.perf_counter() - t0) - (TIMES.get("encode", 0.0) - enc0)
            with timed("write"):
                for s in samples:
                    writer.write(s)
            for s in samples:
                counts[s["modality"]] += 1
                sources[s["source"]] += 1
                image_bytes += len(s["image"])
            n += len(samples)
            if report is not None:
                report(len(samples), rejects[-1:] if not samples else [])
    decode = TIMES.get("decode", 0.0)
    stats = {
        "chunk": spec.name,
        "tasks": len(spec.tasks),
        "images": n,
        "modality": dict(counts),
        "source": dict(sources),
        "image_bytes": image_bytes,
        "rejects": rejects,
        "seconds": {
            "decode": round(decode, 4),
            "transform": round(max(gen_time - decode, 0.0), 4),
            "encode": round(TIMES.get("encode", 0.0), 4),
            "write": round(TIMES.get("write", 0.0), 4),
            "total": round(time.perf_counter() - start, 4),
        },
    }
    with open(os.path.join(tmp, DONE_FILE), "w") as fh:
        json.dump(stats, fh)
    os.replace(tmp, final)  # atomic: the chunk exists whole or not at all
    return stats


class _Empty(Exception):
    pass
