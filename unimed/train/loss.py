"""The contrastive losses over the global batch, as a registry: symmetric InfoNCE (CLIP) and sigmoid (SigLIP).

A loss is one function registered under a name, with what it needs of the model::

    @register_loss("siglip", needs_bias=True, init_bias=-10.0)
    def sigmoid_loss(image_features, text_features, logit_scale, logit_bias, impl): ...

``model.loss`` in a training config names one; config validation, the model (whether it has a
learnable ``logit_bias``), the export and the checkpoint import all ask :func:`get_loss`, so a new loss
touches no other file. A loss function gets this rank's [B, D] embeddings (normalized by the model),
the temperature (not its log) and the bias as 1-element tensors (``logit_bias`` None when the loss
takes none), and the ``unimed.kernels`` implementation to use; it compares its rows with the columns
of every rank: features are gathered with gradient (:func:`gather_with_grad`), and the positives of
rank r sit at columns ``r * B + i`` (:func:`rank_offset`).

This module imports no torch at load time (a config is validated without it); the functions do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unimed.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LossSpec",
    "register_loss",
    "get_loss",
    "registered_losses",
    "loss_for_state",
    "gather_with_grad",
    "rank_offset",
    "contrastive_loss",
    "infonce_loss",
    "sigmoid_loss",
]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and what the model must hold for it."""

    name: str
    fn: Callable[..., torch.Tensor]
    needs_bias: bool = False  # the model gets a learnable 1-element logit_bias
    init_bias: float = 0.0  # ... starting at this value


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, *, needs_bias: bool = False, init_bias: float = 0.0):
    """Decorator: register ``fn(image_features, text_features, logit_scale, logit_bias, impl)`` as ``name``.

    A name registered twice warns and the later function wins (timm's rule)."""

    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _REGISTRY:
            warnings.warn(
                f"loss {name!r} registered twice; {fn.__module__}.{fn.__qualname__} replaces the first", stacklevel=2
            )
        _REGISTRY[name] = LossSpec(name, fn, needs_bias, float(init_bias))
        return fn

    return decorate


def registered_losses() -> tuple[str, ...]:
    """The registered loss names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def get_loss(name: str, where: str = "model.loss") -> LossSpec:
    """The registered loss ``name``; a one-line ``UserError`` listing the registered ones otherwise."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UserError(f"{where} {name!r} is not a registered loss: use one of {', '.join(_REGISTRY)}")
    return spec


def loss_for_state(has_bias: bool) -> str:
    """The loss to describe a foreign checkpoint by: the first registered one that does (or does not)
    take a logit bias, as the checkpoint holds one or not (``clip`` or ``siglip`` for the built-ins)."""
    return next(s.name for s in _REGISTRY.values() if s.needs_bias == has_bias)


def _dist() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, D] of every rank along dim 0, keeping gradients to every rank's rows."""
    import torch

    _, world = _dist()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def rank_offset(rows: torch.Tensor) -> int:
    """The global column of this rank's first positive: rank * B for ``rows`` [B, D]."""
    return _dist()[0] * rows.shape[0]


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    kind: str = "clip",
    impl: str = "auto",
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The registered loss ``kind`` of this rank's rows against the global batch's columns.

    ``logit_scale`` is the temperature (not its log), a 1-element tensor; ``logit_bias`` the model's
    bias, for a loss that takes one (zero when not given); ``impl`` picks the ``unimed.kernels``
    implementation.
    """
    import torch

    spec = get_loss(kind)
    bias = None
    if spec.needs_bias:
        bias = torch.zeros(1, device=image_features.device) if logit_bias is None else logit_bias.reshape(1)
    return spec.fn(image_features, text_features, logit_scale.reshape(1), bias, impl)


@register_loss("clip")
def infonce_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    impl: str,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): image-to-text and text-to-image cross-entropy over the global batch."""
    from unimed.kernels import clip_loss

    return clip_loss(
        image_features,
        text_features,
        logit_scale,
        image_all=gather_with_grad(image_features),
        text_all=gather_with_grad(text_features),
        offset=rank_offset(image_features),
        impl=impl,
    )


@register_loss("siglip", needs_bias=True, init_bias=-10.0)
def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    impl: str,
) -> torch.Tensor:
    """Sigmoid loss (SigLIP): each image against every caption of the global batch, a bias per logit."""
    from unimed.kernels import siglip_loss

    return siglip_loss(
        image_features,
        text_features,
        logit_scale,
        logit_bias,
        text_all=gather_with_grad(text_features),
        offset=rank_offset(image_features),
        impl=impl,
    )
