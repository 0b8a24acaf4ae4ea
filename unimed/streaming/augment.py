"""The training augmentations, as a registry: the random-resized crop and the horizontal flip.

An augmentation is one registered :class:`Augmentation`::

    register_augmentation(Augmentation("invert", draw=..., identity=..., cpu=..., dali=...))

``data.augmentations`` in a training config names the ones to apply, in order; config validation,
the dataset (which draws the parameters), the CPU path (:class:`unimed.streaming.decode.WorkerDecode`)
and the DALI graph (:func:`unimed.streaming.dali.build_pipeline`) all ask :func:`get_augmentation`,
so a new augmentation touches no other file.

The dataset draws each one's parameters per sample into ``sample[name]`` as a pure function of
(seed, epoch, sample id) (:meth:`AugmentContext.uniform`), so a resumed run augments exactly as an
uninterrupted one, which a pipeline RNG (not part of a checkpoint) could not promise. ``cpu`` and
``dali`` apply them after decode and resize, on ``uint8`` CHW images; ``None`` means the op is fused
into decoding (the crop: only its window is decoded, :mod:`unimed.streaming.decode`).

This module imports no torch or DALI at load time (a config is validated without them); the ops do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unimed.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = [
    "AugmentContext",
    "Augmentation",
    "PostOp",
    "augmentations",
    "crop_window",
    "get_augmentation",
    "register_augmentation",
    "sample_key",
    "uniform",
]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_key(seed: int, epoch: int, sample_id: int) -> int:
    """The 64-bit key of one sample in one epoch: every per-sample draw hashes it."""
    return _splitmix64(_splitmix64(_splitmix64(int(seed)) ^ int(epoch)) ^ int(sample_id))


def uniform(key: int, k: int) -> float:
    """Draw number ``k`` of the sample ``key``: uniform in [0, 1), a pure function of both."""
    return (_splitmix64(key ^ (k + 1)) >> 11) / float(1 << 53)


@dataclass(frozen=True)
class AugmentContext:
    """What an augmentation's ``draw`` may read about one sample and the loader's settings."""

    seed: int
    epoch: int
    sample_id: int
    size: tuple[int, int]  # the encoded image's (width, height); (1, 1) when its header gives none
    modality: str
    scale: tuple[float, float]  # random-resized-crop area
    ratio: tuple[float, float]  # random-resized-crop aspect
    flip_modalities: frozenset[str] = frozenset()

    def uniform(self, k: int) -> float:
        """Draw number ``k`` of this sample: each augmentation uses its own ``k`` (crop 0-21, flip 22)."""
        return uniform(sample_key(self.seed, self.epoch, self.sample_id), k)


#: A CPU post-decode op: (uint8 [C, S, S] image, the sample's parameters) -> the augmented image.
PostOp = Callable[["torch.Tensor", np.ndarray], "torch.Tensor"]


@dataclass(frozen=True)
class Augmentation:
    """A registered augmentation: how its per-sample parameters are drawn, and how each path applies them.

    ``dtype`` and ``ndim`` describe the parameters (the DALI external input of the same name)."""

    name: str
    draw: Callable[[AugmentContext], np.ndarray]  # the parameters when training
    identity: Callable[[AugmentContext], np.ndarray]  # ... when not augmenting
    cpu: PostOp | None  # uint8 [C, S, S] -> same; None: fused into decoding
    dali: Callable[[Any, Any], Any] | None  # (images node, parameters node) -> images node; None: fused
    dtype: str = "uint8"
    ndim: int = 0

    def check_path(self, path: str) -> None:
        """Refuse (one line) an augmentation the ``path`` ("cpu" or "dali") cannot apply, rather than skip it."""
        fused = self.name == "crop"  # the only op the decoders read by name (they decode only its window)
        if not fused and getattr(self, path) is None:
            other = "DALI (GPU) path" if path == "dali" else "CPU path"
            raise UserError(
                f"augmentation {self.name!r} has no {path} op: the {other} cannot apply it "
                f"(register it with {path}=..., or leave it out of data.augmentations)"
            )


_REGISTRY: dict[str, Augmentation] = {}


def register_augmentation(aug: Augmentation) -> Augmentation:
    """Register ``aug`` under its name; a name registered twice warns and the later one wins (timm's rule)."""
    if aug.name in _REGISTRY:
        warnings.warn(f"augmentation {aug.name!r} registered twice; the later one replaces the first", stacklevel=2)
    _REGISTRY[aug.name] = aug
    return aug


def augmentations() -> tuple[str, ...]:
    """The registered augmentation names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def get_augmentation(name: str, where: str = "augmentation") -> Augmentation:
    """The registered augmentation ``name``; a one-line ``UserError`` listing the registered ones otherwise."""
    aug = _REGISTRY.get(name)
    if aug is None:
        raise UserError(f"{where}: unknown {name!r}; registered: {', '.join(_REGISTRY)}")
    return aug


# --- crop: torchvision's RandomResizedCrop window, fused into decoding --------------------------------

_WHOLE = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 windows before its central fallback
_DRAW_X, _DRAW_Y, _DRAW_FLIP = 2 * _CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS + 1, 2 * _CROP_ATTEMPTS + 2


def crop_window(key: int, scale: tuple[float, float], ratio: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """The random-resized-crop window (x, y, w, h, relative to the image) of the sample ``key``.

    The window follows torchvision's ``RandomResizedCrop`` over the image's pixels (``size`` = width,
    height): an area fraction drawn from ``scale`` and a log-uniform aspect ratio (width / height, in
    pixels) from ``ratio``; a window that does not fit is drawn again, up to 10 times, then the
    largest central window of an allowed ratio is taken (the whole image when its own ratio is
    allowed). So every window covers at least ``scale[0]`` of the image, whatever its shape.
    Offsets and sizes stay continuous (the decoder's slice rounds them).
    """
    width, height = float(size[0]), float(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    area, lo, hi = width * height, math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(_CROP_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * uniform(key, 2 * attempt))
        aspect = math.exp(lo + (hi - lo) * uniform(key, 2 * attempt + 1))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            x, y = (width - w) * uniform(key, _DRAW_X), (height - h) * uniform(key, _DRAW_Y)
            break
    else:  # torchvision's fallback: a central window, of the nearest allowed ratio
        own = width / height
        if own < min(ratio):
            w, h = width, width / min(ratio)
        elif own > max(ratio):
            w, h = height * max(ratio), height
        else:
            w, h = width, height
        x, y = (width - w) / 2, (height - h) / 2
    return np.array([x / width, y / height, min(1.0, w / width), min(1.0, h / height)], dtype=np.float32)


def _draw_crop(ctx: AugmentContext) -> np.ndarray:
    return crop_window(sample_key(ctx.seed, ctx.epoch, ctx.sample_id), ctx.scale, ctx.ratio, ctx.size)


def _whole(ctx: AugmentContext) -> np.ndarray:
    return _WHOLE.copy()


register_augmentation(Augmentation("crop", _draw_crop, _whole, cpu=None, dali=None, dtype="float32", ndim=1))


# --- flip: a horizontal mirror, only for the modalities that allow it --------------------------------


def _draw_flip(ctx: AugmentContext) -> np.ndarray:
    allowed = ctx.modality in ctx.flip_modalities
    return np.array(int(allowed and ctx.uniform(_DRAW_FLIP) < 0.5), dtype=np.uint8)


def _cpu_flip(image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    return image.flip(-1) if int(params) else image


def _dali_flip(images: Any, params: Any) -> Any:
    from nvidia.dali import fn, types

    return fn.flip(images, horizontal=fn.cast(params, dtype=types.INT32), vertical=0)  # type: ignore[attr-defined]


def _no_flip(ctx: AugmentContext) -> np.ndarray:
    return np.array(0, dtype=np.uint8)


register_augmentation(Augmentation("flip", _draw_flip, _no_flip, cpu=_cpu_flip, dali=_dali_flip))
