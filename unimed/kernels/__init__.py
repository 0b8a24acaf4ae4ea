"""Triton kernels beside their PyTorch references, behind one dispatcher.

``clip_loss`` (symmetric InfoNCE) and ``siglip_loss`` take ``impl="auto" | "triton" | "torch"``;
``auto`` takes the tiled Triton kernel on CUDA and the reference elsewhere. Triton is imported only
when the kernel path is chosen.
"""

from __future__ import annotations

from unimed.kernels.dispatch import choose_impl, clip_loss, contrastive_ce, siglip_loss
from unimed.kernels.reference import clip_loss_reference, contrastive_ce_reference, siglip_loss_reference

__all__ = ["choose_impl", "clip_loss", "contrastive_ce", "siglip_loss", "clip_loss_reference",
           "contrastive_ce_reference", "siglip_loss_reference"]
