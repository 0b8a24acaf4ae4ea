"""An exponential moving average of the trainable weights (``ema.enabled: true``).

``WeightEMA`` keeps an fp32 copy of every trainable parameter and, after each optimizer step (and after
the logit-scale clamp, an algorithm, which runs first), moves it towards the weights by ``1 - d``. The
decay of update ``n`` is ``d = min(decay, (1 + n) / (10 + n))``, a ramp as in TensorFlow's
``ExponentialMovingAverage(num_updates=...)``, so a short run's average is not dominated by the random
initialization. Under FSDP2 each rank keeps the average of its own shards (DTensors), so the
memory cost is one copy of the local parameters.

Checkpoints carry the average under ``state.callbacks.WeightEMA`` (``weights``, plus ``decay`` and
``updates``), beside the training weights, which stay in ``state.model``: a resumed run continues both.
Evaluation reads the averaged weights when a checkpoint has them (``unimed eval``, ``unimed export``,
``unimed.api.load``, the in-training zero-shot evaluation); ``--no-ema`` / ``ema=False`` reads the
training weights instead. Frozen parameters (a locked tower) are not averaged: they do not change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from composer.core import Callback, State
from composer.loggers import Logger

__all__ = ["WeightEMA", "ema_weights"]

NAME = "WeightEMA"  # the key of the average in a checkpoint's ``state.callbacks``


def _clip(state: State) -> torch.nn.Module:
    return state.model.model if hasattr(state.model, "model") else state.model


class WeightEMA(Callback):
    """The moving average of the trainable weights; see the module docstring."""

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.weights: dict[str, torch.Tensor] = {}
        self._model: torch.nn.Module | None = None
        self._full = False  # write whole tensors (a full state dict) rather than this rank's shards

    # ---- life cycle ---------------------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        # The towers are already sharded here (before the Trainer), so the copies take the shards' layout,
        # and a sharded checkpoint can be loaded into them in place.
        self._model = _clip(state)
        self._full = state.fsdp_state_dict_type == "full"
        self._ensure()

    def _params(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        assert self._model is not None
        for name, p in self._model.named_parameters():
            if p.requires_grad:
                yield name, p

    def _ensure(self) -> None:
        if self.weights or self._model is None:
            return
        with torch.no_grad():
            self.weights = {name: p.detach().float().clone() for name, p in self._params()}

    def current_decay(self) -> float:
        """The decay of the next update: ramps up from 0.1 towards ``decay`` over the first updates."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    def batch_end(self, state: State, logger: Logger) -> None:
        self._ensure()
        d = self.current_decay()
        with torch.no_grad():
            for name, p in self._params():
                self.weights[name].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    # ---- evaluation ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
        """Within the block the model holds the averaged weights; the training weights come back after."""
        model = model if model is not None else self._model
        assert model is not None
        self._ensure()
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.weights:
                    saved[name] = p.detach().clone()
                    p.copy_(self.weights[name].to(p.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in saved:
                        p.copy_(saved[name])

    # ---- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._ensure()
        weights = self.weights
        if self._full:  # a whole-tensor checkpoint: gather the shards (every rank takes part)
            weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in weights.items()}
        return {"decay": self.decay, "updates": self.updates, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.updates = int(state.get("updates", 0))
        saved = state.get("weights") or {}
        self._ensure()
        with torch.no_grad():
            for name, value in saved.items():
                mine = self.weights.get(name)
                if mine is None or value is mine:
                    continue  # a parameter no longer trained, or already loaded in place (sharded load)
                if hasattr(mine, "device_mesh") and not hasattr(value, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(value.to(mine.device), mine.device_mesh, mine.placements)
                mine.copy_(value)


def ema_weights(raw: Any) -> dict[str, torch.Tensor] | None:
    """The averaged weights a loaded Composer checkpoint carries (keys as the model's), or None."""
    if not isinstance(raw, dict):
        return None
    state = raw.get("state", raw)
    callbacks = state.get("callbacks") if isinstance(state, dict) else None
    entry = callbacks.get(NAME) if isinstance(callbacks, dict) else None
    weights = entry.get("weights") if isinstance(entry, dict) else None
    if not isinstance(weights, dict) or not weights:
        return None
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
