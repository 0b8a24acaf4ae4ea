"""Build the training loader from one config: mix -> UnimedDataset -> DataLoader -> DataSpec.

Two paths, chosen once by :func:`unimed.streaming.dali.choose_device` and logged:

- **cpu** (no GPU): a plain ``torch.utils.data.DataLoader`` over the ``UnimedDataset``; each worker
  decodes its samples (libjpeg-turbo at reduced DCT scale, crop, bicubic antialiased resize, then the
  configured augmentations' ops, the flip: :mod:`unimed.streaming.decode`). DALI is never imported.
- **gpu**: DALI's proxy DataLoader (:mod:`unimed.streaming.dali_loader`): workers read, check and
  tokenize; the DALI server in the main process decodes with nvJPEG and augments on the GPU.

Either way Composer sees a ``DataLoader`` whose ``dataset`` is the ``StreamingDataset``: it
checkpoints the position with ``dataset.state_dict`` and resumes with ``load_state_dict``; every
augmentation's parameters (the crop window, the mirror bit) are drawn by the dataset from (seed, epoch, sample id),
so both paths crop alike and resume exactly.

A batch is a dict: ``image`` **uint8**[B, 3, S, S] (on the GPU when DALI runs there; not normalized:
the model's ``encode_image`` normalizes, once, on the device), ``tokens`` int64[B, L] (L: the batch's
longest caption rounded up to a multiple of ``pad_multiple``, at most the context length; the
context length itself with ``dynamic_padding`` off), ``modality`` int64[B], ``valid`` bool[B] (False
for images that were broken and replaced; mask them out of the loss), ``error`` list[str] (why),
one entry per augmentation (``flip`` uint8[B], ``crop`` float32[B, 4]), ``uid`` list[str], ``caption`` list[str].
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from torch.utils.data import dataloader as torch_dataloader

from unimed.streaming.config import LoaderConfig
from unimed.streaming.dali import choose_device
from unimed.streaming.dataset import UnimedDataset
from unimed.streaming.decode import WorkerDecode, choose_jpeg_decoder
from unimed.streaming.mixing import load_mix, parse_mix, to_streams
from unimed.streaming.tokenizer import CaptionTokenizer, trim_padding

if TYPE_CHECKING:
    from composer.core import DataSpec

__all__ = [
    "BatchAccounting",
    "LoaderConfig",
    "UnimedDataLoader",
    "WorkerCollate",
    "build_dataloader",
    "build_dataset",
    "build_loader",
    "num_samples_in_batch",
    "stop_servers",
]

logger = logging.getLogger(__name__)
_logged_decoder: set[str] = set()


def build_dataset(cfg: LoaderConfig, tokenizer: CaptionTokenizer | None = None, transform=None) -> UnimedDataset:
    """The ``UnimedDataset`` for ``cfg`` (no DALI): streams from the mix or shard list, tokenizer from
    ``cfg.tokenizer`` unless one is passed."""
    if bool(cfg.mix) == bool(cfg.shards):
        raise ValueError("LoaderConfig needs exactly one of `mix` (a YAML file) or `shards` (MDS folders)")
    if cfg.mix:
        entries, mix_cache = load_mix(cfg.mix)
    else:
        entries, mix_cache = parse_mix(list(cfg.shards), root=os.getcwd(), where="LoaderConfig.shards")
    for entry in entries:  # an unreachable store or a missing bucket/index is one line now, not a traceback later
        if entry.path.startswith("s3://"):
            from unimed.remote import Store

            Store(entry.path).require_index()
    streams = to_streams(entries, cfg.cache_dir or mix_cache)
    if tokenizer is None and cfg.tokenizer:
        tokenizer = CaptionTokenizer(cfg.tokenizer, cfg.context_length)
    shuffle = cfg.train if cfg.shuffle is None else cfg.shuffle
    return UnimedDataset(
        streams=streams,
        tokenizer=tokenizer,
        flip_modalities=cfg.flip_modalities if cfg.train else (),
        transform=transform,
        augment=cfg.train,
        augmentations=tuple(cfg.augmentations),
        crop_scale=(float(cfg.crop_scale[0]), float(cfg.crop_scale[1])),
        crop_ratio=(float(cfg.crop_ratio[0]), float(cfg.crop_ratio[1])),
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        shuffle_seed=cfg.seed,
        epoch_size=cfg.epoch_size,
        predownload=cfg.predownload,
        cache_limit=cfg.cache_limit,
    )


class BatchAccounting:
    """What both loaders do to a finished batch: trim the token padding (with ``pad_multiple`` set,
    the columns that are padding in every row go: :func:`unimed.streaming.tokenizer.trim_padding`)
    and count in ``bad_samples`` the placeholder images (``valid == False``) delivered, logging each
    bad uid once per loader with the reason."""

    def init_accounting(self, dataset: UnimedDataset, pad_multiple: int | None) -> None:
        self.pad_multiple = pad_multiple
        self.pad_id = dataset.tokenizer.pad_id if dataset.tokenizer is not None else 0
        self.bad_samples = 0
        self.bad_uids: set[str] = set()

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        for key, value in batch.items():  # WorkerCollate's small fields come as numpy: tensors, no copy
            if isinstance(value, np.ndarray):
                batch[key] = torch.from_numpy(value)
        if self.pad_multiple and "tokens" in batch:
            batch["tokens"] = trim_padding(batch["tokens"], self.pad_id, self.pad_multiple)
        if not bool(batch["valid"].all()):
            self.note_bad(batch)
        return batch

    def note_bad(self, batch: dict[str, Any]) -> None:
        """Count the batch's placeholder samples; log each bad uid once per loader, with the reason."""
        for i in (~batch["valid"]).nonzero().flatten().tolist():
            self.bad_samples += 1
            uid = batch["uid"][i]
            if uid not in self.bad_uids:
                self.bad_uids.add(uid)
                logger.warning("unimed.streaming: skipped undecodable image uid=%s (%s)", uid, batch["error"][i])


class WorkerCollate:
    """The CPU path's ``collate_fn``, run in the workers: the images stacked into one ``uint8`` tensor
    (in shared memory, as ``default_collate`` does in a worker), the token padding trimmed there
    (``pad_multiple``), and the small per-sample fields (tokens, modality, flip, crop, valid) as numpy
    arrays, pickled with the batch, which :meth:`BatchAccounting.finish_batch` turns into tensors
    without a copy: one shared-memory segment (and one file descriptor passed over a socket) a batch
    instead of six. Strings stay lists; dtypes are ``default_collate``'s."""

    def __init__(self, pad_id: int = 0, pad_multiple: int | None = None) -> None:
        self.pad_id, self.pad_multiple = pad_id, pad_multiple

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key, first in samples[0].items():
            values = [s[key] for s in samples]
            if isinstance(first, torch.Tensor):
                batch[key] = default_collate(values)
            elif isinstance(first, str):
                batch[key] = values
            elif isinstance(first, np.ndarray):
                batch[key] = np.stack(values)
            else:  # bool, int, float and numpy scalars
                batch[key] = np.asarray(values)
        if self.pad_multiple and "tokens" in batch:
            batch["tokens"] = trim_padding(batch["tokens"], self.pad_id, self.pad_multiple)
        return batch


class _FinishMixin:
    def __init__(self, loader: UnimedDataLoader) -> None:
        super().__init__(loader)  # type: ignore[call-arg]
        self.loader = loader

    def _next_data(self) -> dict[str, Any]:
        return self.loader.finish_batch(super()._next_data())  # type: ignore[misc]


class _SingleIter(_FinishMixin, torch_dataloader._SingleProcessDataLoaderIter):
    pass


class _MultiIter(_FinishMixin, torch_dataloader._MultiProcessingDataLoaderIter):
    pass


class UnimedDataLoader(BatchAccounting, DataLoader):
    """The CPU path's loader: a plain ``DataLoader`` over a ``UnimedDataset`` whose transform decodes
    in the workers (:class:`unimed.streaming.decode.WorkerDecode`), with :class:`BatchAccounting`."""

    def __init__(self, dataset: UnimedDataset, pad_multiple: int | None = None, **kwargs: Any) -> None:
        if not isinstance(dataset.transform, WorkerDecode):
            raise ValueError("UnimedDataLoader needs a dataset whose transform is a WorkerDecode")
        if kwargs.get("collate_fn") is None:
            pad_id = dataset.tokenizer.pad_id if dataset.tokenizer is not None else 0
            kwargs["collate_fn"] = WorkerCollate(pad_id, pad_multiple)
        super().__init__(dataset, **kwargs)
        self.init_accounting(dataset, pad_multiple)

    def _get_iterator(self):
        return _SingleIter(self) if self.num_workers == 0 else _MultiIter(self)


def num_samples_in_batch(batch: dict[str, Any]) -> int:
    """Samples in a batch, placeholders included (Composer's resumption offset counts every sample)."""
    return int(batch["image"].shape[0])


def stop_servers(timeout: float = 10.0) -> None:
    """Stop the DALI server threads loaders started (nothing to do when DALI was never imported)."""
    import sys

    if "unimed.streaming.dali_loader" in sys.modules:
        sys.modules["unimed.streaming.dali_loader"].stop_servers(timeout)


def loader_kwargs(cfg: LoaderConfig, pin_memory: bool) -> dict[str, Any]:
    """The DataLoader settings both loaders (worker decoding, DALI's proxy) take from ``cfg``."""
    return dict(
        pad_multiple=cfg.pad_multiple if cfg.dynamic_padding else None,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        drop_last=cfg.drop_last,
        prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        # Its own generator: worker seeding does not draw from the global torch RNG (which the model's
        # dropout uses and Composer checkpoints).
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def build_dataloader(cfg: LoaderConfig, tokenizer: CaptionTokenizer | None = None) -> DataLoader:
    """The ``DataLoader`` of ``cfg`` on the path :func:`choose_device` picks (see the module)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.dynamic_padding and cfg.pad_multiple < 1:
        raise ValueError(f"LoaderConfig.pad_multiple must be at least 1, got {cfg.pad_multiple}")
    device = choose_device(cfg.device)
    if device != "cpu":
        from unimed.streaming.dali_loader import build_dali_loader

        return build_dali_loader(cfg, "gpu" if device == "gpu" else "cpu", tokenizer)
    decoder, reason = choose_jpeg_decoder(cfg.jpeg_decoder)
    if decoder not in _logged_decoder:
        _logged_decoder.add(decoder)
        logger.info("unimed.streaming: JPEG decode in the loader workers with %s (%s)", decoder, reason)
    dtype = cfg.decode_dtype if cfg.decode_dtype != "auto" else "uint8"
    if dtype not in ("float", "uint8"):
        raise ValueError(f"decode_dtype must be 'auto', 'float' or 'uint8', got {cfg.decode_dtype!r}")
    transform = WorkerDecode(
        cfg.image_size, train=cfg.train, decoder=decoder, decode_dtype=dtype, augmentations=tuple(cfg.augmentations)
    )
    dataset = build_dataset(cfg, tokenizer=tokenizer, transform=transform)
    return UnimedDataLoader(dataset, **loader_kwargs(cfg, pin_memory=torch.cuda.is_available()))


def build_loader(cfg: LoaderConfig, tokenizer: CaptionTokenizer | None = None) -> DataSpec:
    """The training (or eval) loader for ``cfg`` as a Composer ``DataSpec``.

    ``DataSpec.num_samples`` is the epoch's sample count and ``get_num_samples_in_batch`` counts
    images, so SpeedMonitor reports images/s. The DataLoader's ``dataset`` is the
    ``StreamingDataset`` Composer checkpoints.
    """
    from composer.core import DataSpec

    loader = build_dataloader(cfg, tokenizer)
    dataset: UnimedDataset = loader.dataset  # type: ignore[assignment]
    return DataSpec(loader, num_samples=dataset.size, get_num_samples_in_batch=num_samples_in_batch)
