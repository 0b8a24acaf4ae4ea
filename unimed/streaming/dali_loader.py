"""The GPU path's loader: DALI's proxy ``DataLoader`` and server behind a ``torch.utils.data.DataLoader``.

The DALI stage sits behind a ``torch.utils.data.DataLoader`` (DALI's proxy ``DataLoader``), so
Composer sees an ordinary DataLoader whose ``dataset`` is a ``StreamingDataset``: it checkpoints the
position with ``dataset.state_dict`` and resumes with ``load_state_dict``, and the DALI pipeline
(in the main process, one per rank, on the GPU, or on CPU operators for tests) holds no position of
its own. Only :func:`unimed.streaming.loader.build_loader` imports this module, and only when DALI
runs: the CPU path never imports ``nvidia.dali``.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Any

from nvidia.dali.plugin.pytorch.experimental import proxy
from torch.utils.data import dataloader as torch_dataloader

from unimed.streaming.dali import DaliProxyTransform, build_pipeline
from unimed.streaming.dataset import UnimedDataset
from unimed.streaming.loader import BatchAccounting, LoaderConfig, build_dataset, loader_kwargs
from unimed.streaming.tokenizer import CaptionTokenizer

__all__ = ["DaliDataLoader", "build_dali_loader", "stop_servers"]

logger = logging.getLogger(__name__)


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

    def __init__(self, loader: DaliDataLoader) -> None:
        super().__init__(loader)  # type: ignore[call-arg]
        self.loader = loader

    def _next_data(self) -> dict[str, Any]:
        self.loader.ensure_server_listening()
        return self.loader.finish_batch(self.loader.dali_server.produce_data(super()._next_data()))  # type: ignore[misc]


class _SingleIter(_ProduceMixin, torch_dataloader._SingleProcessDataLoaderIter):
    pass


class _MultiIter(_ProduceMixin, torch_dataloader._MultiProcessingDataLoaderIter):
    pass


class DaliDataLoader(BatchAccounting, proxy.DataLoader):
    """DALI's proxy ``DataLoader`` (a ``torch.utils.data.DataLoader``) with four changes: it works
    with ``num_workers=0``; the server thread is a daemon, so an unfinished epoch cannot hang
    interpreter exit; every new iterator bumps the proxy generation (see ``DaliProxyTransform``);
    and it counts in ``bad_samples`` the placeholder images (``valid == False``) it has delivered
    (:class:`unimed.streaming.loader.BatchAccounting`, with the token trimming).
    """

    def __init__(
        self, dali_server: proxy.DALIServer, dataset: UnimedDataset, pad_multiple: int | None = None, **kwargs: Any
    ) -> None:
        if not isinstance(dataset.transform, DaliProxyTransform):
            raise ValueError("DaliDataLoader needs a dataset whose transform is a DaliProxyTransform")
        super().__init__(dali_server, dataset, **kwargs)
        self.init_accounting(dataset, pad_multiple)

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


def build_dali_loader(cfg: LoaderConfig, device: str, tokenizer: CaptionTokenizer | None = None) -> DaliDataLoader:
    """The DALI loader of ``cfg``: the pipeline on ``device`` ("gpu", or "cpu" operators), its
    server, the dataset feeding it through ``DaliProxyTransform`` and the proxy DataLoader."""
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
    dataset = build_dataset(cfg, tokenizer=tokenizer, transform=DaliProxyTransform(server.proxy, cfg.augmentations))
    return DaliDataLoader(server, dataset, **loader_kwargs(cfg, pin_memory=False))
