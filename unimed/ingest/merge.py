"""Merging chunk folders into one dataset: the index (mosaicml-streaming's ``merge_index``), the
rejects and ``summary.json``. Also the command ``ingest merge DIR`` for the parts of a split job."""

from __future__ import annotations

import glob
import json
import os
from collections import Counter

from unimed.errors import UserError
from unimed.ingest.writer import DONE_FILE

__all__ = ["STATE_DIR", "done_chunks", "merge", "write_summary"]

STATE_DIR = ".unimed"  # plans and planning rejects, beside the chunk folders


def done_chunks(out: str) -> dict[str, dict]:
    done = {}
    for d in sorted(os.listdir(out)):
        f = os.path.join(out, d, DONE_FILE)
        if os.path.isfile(f) and os.path.isfile(os.path.join(out, d, "index.json")):
            with open(f) as fh:
                done[d] = json.load(fh)
    return done


def merge(out: str) -> dict:
    """Merge the index of every complete chunk folder into ``<out>/index.json`` and write the summary.

    Also the command ``ingest merge DIR`` after copying the parts of a split job into one folder.
    """
    from streaming.base.util import merge_index

    if not os.path.isdir(out):
        raise UserError(f"{out}: no such folder")
    done = done_chunks(out)
    index_files = [os.path.join(out, d, "index.json") for d in done]
    if os.path.exists(os.path.join(out, "index.json")):  # rebuilt from the chunks every time
        os.remove(os.path.join(out, "index.json"))
    if index_files:
        import logging

        quiet = [logging.getLogger(n) for n in ("", "streaming")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            merge_index(index_files, out, keep_local=True)
        finally:
            for lg, lv in zip(quiet, levels):
                lg.setLevel(lv)
    else:  # every input was rejected: an empty but valid dataset
        with open(os.path.join(out, "index.json"), "w") as fh:
            json.dump({"version": 2, "shards": []}, fh)
    rejects: list[dict] = []
    state = os.path.join(out, STATE_DIR)
    for f in sorted(glob.glob(os.path.join(state, "plan-rejects-*.jsonl"))):
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
    with open(os.path.join(out, "rejects.jsonl.tmp"), "w") as fh:
        for r in sorted(rejects, key=lambda r: r["path"]):
            fh.write(json.dumps(r) + "\n")
    os.replace(os.path.join(out, "rejects.jsonl.tmp"), os.path.join(out, "rejects.jsonl"))
    summary = {
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
    return summary


def write_summary(out: str, summary: dict) -> None:
    tmp = os.path.join(out, "summary.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(tmp, os.path.join(out, "summary.json"))
