"""Writing one chunk of tasks into its own MDS folder, atomically.

A chunk is written to ``<out>/<chunk>.tmp/`` and renamed to ``<out>/<chunk>/`` only after the MDS
writer (:class:`unimed.shards.ShardWriter`, byte-identical to ``streaming.MDSWriter`` and without its
torch import) has finished (index.json written) and the chunk's ``done.json`` (counts, rejects,
timings) is in place. A killed run therefore leaves either a complete chunk folder or a ``.tmp`` folder that
``--resume`` deletes and redoes; no index ever points at a partial shard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from unimed.errors import safe_reason, shown_path
from unimed.ingest import intensity
from unimed.ingest.captions import CaptionEngine
from unimed.ingest.deid import keyed_patient, keyed_study, keyed_uid, reject_uid
from unimed.ingest.sources.base import TIMES, Options, Task, get_source, timed
from unimed.schema import COLUMNS
from unimed.shards import ShardWriter

__all__ = ["ChunkSpec", "WriteOptions", "process_chunk", "write_jsonl", "DONE_FILE", "PARTS_DIR"]

DONE_FILE = "done.json"
PARTS_DIR = "parts"  # per-chunk and per-plan reject lists with paths, in the report folder


@dataclass
class WriteOptions:
    """How items become samples: codec, size, compression, captions (``ConvertConfig.write``; the
    ``ingest convert`` flags take their defaults from these fields)."""

    codec: str = "jpeg"
    quality: int = 90
    max_side: int = 512
    compression: str | None = "zstd:1"
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
    labels = list(task.labels or item.labels)
    # Free-text captions first; label captions beside them only when there are labels (a bank's
    # generic "unlabeled" phrasings would only dilute a real caption).
    captions = _label_captions(engine, item.modality, labels, item.anatomy) if labels or not item.texts else []
    captions = list(dict.fromkeys([*item.texts, *captions]))
    meta = dict(item.meta)
    if task.view:
        meta["view"] = task.view
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
        "source": task.source_name,
        "uid": keyed_uid(key, item.key),
        "patient": keyed_patient(key, item.patient),
        "study": keyed_study(key, item.study),
        "meta": meta,
    }


_CAPTIONS: dict[tuple, list[str]] = {}


def _label_captions(engine: CaptionEngine, modality: str, labels: list[str], anatomy: str | None) -> list[str]:
    """``engine.captions`` (deterministic), kept per label set for the chunk: a series repeats one set."""
    key = (id(engine), modality, tuple(labels), anatomy)
    hit = _CAPTIONS.get(key)
    if hit is None:
        if len(_CAPTIONS) >= 4096:
            _CAPTIONS.clear()
        hit = _CAPTIONS[key] = engine.captions(modality, labels, anatomy)
    return hit


def _convert_task(
    task: Task, opts: Options, engine: CaptionEngine, wopts: WriteOptions, key: bytes
) -> tuple[list[dict], str | None]:
    """The samples of one task, or no samples and the reason (a reject never stops the chunk)."""
    samples: list[dict] = []
    try:
        source = get_source(task.source)
        with library_notes(reject_uid(key, task.name)):
            for item in source.iter_items(task, opts):
                samples.append(_sample(item, task, engine, wopts, key))
    except Exception as exc:  # RejectError, or a bug: either way the run goes on
        return [], safe_reason(exc)
    if not samples:
        return [], "no image left after skipping empty slices"
    return samples, None


def _convert_copies(
    task: Task, opts: Options, engine: CaptionEngine, wopts: WriteOptions, key: bytes
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Convert a task, trying the other copies of the same DICOM instance when it fails.

    The first copy (in path order) that converts is kept; every other copy becomes a reject saying
    why, so a truncated re-sent copy never displaces a good original.
    """
    copies = [task] + [replace(task, paths=[p], alternates=[]) for p in task.alternates]
    failed: list[tuple[str, str]] = []
    for i, copy in enumerate(copies):
        samples, reason = _convert_task(copy, opts, engine, wopts, key)
        if samples:
            dup = "duplicate DICOM instance (same SOP Instance UID)"
            rejects = [(p, f"{dup}: this copy failed ({r}); another copy was kept") for p, r in failed]
            rejects += [(c.name, f"{dup}: another copy was kept") for c in copies[i + 1 :]]
            return samples, rejects
        failed.append((copy.name, reason or "no image"))
    if len(failed) > 1:
        failed = [failed[0]] + [(p, f"duplicate DICOM instance (same SOP Instance UID): {r}") for p, r in failed[1:]]
    return [], failed


def process_chunk(
    out: str,
    spec: ChunkSpec,
    opts: Options,
    wopts: WriteOptions,
    key: bytes,
    report: Any = None,
    report_dir: str | None = None,
) -> dict:
    """Convert a chunk's tasks into ``<out>/<spec.name>/``; return its stats.

    ``report(n_images, rejects)`` is called after each task (progress and reject lines). Rejects in
    the chunk's ``done.json`` hold the keyed uid and the reason only; their paths go to
    ``<report_dir>/parts/<chunk>.jsonl``, outside the dataset folder.
    """
    final = os.path.join(out, spec.name)
    tmp = final + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    TIMES.clear()
    engine = CaptionEngine(wopts.banks)
    _CAPTIONS.clear()  # kept for this chunk's engine only
    start = time.perf_counter()
    counts: Counter = Counter()
    sources: Counter = Counter()
    rejects: list[dict] = []
    n = 0
    image_bytes = 0
    gen_time = 0.0
    with ShardWriter(
        tmp, COLUMNS, compression=wopts.compression, hashes=["xxh64"], size_limit=wopts.size_limit
    ) as writer:
        for task in spec.tasks:
            t0 = time.perf_counter()
            enc0 = TIMES.get("encode", 0.0)
            samples, failed = _convert_copies(task, opts, engine, wopts, key)
            new = [{"uid": reject_uid(key, p), "path": shown_path(p), "reason": r} for p, r in failed]
            rejects.extend(new)
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
                report(len(samples), new)
    decode = TIMES.get("decode", 0.0)
    stats = {
        "chunk": spec.name,
        "tasks": len(spec.tasks),
        "images": n,
        "modality": dict(counts),
        "source": dict(sources),
        "image_bytes": image_bytes,
        "rejects": [{"uid": r["uid"], "reason": r["reason"]} for r in rejects],
        "seconds": {
            "decode": round(decode, 4),
            "transform": round(max(gen_time - decode, 0.0), 4),
            "encode": round(TIMES.get("encode", 0.0), 4),
            "write": round(TIMES.get("write", 0.0), 4),
            "total": round(time.perf_counter() - start, 4),
        },
    }
    if report_dir is not None:
        write_jsonl(os.path.join(report_dir, PARTS_DIR, f"{spec.name}.jsonl"), rejects)
    with open(os.path.join(tmp, DONE_FILE), "w") as fh:
        json.dump(stats, fh)
    os.replace(tmp, final)  # atomic: the chunk exists whole or not at all
    return stats


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write JSON lines atomically (a temporary name, then a rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def library_notes(label: str) -> Iterator[None]:
    """Prefix what tifffile logs while an input is converted with that input's keyed uid.

    tifffile warns without naming the file; a warning during conversion then says which input it is
    about (by uid, as reject lines do: no path reaches a log).
    """
    logger = logging.getLogger("tifffile")

    def name_it(record: logging.LogRecord) -> bool:
        record.msg = f"{label}: {record.msg}"
        return True

    logger.addFilter(name_it)
    try:
        yield
    finally:
        logger.removeFilter(name_it)
