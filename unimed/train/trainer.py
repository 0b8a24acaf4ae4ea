"""Config -> Composer ``Trainer``: the model, the loader, AdamW + warm-up/cosine, FSDP2, precision, checkpoints.

Choices made here once and logged: the device (GPU when CUDA is there), the precision (``amp_bf16``
on GPU, ``fp32`` on CPU, where Composer refuses bf16), and FSDP2 (``FSDP_VERSION=2``) whenever more
than one process runs. Autoresume continues from the latest checkpoint in ``save_folder`` with the
loader at the same sample (the ``StreamingDataset`` state Composer saves with each checkpoint).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from unimed.errors import UserError
from unimed.train.config import TrainConfig, save_config

__all__ = ["build_optimizer", "build_trainer", "train", "resolve_device"]

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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (none on gains, biases, the logit scale and bias)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def _parallelism(cfg: TrainConfig) -> dict[str, Any] | None:
    from composer.utils import dist

    enabled = cfg.fsdp.enabled if cfg.fsdp.enabled is not None else dist.get_world_size() > 1
    if not enabled:
        return None
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise UserError("unimed trains with FSDP2 only: unset FSDP_VERSION or set it to 2")
    os.environ["FSDP_VERSION"] = "2"
    return {"fsdp": {"state_dict_type": cfg.fsdp.state_dict_type,
                     "reshard_after_forward": cfg.fsdp.reshard_after_forward,
                     "activation_checkpointing": cfg.fsdp.activation_checkpointing}}


def build_trainer(cfg: TrainConfig, extra_callbacks: list | None = None, train_dataloader=None):
    """The Composer ``Trainer`` for ``cfg`` (nothing trained yet); ``train_dataloader`` replaces the
    shard loader (the benchmark's synthetic in-memory batches)."""
    from composer import Trainer
    from composer.optim import CosineAnnealingWithWarmupScheduler
    from composer.utils import dist, reproducibility

    from unimed.streaming.loader import build_loader
    from unimed.train.callbacks import build_callbacks
    from unimed.train.checkpoint import composer_load_guard, tokenizer_for
    from unimed.train.composer_model import UnimedCLIP
    from unimed.train.weights import build_model

    device, precision = resolve_device(cfg)
    parallelism = _parallelism(cfg)
    dist.initialize_dist(device)
    reproducibility.seed_all(cfg.seed)
    tokenizer = tokenizer_for(cfg)
    if cfg.data.context_length != cfg.model.text.context_length:
        raise UserError(f"data.context_length {cfg.data.context_length} differs from model.text.context_length "
                        f"{cfg.model.text.context_length}")
    model = UnimedCLIP(build_model(cfg.model, tokenizer.vocab_size, tokenizer.pad_id))
    if cfg.save_folder and dist.get_global_rank() == 0 and "://" not in cfg.save_folder:
        save_config(cfg, os.path.join(cfg.save_folder, "config.yaml"))
    loader = train_dataloader if train_dataloader is not None else build_loader(cfg.data, tokenizer)
    callbacks = build_callbacks(cfg, tokenizer, on_gpu=device == "gpu") + list(extra_callbacks or [])
    autoresume = bool(cfg.autoresume and cfg.save_folder)
    # Composer unpickles load_path / the autoresume checkpoint with weights_only=False: the guard makes it safe.
    with composer_load_guard(cfg.load_path, cfg.save_folder if autoresume else None):
        return Trainer(
            run_name=cfg.run_name,
            model=model,
            train_dataloader=loader,
            optimizers=build_optimizer(model, cfg),
            schedulers=CosineAnnealingWithWarmupScheduler(t_warmup=cfg.scheduler.warmup, alpha_f=cfg.scheduler.alpha_f),
            max_duration=cfg.max_duration,
            device=device,
            precision=precision,
            parallelism_config=parallelism,
            device_train_microbatch_size=cfg.data.batch_size,
            callbacks=callbacks,
            algorithms=_algorithms(cfg),
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


def _algorithms(cfg: TrainConfig) -> list:
    if cfg.grad_clip_norm:
        from composer.algorithms import GradientClipping

        return [GradientClipping(clipping_type="norm", clipping_threshold=cfg.grad_clip_norm)]
    return []


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
    """The unsharded model weights on CPU (gathered from every rank under FSDP2)."""
    model = trainer.state.model
    out = {}
    for k, v in model.state_dict().items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        out[k] = v.detach().cpu()
    return out
