"""Reading a converted folder back (verify, inspect) leaves every other streaming dataset on the machine
alone: a training run's or another `ingest verify`'s shared memory is theirs."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from unimed.ingest.reader import open_dataset


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm to look at")
def test_reading_leaves_a_live_datasets_shared_memory_alone(tmp_path, helpers, monkeypatch):
    from streaming import StreamingDataset

    # Streaming skips a prefix whose lock files lie in the temp folder: a fresh one gives the live dataset
    # the low prefix a clean machine gives it, where a sweep of "stale" shared memory starts.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    helpers.convert([src], out, modality="xray")
    with tempfile.TemporaryDirectory() as cache:
        live = StreamingDataset(remote=str(out), local=cache, shuffle=False, batch_size=1)
        theirs = f"/dev/shm/{live._shm_prefix_int:06d}_locals"
        assert os.path.exists(theirs)
        for _ in range(2):
            with open_dataset(str(out)) as ds:
                assert len(ds) == 1
        assert os.path.exists(theirs)  # `clean_stale_shared_memory` would have unlinked it
        del live
