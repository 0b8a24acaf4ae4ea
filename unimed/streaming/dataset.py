"""The unimed ``StreamingDataset``: encoded image bytes, one caption per sample and epoch, its tokens.

No pixel is decoded by the dataset itself: decoding and augmentation belong to the ``transform`` —
DALI's proxy on the GPU path (``unimed.streaming.dali``: batched, nvJPEG), the worker decode on the
CPU path (``unimed.streaming.decode``). The dataset reads the MDS sample, checks the image's
structure (``imagecheck``), picks a caption, tokenizes it and draws the parameters of every
configured augmentation (:mod:`unimed.streaming.augment`: the crop window, the mirror bit) that
either transform applies.

The caption (and every augmentation's parameters) is chosen by a hash of (seed, epoch, sample id), not
by a stateful generator, so a run resumed mid-epoch picks the same captions as an uninterrupted one,
whatever the worker count.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from unimed.schema import MODALITIES
from unimed.streaming._lazy import import_streaming
from unimed.streaming.augment import AugmentContext, get_augmentation, sample_key
from unimed.streaming.config import CROP_RATIO, CROP_SCALE
from unimed.streaming.imagecheck import check_image, placeholder_image
from unimed.streaming.tokenizer import CaptionTokenizer

__all__ = ["UnimedDataset", "choose_caption", "choose_crop", "image_size"]

logger = logging.getLogger(__name__)

StreamingDataset = import_streaming().StreamingDataset
_LOCAL = import_streaming().base.dataset._ShardState.LOCAL


def choose_caption(num_captions: int, seed: int, epoch: int, sample_id: int) -> int:
    """Index of the caption to use: uniform, and a pure function of (seed, epoch, sample id)."""
    return sample_key(seed, epoch, sample_id) % num_captions


def choose_crop(
    seed: int,
    epoch: int,
    sample_id: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_allowed: bool,
    size: tuple[int, int] = (1, 1),
) -> tuple[np.ndarray, int]:
    """The random-resized-crop window (x, y, w, h, relative to the image) and the mirror bit of one
    sample: the registered ``crop`` and ``flip`` augmentations' draws (see
    :func:`unimed.streaming.augment.crop_window`), a pure function of (seed, epoch, sample id)."""
    allowed = frozenset({"any"}) if flip_allowed else frozenset()
    ctx = AugmentContext(seed, epoch, sample_id, size, "any", scale, ratio, allowed)
    return get_augmentation("crop").draw(ctx), int(get_augmentation("flip").draw(ctx))


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an encoded JPEG (its frame header) or PNG (its IHDR), without decoding; None
    when no header is found. Only called on images ``check_image`` passed."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return int(width), int(height)
    pos, end = 2, len(data)
    while data[:2] == b"\xff\xd8" and pos + 4 <= end:
        marker = data[pos + 1]
        if data[pos] != 0xFF:
            return None
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= end:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return int(width), int(height)
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None


class UnimedDataset(StreamingDataset):
    """A ``StreamingDataset`` over unimed shards yielding training-ready (still encoded) samples.

    Each sample is a dict: ``image`` (the encoded bytes as a ``uint8`` array), ``caption`` (str),
    ``tokens`` (``int64[context_length]``, present when a tokenizer is given), ``modality`` (index
    into ``unimed.schema.MODALITIES``), one entry per augmentation named by its parameters (by default
    ``crop``, ``float32[4]``: the x, y, w, h of the random-resized-crop window relative to the image, the
    whole image without ``augment``; and ``flip``, 1 where the sample is mirrored: only where the
    modality allows it, and only when ``augment``), ``valid`` (False when
    the image was broken and replaced by a placeholder), ``error`` (why;
    empty when valid), ``uid``. The loader counts and logs the replaced ones, once per uid.

    Args:
        tokenizer: turns the chosen caption into ids; None leaves ``tokens`` out.
        flip_modalities: modalities where a horizontal flip keeps the image plausible (pathology,
            say); never chest X-rays, whose laterality carries meaning.
        transform: called on each sample dict last (the DALI proxy plugs in here).
        augment: draw each augmentation's parameters per sample (training), seeded by (seed, epoch,
            sample id) so that resumption repeats them; without it, their identity parameters.
        augmentations: the registered augmentations (:mod:`unimed.streaming.augment`), in order.
        crop_scale, crop_ratio: the area fraction and aspect-ratio ranges of the crop window.
        caption_seed: seed of the caption choice (the shuffle seed by default).
        **kwargs: everything ``streaming.StreamingDataset`` takes (``streams``, ``local``,
            ``batch_size``, ``shuffle``, ``shuffle_seed``, ``epoch_size``, ...).
    """

    def __init__(
        self,
        *,
        tokenizer: CaptionTokenizer | None = None,
        flip_modalities: Iterable[str] = (),
        transform: Callable[[dict[str, Any]], Any] | None = None,
        caption_seed: int | None = None,
        augment: bool = False,
        crop_scale: tuple[float, float] = CROP_SCALE,
        crop_ratio: tuple[float, float] = CROP_RATIO,
        augmentations: Sequence[str] = ("crop", "flip"),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.flip_modalities = frozenset(flip_modalities)
        unknown = self.flip_modalities - set(MODALITIES)
        if unknown:
            raise ValueError(f"flip_modalities {sorted(unknown)} are not modalities; known: {MODALITIES}")
        self.transform = transform
        self.caption_seed = self.shuffle_seed if caption_seed is None else caption_seed
        self.augment = augment
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.augmentations = tuple(get_augmentation(name) for name in augmentations)
        self.bad_samples = 0  # per process: images replaced by the placeholder
        self._epoch = 0
        self._whole_shards: set[int] = set()  # per process: shards prepare_shard found local and whole

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """The base class's, minus its per-sample cost once a shard is local: its download thread
        calls this for every sample, each call taking a file lock and a ``stat`` (0.22 ms·core an image
        measured, a tenth of the CPU path's budget). Without a ``cache_limit`` nothing evicts a local
        shard, so after one full call finds it whole only its access time is touched."""
        if not self.cache_limit and shard_id in self._whole_shards and self._shard_states[shard_id] == _LOCAL:
            self._shard_access_times[shard_id] = time.time_ns()
            return
        super().prepare_shard(shard_id, blocking)
        if not self.cache_limit and self._shard_states[shard_id] == _LOCAL:
            self._whole_shards.add(shard_id)

    def _resume_incr_epoch(self) -> tuple[int, int]:
        # Record the epoch this worker iterates, for the caption choice (the base class keeps it local).
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self._epoch = epoch
        return epoch, sample_in_epoch

    def decode_sample(self, sample_id: int, raw: dict[str, Any]) -> dict[str, Any]:
        """Turn one raw MDS sample into the loader's sample dict (see the class docstring)."""
        image = raw["image"]
        reason = check_image(image)
        valid = reason is None
        if not valid:
            self.bad_samples += 1
            logger.debug("unimed: undecodable image uid=%s (%s), replaced", raw["uid"], reason)
            image = placeholder_image()
        captions = raw["captions"]
        caption = captions[choose_caption(len(captions), self.caption_seed, self._epoch, sample_id)]
        modality = raw["modality"]
        ctx = AugmentContext(
            self.caption_seed,
            self._epoch,
            sample_id,
            image_size(image) or (1, 1),
            modality,
            self.crop_scale,
            self.crop_ratio,
            self.flip_modalities,
        )
        out: dict[str, Any] = {
            "image": np.frombuffer(image, dtype=np.uint8),
            "caption": caption,
            "modality": MODALITIES.index(modality) if modality in MODALITIES else MODALITIES.index("other"),
            "valid": valid,
            "error": reason or "",
            "uid": raw["uid"],
        }
        for aug in self.augmentations:  # no augmentation: the whole image, never mirrored
            out[aug.name] = aug.draw(ctx) if self.augment else aug.identity(ctx)
        if self.tokenizer is not None:
            out["tokens"] = self.tokenizer(caption)
        return out

    def get_item(self, sample_id: int, retry: int = 7) -> Any:
        """Read sample ``sample_id``, decode its record (not its pixels), then apply ``transform``."""
        sample = self.decode_sample(sample_id, super().get_item(sample_id, retry))
        return self.transform(sample) if self.transform is not None else sample
