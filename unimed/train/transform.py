"""The evaluation transform: one deterministic preprocessing for ``unimed eval``, the API and exports.

Shorter side resized bicubically to the model's size, centre crop, handed over as **uint8** ``[3, S, S]``
like the training loaders' batches: the training normalization (``data.mean``/``data.std``, CLIP's by
default) is applied by the model itself (``CLIPModel.encode_image``), once, on its device, from the
values recorded here. 16-bit images map to 8 bits as in training (``round(v * 255 / 65535)``, the full
range); 32-bit and float images, which have no fixed range, are min-max scaled. It travels with a
model (checkpoint bundle, exported folders) as ``preprocess``:
``{"size", "mean", "std", "interpolation": "bicubic", "resize_mode": "shortest"}``, the same keys
open_clip's ``preprocess_cfg`` uses, so an exported model is preprocessed the same way by open_clip.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unimed.errors import UserError
from unimed.streaming.config import CLIP_MEAN, CLIP_STD

__all__ = ["EvalTransform", "CLIP_MEAN", "CLIP_STD"]


@dataclass(frozen=True)
class EvalTransform:
    """Image (path, bytes, PIL image or array) -> uint8 tensor [3, size, size]; ``mean``/``std`` are
    the normalization the model applies (recorded in ``to_dict``, for the model and for exports)."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def to_dict(self) -> dict[str, Any]:
        """The open_clip-style ``preprocess_cfg`` of this transform."""
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EvalTransform:
        size = doc["size"]
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        return cls(
            size, tuple(float(x) for x in doc.get("mean", CLIP_MEAN)), tuple(float(x) for x in doc.get("std", CLIP_STD))
        )

    def _image(self, image: Any):
        from PIL import Image

        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(image)))
        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise UserError(f"image {os.fspath(image)!r} does not exist")
            return Image.open(image)
        if isinstance(image, np.ndarray):
            arr = image if image.ndim == 2 or image.shape[-1] in (1, 3, 4) else np.moveaxis(image, 0, -1)
            return Image.fromarray(
                np.ascontiguousarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
            )
        raise UserError(
            f"cannot read an image from a {type(image).__name__}: give a path, bytes, a PIL image or an array"
        )

    def array(self, image: Any) -> np.ndarray:
        """The preprocessed image as uint8 [3, size, size] (not normalized: the model does that)."""
        from PIL import Image

        img = self._image(image)
        if img.mode in ("I;16", "I;16B", "I;16L"):  # as the training loaders map them (the shards' PNGs)
            from unimed.streaming.decode import sixteen_to_eight

            img = sixteen_to_eight(np.asarray(img))
        elif img.mode in ("I", "F"):  # no fixed range: min-max
            arr = np.asarray(img, dtype=np.float32)
            arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6) * 255.0
            img = Image.fromarray(arr.astype(np.uint8))
        img = img.convert("RGB")
        w, h = img.size
        s = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        arr = np.asarray(img.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)
        return arr.transpose(2, 0, 1).copy()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> the normalized float32 input open_clip models take (``(x / 255 - mean)
        / std``): what an exported model expects; unimed's own model does this itself."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean.to(images.device)) / std.to(images.device)

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.from_numpy(self.array(image))

    def batch(self, images: Any) -> torch.Tensor:
        """uint8 [N, 3, size, size] from one image or a list of them; a ready 4-D tensor passes through
        (uint8: pixels, which the model normalizes; float: already normalized, open_clip's contract)."""
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise UserError(f"an image tensor must be [N, 3, H, W], got {list(images.shape)}")
            return images if images.dtype == torch.uint8 else images.float()
        if not isinstance(images, (list, tuple)):
            images = [images]
        return torch.from_numpy(np.stack([self.array(im) for im in images]))
