"""PyTorch references of the contrastive losses: the plain matrix versions the kernels must match.

Conventions shared with the Triton kernels (:mod:`unimed.kernels.contrastive`):

* ``rows`` [N, d] are the local features of one side, ``cols`` [M, d] the (possibly gathered)
  features of the other side; the positive of row ``i`` is column ``i + offset``.
* ``logit_scale`` multiplies the similarities (already exponentiated), a 1-element tensor.
* Features are used as given (normalize them before, as CLIP does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_ce_reference", "clip_loss_reference", "siglip_loss_reference"]


def contrastive_ce_reference(
    rows: torch.Tensor, cols: torch.Tensor, logit_scale: torch.Tensor, offset: int = 0
) -> torch.Tensor:
    """Mean over rows of the cross-entropy of ``scale * rows @ cols.T`` against column ``i + offset``."""
    logits = logit_scale.reshape(()) * rows @ cols.T
    labels = torch.arange(rows.shape[0], device=rows.device) + offset
    return F.cross_entropy(logits.float(), labels)


def clip_loss_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    image_all: torch.Tensor | None = None,
    text_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of the image→text and text→image cross-entropies."""
    image_all = image_features if image_all is None else image_all
    text_all = text_features if text_all is None else text_all
    return 0.5 * (
        contrastive_ce_reference(image_features, text_all, logit_scale, offset)
        + contrastive_ce_reference(text_features, image_all, logit_scale, offset)
    )


def siglip_loss_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    text_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Sigmoid loss: ``-sum(log sigmoid(z * (scale * x @ y.T + bias))) / N`` with z = +1 on positives."""
    text_all = text_features if text_all is None else text_all
    logits = (logit_scale.reshape(()) * image_features @ text_all.T + logit_bias.reshape(())).float()
    n = image_features.shape[0]
    z = -torch.ones_like(logits)
    z[torch.arange(n, device=logits.device), torch.arange(n, device=logits.device) + offset] = 1.0
    return -F.logsigmoid(z * logits).sum() / n
