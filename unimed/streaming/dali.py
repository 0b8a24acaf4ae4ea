"""The DALI decode-and-augment pipeline: the GPU path, one definition (CPU operators for tests).

On a GPU the decoder is ``device="mixed"`` (nvJPEG, with the A100/H100 hardware decoder when
present) and every later operator runs on the GPU. Without one the loader does not use DALI at all:
its workers decode (:mod:`unimed.streaming.decode`), since DALI's CPU operators reach only 0.46 of
the decode ceiling (their antialiased resize alone costs 1.4 of 2.6 ms an image). The same graph
still builds on CPU operators (``device="cpu"``, ``device_id=None``) for tests and for
``LoaderConfig.device="dali_cpu"``. Which path runs is decided once, in :func:`choose_device`,
logged with the reason, and overridable by argument or by the ``UNIMED_DALI_DEVICE`` variable.

Images are decoded to RGB (grey images become 3 equal channels), randomly cropped (the dataset's
window), resized to ``image_size`` (bicubic, antialiased), then given each configured augmentation's
``dali`` op (:mod:`unimed.streaming.augment`: the flip, only where the sample's ``flip`` flag allows),
and handed over as CHW **uint8**: normalization happens once, on the device, in the
model (``CLIPModel.encode_image``). The decoder's type is ``decode_dtype``: ``float`` keeps every bit
of 16-bit PNGs through the resize and rounds to 8 bits at the end; ``uint8`` maps them onto 8 bits at
decode (the full range, scaled, not clipped). ``auto`` takes float on the GPU, where it costs nothing
measurable, and uint8 on CPU operators.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from unimed.streaming.augment import get_augmentation
from unimed.streaming.config import CLIP_MEAN, CLIP_STD, AugmentConfig

__all__ = ["AugmentConfig", "DaliProxyTransform", "build_pipeline", "choose_device", "CLIP_MEAN", "CLIP_STD", "DEVICES"]

logger = logging.getLogger(__name__)

_ENV = "UNIMED_DALI_DEVICE"
_logged_choice: set[tuple[str, str]] = set()


DEVICES = ("auto", "gpu", "cpu", "dali_cpu")


def choose_device(requested: str = "auto") -> str:
    """Pick the loader's path: ``"gpu"`` (DALI, nvJPEG), ``"cpu"`` (decode in the loader workers, no
    DALI) or ``"dali_cpu"`` (the DALI graph on CPU operators: tests and comparisons only). The
    argument, else ``$UNIMED_DALI_DEVICE``, else the GPU when CUDA is available. Logged once per
    distinct choice, with the reason."""
    import torch

    source = "argument"
    if requested == "auto" and os.environ.get(_ENV):
        requested, source = os.environ[_ENV].lower(), f"${_ENV}"
    if requested not in DEVICES:
        raise ValueError(f"loader device must be one of {', '.join(DEVICES)} (from {source}), got {requested!r}")
    has_cuda = torch.cuda.is_available()
    if requested == "gpu" and not has_cuda:
        raise ValueError(f"DALI device 'gpu' requested ({source}) but CUDA is not available; use 'cpu' or 'auto'")
    if requested == "auto":
        device = "gpu" if has_cuda else "cpu"
        reason = (
            "CUDA is available: DALI, nvJPEG decode" if has_cuda else "no CUDA device: decode in the loader workers"
        )
    else:
        device, reason = requested, f"requested by {source}"
    if (device, reason) not in _logged_choice:
        _logged_choice.add((device, reason))
        logger.info("unimed.streaming: loader on %s (%s)", device, reason)
    return device


def build_pipeline(
    aug: AugmentConfig,
    batch_size: int,
    device: str,
    num_threads: int = 2,
    device_id: int | None = None,
    prefetch_queue_depth: int = 2,
    seed: int = 0,
):  # -> nvidia.dali.Pipeline
    """Build the pipeline with one external input ``encoded`` (uint8 bytes) and one per configured
    augmentation, named after it (``aug.augmentations``; by default ``crop``, float32 x, y, w, h
    relative to the image: the random-resized-crop window, and ``flip``, uint8 0/1: mirror this
    sample; all drawn per sample by the dataset so that resumption repeats them), and one output, the
    ``uint8[3, S, S]`` image (not normalized: the model does that). Only the crop window is decoded;
    each augmentation's ``dali`` op then runs on the CHW images, in order."""
    from nvidia.dali import fn, pipeline_def, types

    if device not in ("gpu", "cpu"):  # the graph's placement ("dali_cpu" builds it with "cpu")
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    if device == "gpu" and device_id is None:  # this rank's GPU, even before Composer sets the device
        import torch

        device_id = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    size = aug.image_size
    decoder = "mixed" if device == "gpu" else "cpu"
    dtype_name = aug.decode_dtype if aug.decode_dtype != "auto" else ("float" if device == "gpu" else "uint8")
    if dtype_name not in ("float", "uint8"):
        raise ValueError(f"decode_dtype must be 'auto', 'float' or 'uint8', got {aug.decode_dtype!r}")
    dtype = types.FLOAT if dtype_name == "float" else types.UINT8
    # Float pixels are in [0, 1]: x 255, rounded and saturated into uint8 by crop_mirror_normalize.
    std = [1.0 / 255.0] * 3 if dtype_name == "float" else [1.0] * 3
    augs = [get_augmentation(name) for name in aug.augmentations]

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        prefetch_queue_depth=prefetch_queue_depth,
        seed=seed,
    )
    def pipe():
        encoded = fn.external_source(name="encoded", no_copy=True, dtype=types.UINT8, ndim=1)
        params = {
            a.name: fn.external_source(name=a.name, dtype=types.to_dali_type(np.dtype(a.dtype)), ndim=a.ndim)
            for a in augs
        }
        crop = params.get("crop")
        if aug.train and crop is not None:
            images = fn.decoders.image_slice(
                encoded,
                crop[0:2],
                crop[2:4],
                device=decoder,
                output_type=types.RGB,
                dtype=dtype,
                normalized_anchor=True,
                normalized_shape=True,
                axis_names="WH",
            )
            images = fn.resize(images, size=[size, size], antialias=True, interp_type=types.INTERP_CUBIC)
            extra: dict = {}
        else:  # resize the shorter side, centre crop
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, dtype=dtype)
            images = fn.resize(images, resize_shorter=size, antialias=True, interp_type=types.INTERP_CUBIC)
            extra = {"crop": (size, size)}
        for a in augs if aug.train else []:
            a.check_path("dali")
        post = [(a.name, a.dali) for a in augs if a.dali is not None] if aug.train else []
        used = {name for name, _ in post} | ({"crop"} if aug.train else set())
        unused = [a for a in augs if a.name not in used]
        if unused:  # the proxy's inputs are fed whatever the graph uses: tie the unused ones in as zero
            zeros = [fn.cast(params[a.name][0] if a.ndim else params[a.name], dtype=types.INT32) * 0 for a in unused]
            extra["mirror"] = sum(zeros[1:], zeros[0])
        images = fn.crop_mirror_normalize(
            images, dtype=types.UINT8, output_layout="CHW", mean=[0.0] * 3, std=std, **extra
        )
        for name, op in post:
            images = op(images, params[name])
        return images

    return pipe()


class DaliProxyTransform:
    """The dataset-side half of DALI's proxy: replaces a sample's encoded ``image`` by a reference
    that the DALI server, in the main process, fills with the augmented tensor at collate time.

    ``generation`` is bumped by the loader for every new iterator, and goes into the proxy's batch
    ids, so batches of an abandoned iterator (stopped mid-epoch) can never be taken for the new
    iterator's: the stock proxy numbers batches per worker from 0 each time.
    """

    def __init__(self, proxy, augmentations: Sequence[str] = ("crop", "flip")) -> None:
        self.proxy = proxy
        self.generation = 0
        self.inputs = tuple((a.name, np.dtype(a.dtype)) for a in map(get_augmentation, augmentations))

    def __call__(self, sample: dict) -> dict:
        proxy = self.proxy
        if proxy._worker_data is None or proxy._worker_data.worker_id[0] != self.generation:
            from nvidia.dali.plugin.pytorch.experimental.proxy import _DALIProxy
            from torch.utils.data import get_worker_info

            info = get_worker_info()
            proxy._worker_data = _DALIProxy._WorkerData((self.generation, info.id if info else 0))
        params = {name: np.asarray(sample[name], dtype=dtype) for name, dtype in self.inputs}
        sample["image"] = proxy(encoded=sample["image"], **params)
        return sample
