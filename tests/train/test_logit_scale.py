"""The logit scale: no clamp in forward (its gradient lives above the bound), the parameter clamped after
each optimizer step by the real Composer Trainer, and the loss log showing the value used."""

from __future__ import annotations

import json
import math

import torch
from composer.core import Callback

from unimed.train.composer_model import UnimedCLIP
from unimed.train.model import CLIPModel, ModelConfig, TextConfig, VisionConfig
from unimed.train.trainer import train


def _tiny() -> CLIPModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2),
        text=TextConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, context_length=12),
    )
    return CLIPModel(cfg, vocab_size=50)


def test_the_scale_has_a_gradient_at_and_above_the_bound():
    cm = UnimedCLIP(_tiny())
    batch = {"image": torch.randn(6, 3, 32, 32), "tokens": torch.randint(1, 50, (6, 12))}
    for scale in (100.0, 150.0):  # at the bound (where a clamp in forward already cut it) and above
        with torch.no_grad():
            cm.model.logit_scale.fill_(math.log(scale))
        cm.model.zero_grad()
        out = cm(batch)
        assert float(out[2]) == torch.tensor([math.log(scale)]).exp().item()  # used unclamped
        cm.loss(out, batch).backward()
        grad = float(cm.model.logit_scale.grad)
        assert math.isfinite(grad) and abs(grad) > 1e-3, (scale, grad)
    cm.model.clamp_logit_scale_()
    assert float(cm.model.scale()) == torch.tensor([math.log(100.0)]).exp().item()
    with torch.no_grad():
        cm.model.logit_scale.fill_(-1.0)  # below 1: open_clip's lower bound, log(1) = 0
    cm.model.clamp_logit_scale_()
    assert float(cm.model.logit_scale) == 0.0


class _PushScale(Callback):
    """Set the scale to 150 before training, as a checkpoint or a high learning rate would leave it."""

    def fit_start(self, state, logger) -> None:
        with torch.no_grad():
            state.model.model.logit_scale.fill_(math.log(150.0))


def test_a_scale_pushed_above_the_bound_comes_back_below(tiny_config, tmp_path):
    log = tmp_path / "loss.jsonl"
    cfg = tiny_config(
        **{
            "max_duration": "5ba",
            "loss_log": str(log),
            "model.vision.layers": 1,
            "model.text.layers": 1,
            "scheduler.warmup": "0ba",
            "optimizer.lr": 0.01,
        }
    )
    trainer = train(cfg, extra_callbacks=[_PushScale()])
    rows = [json.loads(line) for line in open(log)]
    scales = [r["scale"] for r in rows]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(s <= 100.0 * (1 + 1e-6) for s in scales)  # the log shows the clamped value, never 150
    assert scales[0] == torch.tensor([math.log(100.0)]).exp().item()  # clamped right after the first step
    assert scales[-1] < 99.0 and all(b < a for a, b in zip(scales[1:], scales[2:]))  # and free to come down
    assert float(trainer.state.model.model.logit_scale.exp()) == scales[-1]
