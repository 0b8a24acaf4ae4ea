"""The moving average of the weights: its arithmetic against a hand-kept average of the weights the real
Composer run produced, a checkpoint carrying it, resumption, and evaluation reading it (or not)."""

from __future__ import annotations

import pytest
import torch
from composer.core import Callback

from unimed.errors import UserError
from unimed.train.checkpoint import read_model_state
from unimed.train.ema import WeightEMA
from unimed.train.trainer import train

DECAY = 0.6  # small, so that six steps move the average far from the first weights


class _Record(Callback):
    """The trainable weights before training and after every step (after the logit-scale clamp)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def _take(self, state) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in state.model.model.named_parameters() if p.requires_grad}

    def fit_start(self, state, logger) -> None:
        self.start = self._take(state)

    def batch_end(self, state, logger) -> None:
        self.steps.append(self._take(state))


def _cfg(tiny_config, folder, **extra):
    return tiny_config(
        **{
            "max_duration": "6ba",
            "ema.enabled": "true",
            "ema.decay": DECAY,
            "model.text.dropout": 0.0,
            "save_folder": str(folder),
            "save_interval": "3ba",
            **extra,
        }
    )


def _by_hand(start: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    avg = {k: v.clone() for k, v in start.items()}
    for n, weights in enumerate(steps):
        d = min(DECAY, (1 + n) / (10 + n))
        for k in avg:
            avg[k] = d * avg[k] + (1 - d) * weights[k]
    return avg


@pytest.mark.slow
def test_the_average_is_checkpointed_resumed_and_evaluated(demo_sets, tiny_config, tmp_path):
    record = _Record()
    cfg = _cfg(tiny_config, tmp_path / "ref")
    trainer = train(cfg, extra_callbacks=[record])
    assert len(record.steps) == 6
    expected = _by_hand(record.start, record.steps)
    ema = next(cb for cb in trainer.state.callbacks if isinstance(cb, WeightEMA))
    assert ema.updates == 6 and set(ema.weights) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(ema.weights[k], v, rtol=1e-5, atol=1e-6, msg=k)

    # The checkpoint holds both: evaluation reads the average, --no-ema the training weights.
    ckpt = str(tmp_path / "ref" / "ep0-ba6-rank0.pt")
    averaged, plain = read_model_state(ckpt), read_model_state(ckpt, ema=False)
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(plain[k], record.steps[-1][k], rtol=0, atol=0, msg=k)
    moved = max(float((averaged[k] - plain[k]).abs().max()) for k in expected)
    assert moved > 1e-4  # the average is not the last weights: the test can tell them apart

    # Applying the average for an evaluation gives the training weights back exactly afterwards.
    model = trainer.state.model.model
    with ema.applied(model):
        for k, p in model.named_parameters():
            if k in expected:
                torch.testing.assert_close(p.detach(), expected[k], rtol=1e-5, atol=1e-6)
    for k, p in model.named_parameters():
        if k in expected:
            assert torch.equal(p.detach(), record.steps[-1][k]), k

    # A run stopped at batch 3 and resumed continues the average where it was.
    first = _cfg(tiny_config, tmp_path / "run", max_duration="3ba")
    train(first)
    resumed = train(_cfg(tiny_config, tmp_path / "run"))
    assert int(resumed.state.timestamp.batch) == 6
    again = read_model_state(str(tmp_path / "run" / "ep0-ba6-rank0.pt"))
    for k, v in expected.items():
        torch.testing.assert_close(again[k], v, rtol=1e-4, atol=1e-5, msg=k)

    # The zero-shot command takes --no-ema; both read the checkpoint alone (it is self-contained).
    from unimed.cli import main as unimed_main

    for flags in ([], ["--no-ema"]):
        rc = unimed_main(["eval", "zeroshot", "--checkpoint", ckpt, "--data", demo_sets["eval"], *flags])
        assert rc == 0


def test_a_decay_outside_zero_one_is_refused_when_the_config_loads(tiny_config):
    with pytest.raises(UserError, match=r"ema.decay 1.0: between 0 and 1"):
        tiny_config(**{"ema.decay": 1.0})
