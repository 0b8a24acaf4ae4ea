"""The contrastive losses over the global batch: symmetric InfoNCE (CLIP) and sigmoid (SigLIP).

Each rank keeps its own rows and compares them with the columns of every rank: features are
gathered with gradient (``torch.distributed.nn.functional.all_gather``), the positives of rank r sit
at columns ``r * B + i``. The arithmetic itself lives in ``unimed.kernels`` (a tiled Triton kernel on
CUDA, its PyTorch reference elsewhere); :func:`contrastive_loss` is the one place that calls it.
"""

from __future__ import annotations

import torch

__all__ = ["gather_with_grad", "contrastive_loss", "LOSSES"]

LOSSES: tuple[str, ...] = ("clip", "siglip")


def _dist() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, D] of every rank along dim 0, keeping gradients to every rank's rows."""
    _, world = _dist()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    kind: str = "clip",
    impl: str = "auto",
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of this rank's rows against the global batch's columns.

    ``image_features`` and ``text_features`` are this rank's [B, D] embeddings, used as given (the
    model normalizes them); ``logit_scale`` is the temperature (not its log), a 1-element tensor;
    ``logit_bias`` is SigLIP's bias. ``impl`` picks the ``unimed.kernels`` implementation.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    rank, _ = _dist()
    offset = rank * image_features.shape[0]
    scale = logit_scale.reshape(1)
    clip_fn, siglip_fn, kwargs = _kernels(impl)
    if kind == "clip":
        return clip_fn(image_features, text_features, scale, image_all=gather_with_grad(image_features),
                       text_all=gather_with_grad(text_features), offset=offset, **kwargs)
    bias = torch.zeros(1, device=image_features.device) if logit_bias is None else logit_bias.reshape(1)
    return siglip_fn(image_features, text_features, scale, bias, text_all=gather_with_grad(text_features),
                     offset=offset, **kwargs)


def _kernels(impl: str):
    """(clip_loss, siglip_loss, extra kwargs) from ``unimed.kernels``: its dispatcher, else its references.

    The dispatcher (``unimed.kernels.clip_loss``, Triton on CUDA) is used whenever the package has
    it; a package that holds only its PyTorch references serves them (``impl`` is then moot).
    """
    import unimed.kernels as kernels

    if hasattr(kernels, "clip_loss") and hasattr(kernels, "siglip_loss"):
        return kernels.clip_loss, kernels.siglip_loss, {"impl": impl}
    from unimed.kernels import reference

    return reference.clip_loss_reference, reference.siglip_loss_reference, {}
