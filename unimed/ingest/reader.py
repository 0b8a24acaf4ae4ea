"""Reading a converted folder back with a stock ``streaming.StreamingDataset`` (for verify/inspect/tests).

The folder is used as the *remote* and a temporary folder as the local cache, so reading never
writes decompressed shards into the output folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from unimed.errors import UserError

__all__ = ["open_dataset", "read_index"]


def read_index(folder: str) -> dict:
    """The folder's ``index.json``; a missing, empty or damaged one is a one-line UserError."""
    import json

    path = os.path.join(folder, "index.json")
    if not os.path.isfile(path):
        raise UserError(f"{folder}: no index.json (not a converted folder, or the run has not finished)")
    try:
        with open(path) as fh:
            index = json.load(fh)
    except (ValueError, UnicodeDecodeError):
        index = None
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise UserError(f"{path}: empty or damaged index; rerun `ingest merge {folder}` to rebuild it")
    return index


@contextlib.contextmanager
def open_dataset(folder: str) -> Iterator[Any]:
    """A ``StreamingDataset`` over ``folder`` (unshuffled, one process) for the duration of the block."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    read_index(folder)
    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory(prefix="unimed-read-") as cache:
        ds = StreamingDataset(remote=os.path.abspath(folder), local=cache, shuffle=False, batch_size=1,
                              download_retry=1)
        try:
            yield ds
        finally:
            del ds
            clean_stale_shared_memory()
