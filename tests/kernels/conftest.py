"""Kernel tests run the Triton kernels on CPU through the interpreter.

TRITON_INTERPRET must be set before ``unimed.kernels.contrastive`` (the module with the
``@triton.jit`` functions) is first imported; the dispatcher imports it lazily, so setting it here,
at collection time, is early enough.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
