"""unimed.streaming: MDS shards -> StreamingDataset -> DALI decode and augment -> Composer batches.

The trainer calls :func:`build_loader` with a :class:`LoaderConfig` and gets a Composer
``DataSpec``; the rest is here for tests, benchmarks and the ``unimed tokenizer`` command.
Heavy modules (DALI, Composer) load on first use of the loader.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AugmentConfig",
    "CaptionTokenizer",
    "LoaderConfig",
    "UnimedDataLoader",
    "UnimedDataset",
    "build_dataloader",
    "build_dataset",
    "build_loader",
    "choose_device",
    "load_mix",
    "train_tokenizer",
]

_WHERE = {
    "AugmentConfig": "dali",
    "choose_device": "dali",
    "CaptionTokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "LoaderConfig": "loader",
    "UnimedDataLoader": "loader",
    "build_dataloader": "loader",
    "build_dataset": "loader",
    "build_loader": "loader",
    "UnimedDataset": "dataset",
    "load_mix": "mixing",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"unimed.streaming.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'unimed.streaming' has no attribute {name!r}")
