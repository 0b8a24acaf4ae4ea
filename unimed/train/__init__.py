"""unimed.train: the CLIP model, its losses, Composer training and zero-shot evaluation.

``train(load_config(yaml, overrides))`` runs a training; ``run_zeroshot`` evaluates a checkpoint.
Heavy modules (Composer, transformers) load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CLIPModel",
    "ModelConfig",
    "TrainConfig",
    "UnimedCLIP",
    "build_model",
    "contrastive_loss",
    "load_config",
    "load_trained",
    "run_zeroshot",
    "train",
]

_WHERE = {
    "CLIPModel": "model",
    "ModelConfig": "model_config",
    "TrainConfig": "config",
    "load_config": "config",
    "UnimedCLIP": "composer_model",
    "build_model": "weights",
    "contrastive_loss": "loss",
    "load_trained": "checkpoint",
    "run_zeroshot": "evaluate",
    "train": "trainer",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"unimed.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'unimed.train' has no attribute {name!r}")
