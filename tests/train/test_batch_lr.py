"""Global batch over the world size, the learning-rate rule, and the refusal of contrastive micro-batching."""

from __future__ import annotations

import pytest

from unimed.errors import UserError
from unimed.train.config import load_config
from unimed.train.trainer import build_trainer, per_device_batch, scaled_lr


@pytest.mark.parametrize("name", ["vitb16-unimed", "vitl14-unimed"])
def test_the_paper_configs_give_2048_on_8_or_16_gpus(name):
    cfg = load_config(name)
    assert per_device_batch(cfg, 16) == 128  # the paper's 128 per GPU on 16 GPUs
    assert per_device_batch(cfg, 8) == 256
    for world in (8, 16):
        assert per_device_batch(cfg, world) * world == 2048
        assert scaled_lr(cfg, 2048) == cfg.optimizer.lr  # the paper's rate at the paper's batch
    with pytest.raises(UserError, match="global_batch_size=2048 does not split over 3 processes") as err:
        per_device_batch(cfg, 3)
    assert "\n" not in str(err.value)


def test_lr_scaling_rules():
    base = ["optimizer.lr=4e-4", "optimizer.reference_batch_size=1024"]
    none = load_config("demo-cpu", base)
    assert scaled_lr(none, 4096) == 4e-4  # "none" is the default: lr as given
    linear = load_config("demo-cpu", [*base, "optimizer.lr_scaling=linear"])
    assert scaled_lr(linear, 4096) == pytest.approx(1.6e-3) and scaled_lr(linear, 512) == pytest.approx(2e-4)
    sqrt = load_config("demo-cpu", [*base, "optimizer.lr_scaling=sqrt"])
    assert scaled_lr(sqrt, 4096) == pytest.approx(8e-4)
    with pytest.raises(UserError, match="optimizer.lr_scaling must be one of"):
        scaled_lr(load_config("demo-cpu", ["optimizer.lr_scaling=quadratic"]), 64)
    with pytest.raises(UserError, match="needs optimizer.reference_batch_size"):
        scaled_lr(load_config("demo-cpu", ["optimizer.lr_scaling=linear"]), 64)


def test_one_process_takes_the_whole_global_batch_at_the_scaled_rate(tiny_config):
    cfg = tiny_config(
        **{
            "global_batch_size": 12,
            "optimizer.lr": 1e-3,
            "optimizer.lr_scaling": "linear",
            "optimizer.reference_batch_size": 24,
            "max_duration": "1ba",
        }
    )
    trainer = build_trainer(cfg)
    assert cfg.data.batch_size == 12 and trainer.state.device_train_microbatch_size == 12
    assert trainer.state.train_dataloader.batch_size == 12
    assert [g["initial_lr"] for g in trainer.state.optimizers[0].param_groups] == [5e-4, 5e-4]
    trainer.close()


def test_micro_batches_smaller_than_the_batch_are_refused(tiny_config):
    cfg = tiny_config(device_train_microbatch_size=4)
    with pytest.raises(UserError, match="device_train_microbatch_size=4 differs from the per-process batch 8") as err:
        build_trainer(cfg)
    assert "\n" not in str(err.value) and "negatives" in str(err.value)
