"""The Composer wrapper: batch -> embeddings -> contrastive loss, and the FLOPs SpeedMonitor needs for MFU.

``flops_per_batch`` counts the matrix multiplies of both towers (forward + backward = 3x forward)
and the loss's similarity products; SpeedMonitor divides it by time and by the device's peak to
report model FLOPs utilization.
"""

from __future__ import annotations

from typing import Any

import torch
from composer.models import ComposerModel

from unimed.train.loss import _dist, contrastive_loss
from unimed.train.model import CLIPModel, ModelConfig

__all__ = ["UnimedCLIP", "forward_flops_per_sample"]


def _transformer_flops(tokens: int, width: int, layers: int, hidden: int) -> float:
    """Forward FLOPs of ``layers`` pre-norm blocks on one sequence (QKV, attention, out, MLP)."""
    per_layer = 2 * tokens * (3 * width * width + width * width + 2 * width * hidden) + 2 * 2 * tokens * tokens * width
    return float(layers * per_layer)


def forward_flops_per_sample(cfg: ModelConfig) -> float:
    """Forward FLOPs of one image and one caption through both towers and their projections."""
    v, t = cfg.vision, cfg.text
    patches = (v.image_size // v.patch_size) ** 2
    vision = 2 * patches * 3 * v.patch_size**2 * v.width  # patch embedding
    vision += _transformer_flops(patches + 1, v.width, v.layers, int(v.width * v.mlp_ratio))
    vision += 2 * v.width * cfg.embed_dim
    n = t.context_length
    text = _transformer_flops(n, t.hidden_size, t.layers, t.intermediate_size)
    mid = (t.hidden_size + cfg.embed_dim) // 2
    text += 2 * (t.hidden_size * mid + mid * cfg.embed_dim)
    return float(vision + text)


class UnimedCLIP(ComposerModel):
    """``CLIPModel`` for Composer: ``forward(batch)`` gives (image, text, scale), ``loss`` the contrastive loss.

    Placeholder images (``batch["valid"]`` False: broken in the shards, replaced by the loader) are
    left out of the loss on a single process; with several processes every rank keeps its rows, as
    the gathered columns must have the same count everywhere.
    """

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model
        self._flops = forward_flops_per_sample(model.cfg)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, tokens = batch["image"], batch["tokens"]
        return self.model(image.to(self.model.visual.conv1.weight.device), tokens)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        image, text, scale = outputs
        valid = batch.get("valid")
        if valid is not None and _dist()[1] == 1 and not bool(valid.all()):
            keep = valid.to(image.device)
            image, text = image[keep], text[keep]
        bias = self.model.logit_bias
        return contrastive_loss(image, text, scale, kind=self.model.cfg.loss, impl=self.model.cfg.loss_impl,
                                logit_bias=bias)

    def flops_per_batch(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of this rank's batch (3x forward, plus the two similarity products)."""
        b = int(batch["image"].shape[0])
        _, world = _dist()
        sim = 2 * 2 * b * (b * world) * self.model.cfg.embed_dim
        return 3.0 * (b * self._flops + sim)
