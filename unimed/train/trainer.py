"""Config -> Composer ``Trainer``: the model, the loader, AdamW + warm-up/cosine, FSDP2, precision, checkpoints.

Choices made here once and logged: the device (GPU when CUDA is there), the precision (``amp_bf16``
on GPU, ``fp32`` on CPU, where Composer refuses bf16), FSDP2 (``FSDP_VERSION=2``) whenever more
than one process runs, the per-process batch (``global_batch_size`` / world size) and the learning
rate (``optimizer.lr`` scaled by ``optimizer.lr_scaling``). Autoresume continues from the latest
checkpoint in ``save_folder`` with the loader at the same sample (the ``StreamingDataset`` state
Composer saves with each checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import TYPE_CHECKING, Any

import torch

from unimed.errors import UserError
from unimed.train.config import LR_SCALING, TrainConfig, save_config

if TYPE_CHECKING:
    from composer import Trainer

__all__ = ["build_optimizer", "build_trainer", "train", "resolve_device", "per_device_batch", "scaled_lr"]

log = logging.getLogger(__name__)


def resolve_device(cfg: TrainConfig) -> tuple[str, str]:
    """(Composer device, precision) for ``cfg``, with the reason logged."""
    device = cfg.device
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise UserError("device=gpu but CUDA is not available; use device=cpu (or auto)")
    precision = cfg.precision
    if precision == "auto":
        precision = "amp_bf16" if device == "gpu" else "fp32"
    if device == "cpu" and precision != "fp32":
        raise UserError(f"precision={precision} needs a GPU: Composer runs fp32 only on CPU")
    log.info("unimed.train: device=%s precision=%s", device, precision)
    return device, precision


def per_device_batch(cfg: TrainConfig, world: int) -> int:
    """The batch each of ``world`` processes takes: ``global_batch_size / world`` when the global batch
    is set (it must divide evenly), else ``data.batch_size``."""
    g = cfg.global_batch_size
    if g is None:
        return cfg.data.batch_size
    if g <= 0 or g % world:
        raise UserError(
            f"global_batch_size={g} does not split over {world} processes: set it to a positive "
            f"multiple of {world} (each process takes global_batch_size / world size)"
        )
    return g // world


def scaled_lr(cfg: TrainConfig, global_batch: int) -> float:
    """``optimizer.lr`` under ``optimizer.lr_scaling`` from ``optimizer.reference_batch_size`` to
    ``global_batch`` (see ``OptimizerConfig``)."""
    o = cfg.optimizer
    if o.lr_scaling not in LR_SCALING:
        raise UserError(f"optimizer.lr_scaling must be one of {', '.join(LR_SCALING)}, got {o.lr_scaling!r}")
    if o.lr_scaling == "none":
        return o.lr
    if not o.reference_batch_size or o.reference_batch_size <= 0:
        raise UserError(
            f"optimizer.lr_scaling={o.lr_scaling} needs optimizer.reference_batch_size, the global "
            "batch optimizer.lr was tuned for"
        )
    ratio = global_batch / o.reference_batch_size
    return o.lr * (ratio if o.lr_scaling == "linear" else math.sqrt(ratio))


def _check_microbatch(cfg: TrainConfig, batch: int) -> None:
    m = cfg.device_train_microbatch_size
    if m is not None and m != batch:
        raise UserError(
            f"device_train_microbatch_size={m} differs from the per-process batch {batch}: "
            "micro-batches would each see fewer negatives and change the contrastive loss; "
            "leave it unset (use more processes or a smaller global_batch_size instead)"
        )


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (none on gains, biases, the logit scale and bias), at
    ``lr`` (default ``optimizer.lr``)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr if lr is None else lr, betas=(o.betas[0], o.betas[1]), eps=o.eps)


def _parallelism(cfg: TrainConfig) -> dict[str, Any] | None:
    from composer.utils import dist

    enabled = cfg.fsdp.enabled if cfg.fsdp.enabled is not None else dist.get_world_size() > 1
    if not enabled:
        return None
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise UserError("unimed trains with FSDP2 only: unset FSDP_VERSION or set it to 2")
    os.environ["FSDP_VERSION"] = "2"
    if cfg.fsdp.activation_checkpointing:
        raise UserError(
            "fsdp.activation_checkpointing is not supported: set model.vision.grad_checkpointing "
            "and model.text.grad_checkpointing instead"
        )
    # FULL: the root unit (the logit scale and bias; see composer_model.shard_towers) stays float32.
    return {
        "fsdp": {
            "state_dict_type": cfg.fsdp.state_dict_type,
            "reshard_after_forward": cfg.fsdp.reshard_after_forward,
            "mixed_precision": "FULL",
        }
    }


def build_trainer(cfg: TrainConfig, extra_callbacks: list | None = None, train_dataloader: Any = None) -> Trainer:
    """The Composer ``Trainer`` for ``cfg`` (nothing trained yet); ``train_dataloader`` replaces the
    shard loader (the benchmark's synthetic in-memory batches)."""
    from composer import Trainer
    from composer.optim import CosineAnnealingWithWarmupScheduler
    from composer.utils import dist, reproducibility

    from unimed.streaming.loader import build_loader
    from unimed.train.callbacks import build_algorithms, build_callbacks
    from unimed.train.checkpoint import composer_load_guard, tokenizer_for
    from unimed.train.composer_model import UnimedCLIP, fix_gloo_gradient_average, shard_towers
    from unimed.train.weights import build_model

    device, precision = resolve_device(cfg)
    parallelism = _parallelism(cfg)
    dist.initialize_dist(device)
    world = dist.get_world_size()
    cfg.data.batch_size = per_device_batch(cfg, world)
    _check_microbatch(cfg, cfg.data.batch_size)
    lr = scaled_lr(cfg, cfg.data.batch_size * world)
    log.info(
        "unimed.train: global batch %d = %d processes x %d; lr %.3g (optimizer.lr %.3g, lr_scaling %s)",
        cfg.data.batch_size * world,
        world,
        cfg.data.batch_size,
        lr,
        cfg.optimizer.lr,
        cfg.optimizer.lr_scaling,
    )
    reproducibility.seed_all(cfg.seed)
    tokenizer = tokenizer_for(cfg)
    if cfg.data.context_length != cfg.model.text.context_length:
        raise UserError(
            f"data.context_length {cfg.data.context_length} differs from model.text.context_length "
            f"{cfg.model.text.context_length}"
        )
    model = UnimedCLIP(build_model(cfg.model, tokenizer.vocab_size, tokenizer.pad_id))
    model.model.set_image_normalization(cfg.data.mean, cfg.data.std)  # uint8 batches: normalized in the model
    if parallelism is not None:
        shard_towers(model.model, precision, cfg.fsdp.reshard_after_forward)
    if cfg.compile:
        log.info("unimed.train: torch.compile of %d transformer blocks", model.model.compile_blocks_())
    if cfg.save_folder and dist.get_global_rank() == 0 and "://" not in cfg.save_folder:
        save_config(cfg, os.path.join(cfg.save_folder, "config.yaml"))
    loader = train_dataloader if train_dataloader is not None else build_loader(cfg.data, tokenizer)
    callbacks = build_callbacks(cfg, tokenizer, on_gpu=device == "gpu") + list(extra_callbacks or [])
    autoresume = bool(cfg.autoresume and cfg.save_folder)
    # Composer unpickles load_path / the autoresume checkpoint with weights_only=False: the guard makes it safe.
    with composer_load_guard(cfg.load_path, cfg.save_folder if autoresume else None):
        trainer = Trainer(
            run_name=cfg.run_name,
            model=model,
            train_dataloader=loader,
            optimizers=build_optimizer(model, cfg, lr),
            schedulers=CosineAnnealingWithWarmupScheduler(t_warmup=cfg.scheduler.warmup, alpha_f=cfg.scheduler.alpha_f),
            max_duration=cfg.max_duration,
            device=device,
            precision=precision,
            parallelism_config=parallelism,
            device_train_microbatch_size=cfg.data.batch_size,
            callbacks=callbacks,
            algorithms=build_algorithms(cfg),
            save_folder=cfg.save_folder,
            save_interval=cfg.save_interval,
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            save_overwrite=False,
            autoresume=autoresume,
            load_path=cfg.load_path,
            seed=cfg.seed,
            progress_bar=False,
            log_to_console=True,
            console_log_interval=cfg.console_log_interval,
            python_log_level=None,
        )
    if parallelism is not None:
        fix_gloo_gradient_average(trainer.state.model)
    _say_resumed(trainer, cfg, autoresume)
    return trainer


def _say_resumed(trainer, cfg: TrainConfig, autoresume: bool) -> None:
    """One line (a warning, so it shows without logging set up) when the Trainer continues a run."""
    from composer.utils import dist

    ts = trainer.state.timestamp
    if int(ts.batch) == 0 or dist.get_global_rank() != 0:
        return
    source = cfg.load_path
    latest = os.path.join(cfg.save_folder or "", "latest-rank0.pt")
    if autoresume and cfg.save_folder and os.path.lexists(latest):
        source = os.path.realpath(latest)
    log.warning(
        "unimed.train: resumed from %s at batch %d, sample %d (epoch %d)",
        source or "a checkpoint",
        int(ts.batch),
        int(ts.sample),
        int(ts.epoch),
    )


def train(cfg: TrainConfig, extra_callbacks: list | None = None):  # -> composer.Trainer
    """Train ``cfg`` to ``max_duration`` (resuming when a checkpoint exists); return the finished Trainer."""
    trainer = build_trainer(cfg, extra_callbacks)
    trainer.fit()
    if cfg.export_path:
        from composer.utils import dist

        state = {k.removeprefix("model."): v for k, v in _full_state_dict(trainer).items()}
        if dist.get_global_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.export_path)), exist_ok=True)
            torch.save(state, cfg.export_path)
    return trainer


def _full_state_dict(trainer) -> dict[str, torch.Tensor]:
    """The unsharded model weights on CPU (gathered from every rank under FSDP2); the moving average's
    weights when ``ema.enabled`` (what evaluation reads from a checkpoint too)."""
    from unimed.train.ema import WeightEMA

    model = trainer.state.model
    ema = next((cb for cb in trainer.state.callbacks if isinstance(cb, WeightEMA)), None)
    out = {}
    with ema.applied(model.model) if ema is not None else contextlib.nullcontext():
        for k, v in model.state_dict().items():
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()
            out[k] = v.detach().cpu().clone()
    return out


def dry_run(cfg: TrainConfig) -> dict[str, Any]:
    """Build the model and the loader of ``cfg`` and take one batch, training nothing: sizes, FLOPs and
    the first batch's shapes (``unimed train --dry-run``), so a config is checked before a long run."""
    from unimed.streaming.loader import build_loader
    from unimed.train.checkpoint import tokenizer_for
    from unimed.train.composer_model import UnimedCLIP
    from unimed.train.weights import build_model

    cfg.data.batch_size = per_device_batch(cfg, 1)
    _check_microbatch(cfg, cfg.data.batch_size)
    tokenizer = tokenizer_for(cfg)
    if cfg.data.context_length != cfg.model.text.context_length:
        raise UserError(
            f"data.context_length {cfg.data.context_length} differs from model.text.context_length "
            f"{cfg.model.text.context_length}"
        )
    model = UnimedCLIP(build_model(cfg.model, tokenizer.vocab_size, tokenizer.pad_id))
    model.model.set_image_normalization(cfg.data.mean, cfg.data.std)
    towers = {
        name: sum(p.numel() for p in getattr(model.model, name).parameters())
        for name in ("visual", "text")
        if hasattr(model.model, name)
    }
    loader = build_loader(cfg.data, tokenizer).dataloader
    try:
        batch = next(iter(loader))
    finally:  # the DALI server thread must not outlive the dry run (its C++ thread aborts a dying interpreter)
        server = getattr(loader, "dali_server", None)  # the GPU path only
        if server is not None and server._is_thread_running():
            server.stop_thread()
    shapes = {
        k: "x".join(map(str, v.shape)) + " " + str(v.dtype).replace("torch.", "")
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
    }
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "towers": towers,
        "batch_size": cfg.data.batch_size,
        "lr": scaled_lr(cfg, cfg.data.batch_size),
        "gflops_per_batch": round(model.flops_per_batch(batch) / 1e9, 3),
        "first_batch": shapes,
    }
