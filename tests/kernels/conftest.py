"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined, so the kernels module
is imported here, at collection, with the variable set; the variable is then restored so the rest of
the suite (and any other Triton code) sees the environment it was started with. On a CUDA machine the
kernels are compiled as usual.
"""

from __future__ import annotations

import os
import sys

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
