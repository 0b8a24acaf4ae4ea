"""Fixtures for the whole suite."""

from __future__ import annotations

import gc
import os

import pytest

_SHM = "/dev/shm"


def _streaming_shm() -> bool:
    """Whether mosaicml-streaming left shared-memory blocks (its names start with a 6-digit prefix)."""
    try:
        return any(name[:6].isdigit() and name[6:7] == "_" for name in os.listdir(_SHM))
    except OSError:
        return True  # no /dev/shm to look at: clean every time


def _clean() -> None:
    if not _streaming_shm():
        return  # nothing to clean: skip the 0.4 s full garbage collection of a process holding torch
    from streaming.base.util import clean_stale_shared_memory

    gc.collect()
    clean_stale_shared_memory()


@pytest.fixture(autouse=True)
def _fresh_shared_memory():
    """StreamingDataset registers its folders in shared memory: clear leftovers around each test."""
    _clean()
    yield
    _clean()
