"""Reading a converted folder back with a stock ``streaming.StreamingDataset`` (for verify/inspect/tests).

Index files are read (and checked, in one place) by :func:`unimed.shards.read_index`. The folder is
used as the *remote* and a temporary folder as the local cache, so reading never writes
decompressed shards into the output folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from unimed.errors import UserError
from unimed.shards import read_index

__all__ = ["open_dataset", "read_index"]


@contextlib.contextmanager
def open_dataset(folder: str) -> Iterator[Any]:
    """A ``StreamingDataset`` over ``folder`` (unshuffled, one process) for the duration of the block."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    index = read_index(folder)
    if not any(shard.get("samples") for shard in index["shards"]):
        raise UserError(f"{folder}: holds no samples (no input was converted; the reasons are in "
                        f"{os.path.join(folder, 'rejects.jsonl')})")
    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory(prefix="unimed-read-") as cache:
        ds = StreamingDataset(remote=os.path.abspath(folder), local=cache, shuffle=False, batch_size=1,
                              download_retry=1)
        try:
            yield ds
        finally:
            del ds
            clean_stale_shared_memory()
