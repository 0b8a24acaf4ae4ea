"""The unimed ``StreamingDataset``: encoded image bytes, one caption per sample and epoch, its tokens.

No pixel is decoded by the dataset itself: decoding and augmentation belong to the ``transform`` —
DALI's proxy on the GPU path (``unimed.streaming.dali``: batched, nvJPEG), the worker decode on the
CPU path (``unimed.streaming.decode``). The dataset reads the MDS sample, checks the image's
structure (``imagecheck``), picks a caption, tokenizes it and draws the crop window and mirror bit
(:func:`choose_crop`) that either transform applies.

The caption is chosen by a hash of (seed, epoch, sample id), not by a stateful generator, so a run
resumed mid-epoch picks the same captions as an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from unimed.schema import MODALITIES
from unimed.streaming._lazy import import_streaming
from unimed.streaming.config import CROP_RATIO, CROP_SCALE
from unimed.streaming.imagecheck import check_image, placeholder_image
from unimed.streaming.tokenizer import CaptionTokenizer

__all__ = ["UnimedDataset", "choose_caption", "choose_crop", "image_size"]

logger = logging.getLogger(__name__)

StreamingDataset = import_streaming().StreamingDataset
_LOCAL = import_streaming().base.dataset._ShardState.LOCAL

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def choose_caption(num_captions: int, seed: int, epoch: int, sample_id: int) -> int:
    """Index of the caption to use: uniform, and a pure function of (seed, epoch, sample id)."""
    h = _splitmix64(_splitmix64(_splitmix64(int(seed)) ^ int(epoch)) ^ int(sample_id))
    return h % num_captions


def _uniform(seed: int, epoch: int, sample_id: int, k: int) -> float:
    """A uniform [0, 1) draw, a pure function of (seed, epoch, sample id, k)."""
    return _draw(_sample_key(seed, epoch, sample_id), k)


def _sample_key(seed: int, epoch: int, sample_id: int) -> int:
    return _splitmix64(_splitmix64(_splitmix64(int(seed)) ^ int(epoch)) ^ int(sample_id))


def _draw(key: int, k: int) -> float:
    return (_splitmix64(key ^ (k + 1)) >> 11) / float(1 << 53)


_WHOLE = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 windows before its central fallback
_DRAW_X, _DRAW_Y, _DRAW_FLIP = 2 * _CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS + 1, 2 * _CROP_ATTEMPTS + 2


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
    sample, as a pure function of (seed, epoch, sample id): a resumed run crops exactly as an
    uninterrupted one, which a pipeline RNG (not part of a checkpoint) could not promise.

    The window follows torchvision's ``RandomResizedCrop`` over the image's pixels (``size`` = width,
    height): an area fraction drawn from ``scale`` and a log-uniform aspect ratio (width / height, in
    pixels) from ``ratio``; a window that does not fit is drawn again, up to 10 times, then the
    largest central window of an allowed ratio is taken (the whole image when its own ratio is
    allowed). So every window covers at least ``scale[0]`` of the image, whatever its shape; drawing
    in relative units and clipping, as before, put 44% of the windows of a 4:3 image below 0.9.
    Offsets and sizes stay continuous (the decoder's slice rounds them).
    """
    width, height = float(size[0]), float(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    key = _sample_key(seed, epoch, sample_id)
    area, lo, hi = width * height, math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(_CROP_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * _draw(key, 2 * attempt))
        aspect = math.exp(lo + (hi - lo) * _draw(key, 2 * attempt + 1))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            x, y = (width - w) * _draw(key, _DRAW_X), (height - h) * _draw(key, _DRAW_Y)
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
    crop = np.array([x / width, y / height, min(1.0, w / width), min(1.0, h / height)], dtype=np.float32)
    return crop, int(flip_allowed and _draw(key, _DRAW_FLIP) < 0.5)


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
    into ``unimed.schema.MODALITIES``), ``flip`` (1 where the sample is mirrored: only where the
    modality allows it, and only when ``augment``), ``crop`` (``float32[4]``: the x, y, w, h of the
    random-resized-crop window relative to the image; the whole image without ``augment``), ``valid`` (False when
    the image was broken and replaced by a placeholder), ``error`` (why;
    empty when valid), ``uid``. The loader counts and logs the replaced ones, once per uid.

    Args:
        tokenizer: turns the chosen caption into ids; None leaves ``tokens`` out.
        flip_modalities: modalities where a horizontal flip keeps the image plausible (pathology,
            say); never chest X-rays, whose laterality carries meaning.
        transform: called on each sample dict last (the DALI proxy plugs in here).
        augment: draw a crop window and a mirror bit per sample (training), seeded by (seed, epoch,
            sample id) so that resumption repeats them.
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
        flip_allowed = modality in self.flip_modalities
        if self.augment:
            crop, flip = choose_crop(
                self.caption_seed,
                self._epoch,
                sample_id,
                self.crop_scale,
                self.crop_ratio,
                flip_allowed,
                image_size(image) or (1, 1),
            )
        else:
            crop, flip = _WHOLE.copy(), 0  # no augmentation: the whole image, never mirrored
        out: dict[str, Any] = {
            "image": np.frombuffer(image, dtype=np.uint8),
            "caption": caption,
            "modality": MODALITIES.index(modality) if modality in MODALITIES else MODALITIES.index("other"),
            "flip": np.uint8(flip),
            "crop": crop,
            "valid": valid,
            "error": reason or "",
            "uid": raw["uid"],
        }
        if self.tokenizer is not None:
            out["tokens"] = self.tokenizer(caption)
        return out

    def get_item(self, sample_id: int, retry: int = 7) -> Any:
        """Read sample ``sample_id``, decode its record (not its pixels), then apply ``transform``."""
        sample = self.decode_sample(sample_id, super().get_item(sample_id, retry))
        return self.transform(sample) if self.transform is not None else sample
