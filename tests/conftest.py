"""Fixtures for the whole suite.

The Triton kernels are defined here first, under Triton's interpreter when there is no GPU: Triton reads
``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined, and a test module that imports composer
(which imports ``triton.language``) may be collected before ``tests/kernels``. The variable is restored
at once, so the rest of the suite sees the environment it was started with.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "unimed.kernels.contrastive" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import unimed.kernels.contrastive  # noqa: F401  (defines the kernels for the interpreter)
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before

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
