"""Fixtures for the whole suite."""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True)
def _fresh_shared_memory():
    """StreamingDataset registers its folders in shared memory: clear leftovers around each test."""
    from streaming.base.util import clean_stale_shared_memory

    gc.collect()
    clean_stale_shared_memory()
    yield
    gc.collect()
    clean_stale_shared_memory()
