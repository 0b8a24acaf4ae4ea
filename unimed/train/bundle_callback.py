"""The Composer callback that makes checkpoints self-contained (see :mod:`unimed.train.bundle`).

Wired into training by ``build_callbacks``; its state (plain strings) lands in every checkpoint under
``state.callbacks.UnimedBundle``.
"""

from __future__ import annotations

import json
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger

from unimed.train.bundle import FORMAT, describe, tokenizer_files, transform_for

__all__ = ["UnimedBundle"]


class UnimedBundle(Callback):
    """Puts the descriptor, the resolved config and the tokenizer files into every checkpoint."""

    def __init__(self, cfg, tokenizer) -> None:  # (TrainConfig, CaptionTokenizer)
        from omegaconf import OmegaConf

        self.config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        self.tokenizer = tokenizer
        self.files = tokenizer_files(tokenizer.path)
        self.transform = transform_for(cfg)
        self.descriptor: dict[str, Any] | None = None

    def init(self, state: State, logger: Logger) -> None:
        model = state.model.model if hasattr(state.model, "model") else state.model
        self.descriptor = describe(model, self.tokenizer, self.transform)

    def state_dict(self) -> dict[str, Any]:
        if self.descriptor is None:
            return {}
        return {
            "format": FORMAT,
            "descriptor": json.dumps(self.descriptor),
            "config": self.config_yaml,
            "tokenizer": self.files,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the bundle is rebuilt from the current run."""
