"""Triton kernels beside their PyTorch references, behind one dispatcher.

``clip_loss`` (symmetric InfoNCE) and ``siglip_loss`` (sigmoid) take ``impl="auto" | "triton" |
"torch"``; ``auto`` takes the tiled Triton kernels on CUDA and the references elsewhere, and
``$UNIMED_KERNELS`` overrides it. The kernels never build the B×B logits matrix: memory is
O(B·d + B). For the distributed form (local rows against gathered columns with a label offset) see
:mod:`unimed.kernels.dispatch`. Triton is imported only when the kernel path is taken, so this package
imports on machines without a GPU or without Triton.
"""

from __future__ import annotations

from unimed.kernels.dispatch import IMPLS, choose_impl, clip_loss, contrastive_ce, siglip_loss
from unimed.kernels.reference import clip_loss_reference, contrastive_ce_reference, siglip_loss_reference

__all__ = [
    "IMPLS",
    "choose_impl",
    "clip_loss",
    "contrastive_ce",
    "siglip_loss",
    "clip_loss_reference",
    "contrastive_ce_reference",
    "siglip_loss_reference",
]
