"""The loader's settings as plain dataclasses: what a training config holds about its data.

Light on purpose: reading or validating a config imports no torch, mosaicml-streaming or DALI; the
loader (:mod:`unimed.streaming.loader`) and the DALI stage (:mod:`unimed.streaming.dali`) take these
and re-export them under their old names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AugmentConfig", "LoaderConfig", "CLIP_MEAN", "CLIP_STD", "CROP_SCALE", "CROP_RATIO"]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: The random-resized-crop window: its area fraction and aspect-ratio ranges (training only).
CROP_SCALE: tuple[float, float] = (0.9, 1.0)
CROP_RATIO: tuple[float, float] = (0.75, 4 / 3)


@dataclass(frozen=True)
class AugmentConfig:
    """What the pipeline does to each image (defaults: CLIP training at 224 px)."""

    image_size: int = 224
    scale: tuple[float, float] = CROP_SCALE  # random-resized-crop area
    ratio: tuple[float, float] = CROP_RATIO  # random-resized-crop aspect
    train: bool = True  # False: resize the shorter side and center-crop, no randomness
    decode_dtype: str = "auto"  # "float": 16-bit PNGs keep their low bits; "uint8": half the CPU cost
    augmentations: tuple[str, ...] = ("crop", "flip")  # registered names (unimed.streaming.augment), in order


@dataclass
class LoaderConfig:
    """Everything the trainer sets about its data; one of ``mix`` (a YAML file) or ``shards``."""

    mix: str | None = None  # YAML mix file (see unimed.streaming.mixing)
    shards: list[str] = field(default_factory=list)  # or: MDS folders, weighted by their size
    cache_dir: str | None = None  # local cache for remote (s3://, gs://) streams
    tokenizer: str | None = None  # tokenizer folder (the text tower's, or `unimed tokenizer`'s)
    context_length: int = 256
    dynamic_padding: bool = True  # pad each batch to its longest caption, not to context_length
    pad_multiple: int = 8  # ... rounded up to a multiple of this
    batch_size: int = 64  # per device
    num_workers: int = 4  # dataset worker processes (read, check, tokenize)
    image_size: int = 224
    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO
    augmentations: list[str] = field(default_factory=lambda: ["crop", "flip"])  # unimed.streaming.augment, in order
    flip_modalities: list[str] = field(default_factory=lambda: ["pathology"])
    mean: tuple[float, float, float] = CLIP_MEAN  # of [0, 1] pixels: applied by the model, not here
    std: tuple[float, float, float] = CLIP_STD
    train: bool = True  # False: deterministic resize + center crop, no shuffle
    decode_dtype: str = "auto"  # 16-bit PNGs: float (resized at full precision) | uint8 (rounded first) | auto
    device: str = "auto"  # auto | gpu (DALI) | cpu (worker decode) | dali_cpu; $UNIMED_DALI_DEVICE overrides auto
    jpeg_decoder: str = "auto"  # CPU path: auto | pil | simplejpeg ($UNIMED_JPEG_DECODER overrides)
    dali_threads: int = 2
    prefetch_factor: int = 2  # batches in flight per worker
    seed: int = 17  # shuffle, caption choice and augmentation seed
    shuffle: bool | None = None  # default: = train
    epoch_size: int | None = None  # samples per epoch over the mix (default: the mix's own)
    drop_last: bool = True
    predownload: int | None = None
    cache_limit: str | None = None  # e.g. "200gb": evict remote shards beyond this

    def augment(self) -> AugmentConfig:
        """The DALI stage's part of this config."""
        return AugmentConfig(
            image_size=self.image_size,
            scale=(float(self.crop_scale[0]), float(self.crop_scale[1])),
            ratio=(float(self.crop_ratio[0]), float(self.crop_ratio[1])),
            train=self.train,
            decode_dtype=self.decode_dtype,
            augmentations=tuple(self.augmentations),
        )
