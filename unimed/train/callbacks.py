"""Training callbacks: the speed/LR/memory monitors, a per-batch loss log, and zero-shot evaluation.

``ZeroShotEval`` is the Composer-side evaluator: every ``interval`` batches and when training ends it
runs :func:`unimed.train.evaluate.evaluate_sets` on every rank (same data everywhere, so the
collective forwards of FSDP2 match) and logs ``zeroshot/<set>/top1`` (and AUC/F1 for binary sets).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from composer.core import Callback, Event, State, Time, TimeUnit
from composer.loggers import Logger

__all__ = ["LossLog", "Throughput", "ZeroShotEval", "build_callbacks"]

log = logging.getLogger(__name__)


class LossLog(Callback):
    """Append ``{"step", "loss", "scale", "samples"}`` per batch to a JSON-lines file (rank 0 only)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        from composer.utils import dist

        if event != Event.BATCH_END:
            return
        param = state.model.model.logit_scale.detach()
        if hasattr(param, "full_tensor"):  # FSDP2: a collective, so every rank takes part
            param = param.full_tensor()
        if dist.get_global_rank() != 0:
            return
        loss = state.loss
        value = float(loss.detach().float().mean()) if hasattr(loss, "detach") else float("nan")
        scale = float(param.float().exp().max())
        row = {"step": int(state.timestamp.batch.value), "loss": value, "scale": scale,
               "samples": int(state.timestamp.sample.value)}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


class Throughput(Callback):
    """Training images per second over the run, after ``skip`` warm-up batches (startup excluded)."""

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def batch_end(self, state: State, logger: Logger) -> None:
        import time

        now = (time.perf_counter(), int(state.timestamp.sample.value))
        if int(state.timestamp.batch.value) == self.skip:
            self.start = now
        self.end = now

    @property
    def images_per_second(self) -> float:
        """Images per second between the end of batch ``skip`` and the last batch (nan if too short)."""
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            return float("nan")
        return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])


class ZeroShotEval(Callback):
    """Zero-shot evaluation every ``interval`` batches (``0ba``: only at the end) on ``sets``."""

    def __init__(self, sets: list[tuple[str, str]], tokenizer: Any, image_size: int, interval: str = "0ba",
                 batch_size: int = 64, max_samples: int | None = None, prompts: str | None = None) -> None:
        self.sets = sets
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.interval = Time.from_timestring(interval)
        if self.interval.unit != TimeUnit.BATCH:
            raise ValueError(f"zeroshot.interval must be in batches (e.g. 500ba), got {interval!r}")
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.prompts = prompts
        self.history: list[dict[str, Any]] = []

    def _evaluate(self, state: State, logger: Logger) -> None:
        from unimed.train.evaluate import evaluate_sets

        step = int(state.timestamp.batch.value)
        results = evaluate_sets(state.model.model, self.tokenizer, self.sets, self.image_size,
                                self.batch_size, self.max_samples, self.prompts)
        metrics = {}
        for name, r in results.items():
            for key in ("top1", "auc", "f1"):
                if key in r:
                    metrics[f"zeroshot/{name}/{key}"] = r[key]
        logger.log_metrics(metrics)
        self.history.append({"step": step, "results": results})
        log.info("zero-shot at batch %d: %s", step, {k: round(v, 4) for k, v in metrics.items()})

    def batch_end(self, state: State, logger: Logger) -> None:
        every = int(self.interval.value)
        if every > 0 and int(state.timestamp.batch.value) % every == 0:
            self._evaluate(state, logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        if not self.history or self.history[-1]["step"] != int(state.timestamp.batch.value):
            self._evaluate(state, logger)


def build_callbacks(cfg, tokenizer, on_gpu: bool) -> list[Callback]:  # (TrainConfig, ...) -> callbacks
    """SpeedMonitor (images/s, MFU), LRMonitor, MemoryMonitor (GPU), the loss log and zero-shot eval."""
    from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor

    callbacks: list[Callback] = [SpeedMonitor(window_size=cfg.speed_window), LRMonitor()]
    if on_gpu:
        callbacks.append(MemoryMonitor())
    if cfg.loss_log:
        callbacks.append(LossLog(cfg.loss_log))
    z = cfg.zeroshot
    if z.sets:
        from unimed.train.evaluate import discover_sets

        if z.data_root:
            sets = discover_sets(z.data_root, list(z.sets))
        else:
            sets = [(os.path.basename(os.path.normpath(s)), s) for s in z.sets]
        callbacks.append(ZeroShotEval(sets, tokenizer, cfg.model.vision.image_size, z.interval, z.batch_size,
                                      z.max_samples, z.prompts))
    return callbacks
