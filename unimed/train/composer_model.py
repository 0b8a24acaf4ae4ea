"""The Composer wrapper: batch -> embeddings -> contrastive loss, the FLOPs SpeedMonitor needs for MFU, and
the FSDP2 units with their mixed-precision policies.

``flops_per_batch`` counts the matrix multiplies of both towers (forward + backward = 3x forward) at the
batch's actual token width (batches are padded to their longest caption, not to the context length)
and the loss's similarity products; SpeedMonitor divides it by time and by the device's peak to report
model FLOPs utilization.

Precision under FSDP2: the towers' units compute in the trainer's precision (bf16 parameters on a GPU),
while the root unit, which after :func:`shard_towers` holds only the logit scale and SigLIP's bias, keeps
float32 (Composer's ``FULL`` policy): bf16 has 8 mantissa bits, so ``exp`` of a bf16 ``log(1/0.07)`` is
14.25 and near the bound only 98.9 or 100 exist. The loss itself runs in float32 with autocast off.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from composer.models import ComposerModel

from unimed.train.loss import _dist, contrastive_loss
from unimed.train.model import CLIPModel, ModelConfig, ResidualAttentionBlock

__all__ = [
    "UnimedCLIP",
    "forward_flops_per_sample",
    "train_flops_per_sample",
    "text_forward_flops",
    "vision_forward_flops",
    "shard_towers",
    "fix_gloo_gradient_average",
]

log = logging.getLogger(__name__)


def _transformer_flops(tokens: int, width: int, layers: int, hidden: int) -> float:
    """Forward FLOPs of ``layers`` pre-norm blocks on one sequence (QKV, attention, out, MLP)."""
    per_layer = 2 * tokens * (3 * width * width + width * width + 2 * width * hidden) + 2 * 2 * tokens * tokens * width
    return float(layers * per_layer)


def vision_forward_flops(cfg: ModelConfig, train: bool = False) -> float:
    """Forward FLOPs of one image through the ViT and its projection; ``train``: with the patch tokens
    ``patch_dropout`` leaves (the patch embedding still sees every patch)."""
    v = cfg.vision
    patches = (v.image_size // v.patch_size) ** 2
    kept = max(1, int(patches * (1.0 - v.patch_dropout))) if train else patches
    vision = 2 * patches * 3 * v.patch_size**2 * v.width  # patch embedding
    vision += _transformer_flops(kept + 1, v.width, v.layers, int(v.width * v.mlp_ratio))
    return float(vision + 2 * v.width * cfg.embed_dim)


def text_forward_flops(cfg: ModelConfig, tokens: int | None = None) -> float:
    """Forward FLOPs of one caption of ``tokens`` positions (default: the context length) through BERT
    and the projection. Padding positions are computed like any other, so they count."""
    t = cfg.text
    n = t.context_length if tokens is None else int(tokens)
    text = _transformer_flops(n, t.hidden_size, t.layers, t.intermediate_size)
    mid = (t.hidden_size + cfg.embed_dim) // 2
    return float(text + 2 * (t.hidden_size * mid + mid * cfg.embed_dim))


def _tower_train_flops(
    forward: float, per_layer: float, layers: int, locked: bool, unlocked: int, head: float
) -> float:
    """Forward + backward FLOPs of one tower: 3x forward where gradients flow; a locked tower's frozen
    part, below every trainable parameter, needs no backward at all (1x)."""
    if not locked:
        return 3.0 * forward
    trainable = unlocked * per_layer + (head if unlocked else 0.0)
    return (forward - trainable) + 3.0 * trainable


def train_flops_per_sample(cfg: ModelConfig, text_tokens: int | None = None) -> float:
    """Training FLOPs (forward and backward) of one pair, with the patch tokens ``patch_dropout`` keeps,
    captions of ``text_tokens`` positions, and no backward below a locked tower's trainable layers."""
    v, t = cfg.vision, cfg.text
    patches = (v.image_size // v.patch_size) ** 2
    kept = max(1, int(patches * (1.0 - v.patch_dropout)))
    v_layer = _transformer_flops(kept + 1, v.width, 1, int(v.width * v.mlp_ratio))
    vision = _tower_train_flops(
        vision_forward_flops(cfg, train=True),
        v_layer,
        v.layers,
        v.locked,
        v.unlocked_layers,
        2 * v.width * cfg.embed_dim,
    )
    n = t.context_length if text_tokens is None else int(text_tokens)
    mid = (t.hidden_size + cfg.embed_dim) // 2
    text = _tower_train_flops(
        text_forward_flops(cfg, n),
        _transformer_flops(n, t.hidden_size, 1, t.intermediate_size),
        t.layers,
        t.locked,
        t.unlocked_layers,
        2 * (t.hidden_size * mid + mid * cfg.embed_dim),
    )
    return vision + text


def forward_flops_per_sample(cfg: ModelConfig, text_tokens: int | None = None) -> float:
    """Forward FLOPs of one image and one caption (of ``text_tokens`` positions, default the context
    length) through both towers and their projections."""
    return vision_forward_flops(cfg) + text_forward_flops(cfg, text_tokens)


class UnimedCLIP(ComposerModel):
    """``CLIPModel`` for Composer: ``forward(batch)`` gives (image, text, scale), ``loss`` the contrastive loss.

    Placeholder images (``batch["valid"]`` False: broken in the shards, replaced by the loader) are
    left out of the loss on a single process; with several processes every rank keeps its rows, as
    the gathered columns must have the same count everywhere.
    """

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model
        self._flops = forward_flops_per_sample(model.cfg)  # at the full context length

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, tokens = batch["image"], batch["tokens"]
        return self.model(image.to(self.model.visual.conv1.weight.device), tokens)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """The contrastive loss in float32 (autocast off): features, scale and bias upcast first."""
        image, text, scale = outputs
        valid = batch.get("valid")
        if valid is not None and _dist()[1] == 1 and not bool(valid.all()):
            keep = valid.to(image.device)
            image, text = image[keep], text[keep]
        bias = self.model.logit_bias
        with torch.autocast(device_type=image.device.type, enabled=False):
            return contrastive_loss(
                image.float(),
                text.float(),
                scale.float(),
                kind=self.model.cfg.loss,
                impl=self.model.cfg.loss_impl,
                logit_bias=None if bias is None else bias.float(),
            )

    def flops_per_batch(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of this rank's batch (:func:`train_flops_per_sample`: 3x forward where gradients
        flow, the text tower at the batch's own token width) and 3x the two similarity products."""
        b = int(batch["image"].shape[0])
        per_sample = train_flops_per_sample(self.model.cfg, int(batch["tokens"].shape[-1]))
        _, world = _dist()
        sim = 2 * 2 * b * (b * world) * self.model.cfg.embed_dim
        return b * per_sample + 3.0 * sim


def shard_towers(model: CLIPModel, precision: str, reshard_after_forward: bool = True) -> int:
    """FSDP2-shard every transformer block and both towers, in the trainer's precision (Composer's
    ``DEFAULT`` policy: bf16 parameters and float32 gradient reduction under ``amp_bf16``).

    Call it after the process group exists and before the optimizer is built; Composer then wraps
    the root, :class:`CLIPModel`, with the policy the trainer gives it (``FULL``: float32), so the logit
    scale and bias, the only parameters left to the root, are gathered, used and reduced in float32.
    Composer's per-module hook (``fsdp_wrap_fn``) cannot carry a mixed-precision policy, hence this.
    Returns the number of units made.
    """
    from composer.core.precision import Precision
    from composer.distributed.fsdp2 import create_mixed_precision_policy
    from torch.distributed.fsdp import fully_shard
    from transformers.models.bert.modeling_bert import BertLayer

    policy = create_mixed_precision_policy(Precision(precision), "DEFAULT")
    blocks = [m for m in model.modules() if isinstance(m, ResidualAttentionBlock | BertLayer)]
    for unit in [*blocks, model.visual, model.text]:  # inner units before the towers that hold them
        fully_shard(unit, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    log.info(
        "unimed.train: FSDP2 units: %d blocks and 2 towers in %s, the logit scale in float32",
        len(blocks),
        policy.param_dtype or torch.float32,
    )
    return len(blocks) + 2


def _reduce_scatter_avg_sums() -> bool:
    """Whether this process group's ``reduce_scatter_tensor`` with ``AVG`` returns the sum (gloo does,
    silently: it has no AVG and reduces as SUM). One tiny collective; every rank must call it."""
    import torch.distributed as dist

    world = dist.get_world_size()
    out = torch.zeros(1)
    dist.reduce_scatter_tensor(out, torch.ones(world), op=dist.ReduceOp.AVG)
    return math.isclose(float(out), world) and world > 1


def fix_gloo_gradient_average(model: torch.nn.Module) -> int:
    """Make FSDP2's gradient reduction an average on gloo (CPU) process groups, as it is on NCCL.

    FSDP2 reduce-scatters gradients with ``ReduceOp.AVG``; gloo computes a sum instead, so every
    gradient comes out world-size times too large (Adam hides it, clipping and eps do not). Where a
    probe shows this, each FSDP unit gets a post-reduce hook dividing by the world size. Returns the
    number of units hooked (0 on NCCL, on one process, or once PyTorch fixes gloo).
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() != "gloo":
        return 0
    if dist.get_world_size() == 1 or not _reduce_scatter_avg_sums():
        return 0
    world = dist.get_world_size()

    def divide(reduce_output: torch.Tensor) -> None:
        reduce_output.div_(world)

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_all_reduce_hook(divide)
    log.info(
        "unimed.train: gloo reduce-scatter sums for AVG; %d FSDP units divide their gradients by %d", len(units), world
    )
    return len(units)
