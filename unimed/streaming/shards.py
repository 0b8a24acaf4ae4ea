"""Sequential reading of MDS shard folders in memory, without a ``StreamingDataset``.

Training reads through ``StreamingDataset`` (shuffled, resumable, shared cache). Some jobs only need
every sample once, in order: training a tokenizer on the captions, or converting shards for a
baseline. Those read here: each shard is decompressed into memory (zstd shards are never
decompressed beside the originals, which a ``StreamingDataset`` over a local folder would do) and
decoded with mosaicml-streaming's own MDS reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from unimed.errors import UserError

__all__ = ["find_mds_dirs", "iter_samples"]


def find_mds_dirs(root: str) -> list[str]:
    """MDS folders under ``root``: ``root`` itself if it holds an ``index.json``, else each top-most
    folder below it that does (a merged index already covers its sub-folders)."""
    if os.path.isfile(os.path.join(root, "index.json")):
        return [root]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "index.json" in filenames:
            found.append(dirpath)
            dirnames[:] = []  # do not descend into a folder an index covers
        dirnames.sort()
    if not found:
        raise UserError(f"No MDS index.json under {root!r}: point at a folder written by `ingest convert`.")
    return sorted(found)


def _shard_bytes(dirname: str, info: dict[str, Any]) -> bytes:
    from streaming.base.compression import decompress

    raw_path = os.path.join(dirname, info["raw_data"]["basename"])
    if os.path.isfile(raw_path):
        with open(raw_path, "rb") as fh:
            return fh.read()
    zip_data = info.get("zip_data")
    if not zip_data:
        raise UserError(f"Shard {raw_path!r} is missing")
    with open(os.path.join(dirname, zip_data["basename"]), "rb") as fh:
        return decompress(info["compression"], fh.read())


def iter_samples(root: str) -> Iterator[dict[str, Any]]:
    """Every sample of every MDS folder under ``root``, in shard order, decoded by column."""
    from streaming.base.format import reader_from_json

    for dirname in find_mds_dirs(root):
        with open(os.path.join(dirname, "index.json")) as fh:
            index = json.load(fh)
        for info in index["shards"]:
            reader = reader_from_json(dirname, None, info)
            data = _shard_bytes(dirname, info)
            offsets = np.frombuffer(data, np.uint32, count=reader.samples + 1, offset=4)
            for begin, end in zip(offsets[:-1], offsets[1:]):
                yield reader.decode_sample(data[begin:end])
