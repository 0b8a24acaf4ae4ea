"""Shared fixtures for the training tests: the demo's real-image sets (small) and a tiny config."""

from __future__ import annotations

import pytest

from unimed.train.config import TrainConfig, config_from_dict, load_config


@pytest.fixture(scope="session")
def demo_sets(tmp_path_factory) -> dict[str, str]:
    """Training shards (+ tokenizer) and the held-out modality set, from real sample images."""
    from unimed.train.demodata import build_demo_sets

    return build_demo_sets(tmp_path_factory.mktemp("demo"), train_per_modality=16, eval_per_modality=6,
                           size=64, workers=1)


def tiny_overrides(demo_sets: dict[str, str], **extra) -> list[str]:
    """Overrides that make demo-cpu.yaml tiny: 32 px, 2-layer towers, 8 per batch."""
    base = {
        "data.shards": f"[{demo_sets['train']}]",
        "data.tokenizer": demo_sets["tokenizer"],
        "data.batch_size": 8,
        "data.image_size": 32,
        "data.num_workers": 0,
        "model.vision.image_size": 32,
        "model.vision.width": 32,
        "model.vision.layers": 2,
        "model.vision.heads": 2,
        "model.text.hidden_size": 32,
        "model.text.intermediate_size": 64,
        "model.embed_dim": 32,
        "scheduler.warmup": "2ba",
        "console_log_interval": "100ba",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_cfg(demo_sets) -> TrainConfig:
    return load_config("train/yamls/demo-cpu.yaml", tiny_overrides(demo_sets, max_duration="4ba"))


__all__ = ["tiny_overrides", "config_from_dict"]
