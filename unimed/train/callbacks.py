"""Training callbacks: the speed/LR/memory monitors, a per-batch loss log, zero-shot evaluation, and the
logit-scale clamp (an algorithm, so that it runs after the optimizer step and before every callback).

``ZeroShotEval`` is the Composer-side evaluator: every ``interval`` batches and when training ends it
runs :func:`unimed.train.evaluate.evaluate_sets` on every rank (same data everywhere, so the
collective forwards of FSDP2 match) and logs ``zeroshot/<set>/top1`` (and AUC/F1 for binary sets).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import torch
from composer.core import Algorithm, Callback, Event, State, Time, TimeUnit
from composer.loggers import Logger

__all__ = ["ClampLogitScale", "LossLog", "Throughput", "ZeroShotEval", "build_algorithms", "build_callbacks"]

log = logging.getLogger(__name__)


class ClampLogitScale(Algorithm):
    """Clamp the logit scale in place to ``[1, max_logit_scale]`` after every optimizer step, as open_clip
    does (``CLIPModel.clamp_logit_scale_``).

    It runs at ``Event.BATCH_END``, the first event after the step, and as an algorithm it runs before
    every callback there, so the loss log and the checkpoint see the clamped value.
    """

    def match(self, event: Event, state: State) -> bool:
        return event == Event.BATCH_END

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        state.model.model.clamp_logit_scale_()


class LossLog(Callback):
    """Append ``{"step", "loss", "scale", "samples"}`` per batch to a JSON-lines file (written by rank 0).

    ``loss`` is the global batch's: every rank's loss (its rows against all columns) averaged over the
    ranks, so a run on N processes logs the curve one process would on the same global batch.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        from composer.utils import dist

        if event != Event.BATCH_END:
            return
        param = state.model.model.logit_scale.detach()
        if hasattr(param, "full_tensor"):  # FSDP2: a collective, so every rank takes part
            param = param.full_tensor()
        loss = state.loss
        local = loss.detach().float().mean() if isinstance(loss, torch.Tensor) else torch.tensor(float("nan"))
        total = local.reshape(1).to(param.device).clone()
        dist.all_reduce(total, reduce_operation="SUM")  # every rank takes part here too
        if dist.get_global_rank() != 0:
            return
        value = float(total) / dist.get_world_size()
        scale = float(param.float().exp().max())
        row = {
            "step": int(state.timestamp.batch.value),
            "loss": value,
            "scale": scale,
            "samples": int(state.timestamp.sample.value),
        }
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

    def __init__(
        self,
        sets: list[tuple[str, str]],
        tokenizer: Any,
        image_size: int,
        interval: str = "0ba",
        batch_size: int = 64,
        max_samples: int | None = None,
        prompts: str | None = None,
        transform: Any = None,
    ) -> None:
        from unimed.train.evaluate import check_sets

        check_sets(sets, max_samples)  # every label resolves (or a UserError) before the first batch trains
        self.sets = sets
        self.transform = transform
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
        from unimed.train.ema import WeightEMA
        from unimed.train.evaluate import evaluate_sets

        step = int(state.timestamp.batch.value)
        ema = next((cb for cb in state.callbacks if isinstance(cb, WeightEMA)), None)
        # With the moving average on, the averaged weights are the ones evaluated (as after training).
        with ema.applied(state.model.model) if ema is not None else contextlib.nullcontext():
            results = evaluate_sets(
                state.model.model,
                self.tokenizer,
                self.sets,
                self.image_size,
                self.batch_size,
                self.max_samples,
                self.prompts,
                transform=self.transform,
            )
        metrics = {}
        for name, r in results.items():
            for key in ("top1", "balanced_top1", "auc", "f1", "mean_auc"):
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


def build_algorithms(cfg) -> list[Algorithm]:  # (TrainConfig) -> algorithms
    """The logit-scale clamp, then gradient clipping when ``grad_clip_norm`` is set."""
    algorithms: list[Algorithm] = [ClampLogitScale()]
    if cfg.grad_clip_norm:
        from composer.algorithms import GradientClipping

        algorithms.append(GradientClipping(clipping_type="norm", clipping_threshold=cfg.grad_clip_norm))
    return algorithms


def build_callbacks(cfg, tokenizer, on_gpu: bool) -> list[Callback]:  # (TrainConfig, ...) -> callbacks
    """SpeedMonitor (images/s, MFU), LRMonitor, MemoryMonitor (GPU), the weight average (before anything
    that reads the weights at the end of a batch), the loss log and zero-shot eval."""
    from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor

    from unimed.train.bundle import transform_for
    from unimed.train.bundle_callback import UnimedBundle

    # UnimedBundle: the model description, resolved config and tokenizer go into every checkpoint.
    callbacks: list[Callback] = [SpeedMonitor(window_size=cfg.speed_window), LRMonitor(), UnimedBundle(cfg, tokenizer)]
    if on_gpu:
        callbacks.append(MemoryMonitor())
    if cfg.ema.enabled:
        from unimed.train.ema import WeightEMA

        callbacks.append(WeightEMA(cfg.ema.decay))
    if cfg.loss_log:
        callbacks.append(LossLog(cfg.loss_log))
    z = cfg.zeroshot
    if z.sets:
        from unimed.train.evaluate import discover_sets

        if z.data_root:
            sets = discover_sets(z.data_root, list(z.sets))
        else:
            sets = [(os.path.basename(os.path.normpath(s)), s) for s in z.sets]
        callbacks.append(
            ZeroShotEval(
                sets,
                tokenizer,
                cfg.model.vision.image_size,
                z.interval,
                z.batch_size,
                z.max_samples,
                z.prompts,
                transform=transform_for(cfg),
            )
        )
    return callbacks
