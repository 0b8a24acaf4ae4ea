"""Sequential reading of MDS shard folders in memory, without a ``StreamingDataset``.

Training reads through ``StreamingDataset`` (shuffled, resumable, shared cache). Some jobs only need
every sample once, in order: training a tokenizer on the captions, or converting shards for a
baseline. Those read here: each shard is decompressed into memory (zstd shards are never
decompressed beside the originals, which a ``StreamingDataset`` over a local folder would do) and
decoded by :mod:`unimed.shards`, the project's one module for the MDS format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

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


def iter_samples(root: str) -> Iterator[dict[str, Any]]:
    """Every sample of every MDS folder under ``root``, in shard order, decoded by column
    (:func:`unimed.shards.iter_samples`, the one reader of the format)."""
    from unimed import shards

    for dirname in find_mds_dirs(root):
        yield from shards.iter_samples(dirname)
