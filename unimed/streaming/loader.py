"""Build the training loader from one config: mix -> UnimedDataset -> DALI proxy DataLoader -> DataSpec.

The DALI stage sits behind a ``torch.utils.data.DataLoader`` (DALI's proxy ``DataLoader``), so
Composer sees an ordinary DataLoader whose ``dataset`` is a ``StreamingDataset``: it checkpoints the
position with ``dataset.state_dict`` and resumes with ``load_state_dict``, and the DALI pipeline
(in the main process, one per rank, on the GPU or on CPU operators) holds no position of its own.

A batch is a dict: ``image`` float32[B, 3, S, S] (on the GPU when DALI runs there), ``tokens``
int64[B, L] (L: the batch's longest caption rounded up to a multiple of ``pad_multiple``, at most the
context length; the context length itself with ``dynamic_padding`` off), ``modality`` int64[B],
``valid`` bool[B] (False for images that were broken and replaced; mask them out of the loss),
``error`` list[str] (why), ``flip`` uint8[B], ``uid`` list[str], ``caption`` list[str].
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from nvidia.dali.plugin.pytorch.experimental import proxy
from torch.utils.data import dataloader as torch_dataloader

from unimed.streaming.dali import (
    CLIP_MEAN,
    CLIP_STD,
    AugmentConfig,
    DaliProxyTransform,
    build_pipeline,
    choose_device,
)
from unimed.streaming.dataset import UnimedDataset
from unimed.streaming.mixing import load_mix, parse_mix, to_streams
from unimed.streaming.tokenizer import CaptionTokenizer, trim_padding

__all__ = [
    "LoaderConfig",
    "UnimedDataLoader",
    "build_dataset",
    "build_loader",
    "num_samples_in_batch",
    "stop_servers",
]

logger = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    """Everything the trainer sets about its data; one of ``mix`` (a YAML file) or ``shards``."""

    mix: str | None = None  # YAML mix file (see unimed.streaming.mixing)
    shards: list[str] = field(default_factory=list)  # or: MDS folders, weighted by their size
    cache_dir: str | None = None  # local cache for remote (s3://, gs://) streams
    tokenizer: str | None = None  # tokenizer folder (the text tower's, or `ingest tokenizer`'s)
    context_length: int = 256
    dynamic_padding: bool = True  # pad each batch to its longest caption, not to context_length
    pad_multiple: int = 8  # ... rounded up to a multiple of this
    batch_size: int = 64  # per device
    num_workers: int = 4  # dataset worker processes (read, check, tokenize)
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip_modalities: list[str] = field(default_factory=lambda: ["pathology"])
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    train: bool = True  # False: deterministic resize + center crop, no shuffle
    decode_dtype: str = "auto"  # float (16-bit PNG low bits kept) | uint8 (2x faster on CPU) | auto
    device: str = "auto"  # DALI placement: auto | gpu | cpu ($UNIMED_DALI_DEVICE overrides auto)
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
            scale=tuple(self.crop_scale),
            ratio=tuple(self.crop_ratio),
            mean=tuple(self.mean),
            std=tuple(self.std),
            train=self.train,
            decode_dtype=self.decode_dtype,
        )


def build_dataset(
    cfg: LoaderConfig, tokenizer: CaptionTokenizer | None = None, transform=None
) -> UnimedDataset:
    """The ``UnimedDataset`` for ``cfg`` (no DALI): streams from the mix or shard list, tokenizer from
    ``cfg.tokenizer`` unless one is passed."""
    if bool(cfg.mix) == bool(cfg.shards):
        raise ValueError("LoaderConfig needs exactly one of `mix` (a YAML file) or `shards` (MDS folders)")
    if cfg.mix:
        entries, mix_cache = load_mix(cfg.mix)
    else:
        entries, mix_cache = parse_mix(list(cfg.shards), root=os.getcwd(), where="LoaderConfig.shards")
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
        crop_scale=tuple(cfg.crop_scale),
        crop_ratio=tuple(cfg.crop_ratio),
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        shuffle_seed=cfg.seed,
        epoch_size=cfg.epoch_size,
        predownload=cfg.predownload,
        cache_limit=cfg.cache_limit,
    )


_SERVERS: weakref.WeakSet = weakref.WeakSet()  # DALI servers whose thread a loader started


def _serve(server: proxy.DALIServer) -> None:
    """The DALI server thread; ends quietly when asked to stop or when its input queue is closed."""
    event = server._thread_stop_event
    try:
        proxy.DALIServer._thread_fn(server)
    except (OSError, EOFError, ValueError) as err:  # multiprocessing closed the queue under us
        logger.debug("unimed.streaming: DALI server thread ended: %r", err)
    except Exception as err:
        if event is None or not event.is_set():
            raise
        # stop_servers' wake-up item (None) is not a batch: the stop it announces is the reason.
        logger.debug("unimed.streaming: DALI server thread stopped: %r", err)
    finally:
        # Mark the server stopped, so that its __del__ (which may run in this very thread, once the
        # last reference goes) does not try to join the current thread.
        if server._thread is threading.current_thread():
            server._thread, server._thread_stop_event = None, None


def stop_servers(timeout: float = 10.0) -> None:
    """Stop and join every DALI server thread a loader started.

    Runs at interpreter exit (registered below, so before multiprocessing closes its queues): a daemon
    thread still inside DALI's C++ code when the interpreter finalizes is unwound through frames that
    cannot unwind, and the process aborts ("terminate called without an active exception") after the
    job itself has finished. A ``None`` put on the input queue wakes a thread waiting there at once,
    instead of after its 5-second read timeout.
    """
    for server in list(_SERVERS):
        thread, event = server._thread, server._thread_stop_event
        if thread is None or event is None or thread is threading.current_thread():
            continue
        event.set()
        try:
            server._dali_input_q.put(None)
        except (OSError, ValueError, AssertionError):  # the queue is closed already
            pass
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("unimed.streaming: the DALI server thread did not stop within %.0f s", timeout)


atexit.register(stop_servers)


class _ProduceMixin:
    """Iterator half: wait for the DALI server's outputs, put them in the batch, count bad images."""

    def __init__(self, loader: UnimedDataLoader) -> None:
        super().__init__(loader)  # type: ignore[call-arg]
        self.loader = loader

    def _next_data(self) -> dict[str, Any]:
        self.loader.ensure_server_listening()
        batch = self.loader.dali_server.produce_data(super()._next_data())  # type: ignore[misc]
        if self.loader.pad_multiple and "tokens" in batch:
            batch["tokens"] = trim_padding(batch["tokens"], self.loader.pad_id, self.loader.pad_multiple)
        if not bool(batch["valid"].all()):
            self.loader.note_bad(batch)
        return batch


class _SingleIter(_ProduceMixin, torch_dataloader._SingleProcessDataLoaderIter):
    pass


class _MultiIter(_ProduceMixin, torch_dataloader._MultiProcessingDataLoaderIter):
    pass


class UnimedDataLoader(proxy.DataLoader):
    """DALI's proxy ``DataLoader`` (a ``torch.utils.data.DataLoader``) with four changes: it works
    with ``num_workers=0``; the server thread is a daemon, so an unfinished epoch cannot hang
    interpreter exit; every new iterator bumps the proxy generation (see ``DaliProxyTransform``);
    and it counts in ``bad_samples`` the placeholder images (``valid == False``) it has delivered.
    With ``pad_multiple`` set, each batch's ``tokens`` lose the columns that are padding in every row
    (:func:`unimed.streaming.tokenizer.trim_padding`).
    """

    def __init__(self, dali_server: proxy.DALIServer, dataset: UnimedDataset, pad_multiple: int | None = None,
                 **kwargs: Any) -> None:
        if not isinstance(dataset.transform, DaliProxyTransform):
            raise ValueError("UnimedDataLoader needs a dataset whose transform is a DaliProxyTransform")
        super().__init__(dali_server, dataset, **kwargs)
        self.pad_multiple = pad_multiple
        self.pad_id = dataset.tokenizer.pad_id if dataset.tokenizer is not None else 0
        self.bad_samples = 0
        self.bad_uids: set[str] = set()

    def note_bad(self, batch: dict[str, Any]) -> None:
        """Count the batch's placeholder samples; log each bad uid once per loader, with the reason."""
        for i in (~batch["valid"]).nonzero().flatten().tolist():
            self.bad_samples += 1
            uid = batch["uid"][i]
            if uid not in self.bad_uids:
                self.bad_uids.add(uid)
                logger.warning(
                    "unimed.streaming: skipped undecodable image uid=%s (%s)", uid, batch["error"][i]
                )

    def ensure_server_listening(self) -> None:
        """Start the DALI server thread (as a daemon) if it is not running."""
        server = self.dali_server
        if not server._is_thread_running():
            server._thread_stop_event = threading.Event()
            server._thread = threading.Thread(target=_serve, args=(server,), daemon=True)
            server._thread.start()
            _SERVERS.add(server)
            self.server_started_by_loader = True

    def __del__(self) -> None:
        # Signal the server thread to stop, without the stock join: the thread may sit up to 5 s in
        # a queue read, and holds its own reference to the server until it returns.
        event = getattr(self.dali_server, "_thread_stop_event", None)
        if getattr(self, "server_started_by_loader", False) and event is not None:
            event.set()

    def _get_iterator(self):
        transform = self.dataset.transform
        transform.generation += 1
        transform.proxy._worker_data = None
        self.dali_server._cache_outputs.clear()  # outputs left by an abandoned iterator
        return _SingleIter(self) if self.num_workers == 0 else _MultiIter(self)


def num_samples_in_batch(batch: dict[str, Any]) -> int:
    """Samples in a batch, placeholders included (Composer's resumption offset counts every sample)."""
    return int(batch["image"].shape[0])


def build_loader(cfg: LoaderConfig, tokenizer: CaptionTokenizer | None = None):  # -> composer.core.DataSpec
    """The training (or eval) loader for ``cfg`` as a Composer ``DataSpec``.

    DALI runs on the device :func:`choose_device` picks; ``DataSpec.num_samples`` is the epoch's
    sample count and ``get_num_samples_in_batch`` counts images, so SpeedMonitor reports images/s.
    The DataLoader's ``dataset`` is the ``StreamingDataset`` Composer checkpoints.
    """
    from composer.core import DataSpec

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = choose_device(cfg.device)
    workers = max(cfg.num_workers, 1)
    pipeline = build_pipeline(
        cfg.augment(),
        batch_size=cfg.batch_size,
        device=device,
        num_threads=cfg.dali_threads,
        prefetch_queue_depth=max(2, cfg.prefetch_factor * workers),
        seed=cfg.seed,
    )
    server = proxy.DALIServer(pipeline)
    dataset = build_dataset(cfg, tokenizer=tokenizer, transform=DaliProxyTransform(server.proxy))
    if cfg.dynamic_padding and cfg.pad_multiple < 1:
        raise ValueError(f"LoaderConfig.pad_multiple must be at least 1, got {cfg.pad_multiple}")
    loader = UnimedDataLoader(
        server,
        dataset,
        pad_multiple=cfg.pad_multiple if cfg.dynamic_padding else None,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        drop_last=cfg.drop_last,
        prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=False,
        # Its own generator: worker seeding does not draw from the global torch RNG (which the model's
        # dropout uses and Composer checkpoints).
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return DataSpec(loader, num_samples=dataset.size, get_num_samples_in_batch=num_samples_in_batch)
