"""Reading a converted folder back with a stock ``streaming.StreamingDataset`` (for verify/inspect/tests).

Index files are read (and checked, in one place) by :func:`unimed.shards.read_index`. The folder is
used as the *remote* and a temporary folder as the local cache, so reading never writes
decompressed shards into the output folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from unimed.errors import UserError
from unimed.shards import read_index

__all__ = ["open_dataset", "read_index"]


@contextlib.contextmanager
def open_dataset(folder: str) -> Iterator[Any]:
    """A ``StreamingDataset`` over ``folder`` (unshuffled, one process) for the duration of the block.

    Its shared memory is streaming's own, released when the process exits. Nothing here calls
    ``clean_stale_shared_memory``: that unlinks the shared memory of *every* streaming dataset on the
    machine, live ones included (a training run, another ``ingest verify``), and races with them.
    """
    from streaming import StreamingDataset

    index = read_index(folder)
    if not any(shard.get("samples") for shard in index["shards"]):
        raise UserError(
            f"{folder}: holds no samples (no input was converted; the reasons are in "
            f"{os.path.join(folder, 'rejects.jsonl')})"
        )
    with tempfile.TemporaryDirectory(prefix="unimed-read-") as cache:
        for attempt in range(_ATTEMPTS):
            try:
                ds = StreamingDataset(
                    remote=os.path.abspath(folder), local=cache, shuffle=False, batch_size=1, download_retry=1
                )
                break
            except FileExistsError:  # another process took the same free shared-memory prefix first
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield ds
        finally:
            del ds


_ATTEMPTS = 8
