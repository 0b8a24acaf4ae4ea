"""Training on real shards: a few steps, a crash and autoresume equal to an uninterrupted run, eval CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from composer.core import Callback

from unimed.train.trainer import train


class _Crash(Callback):
    """Raise at the end of batch ``at``, like a job killed mid-run."""

    def __init__(self, at: int) -> None:
        self.at = at

    def batch_end(self, state, logger) -> None:
        if int(state.timestamp.batch.value) == self.at:
            raise KeyboardInterrupt("simulated kill")


def _losses(path) -> dict[int, float]:
    out = {}
    for line in open(path):
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed run re-logs; the last entry wins
    return out


def _cfg(tiny_config, folder, **extra):
    # train=true: random crops and flips on; the dataset draws them from (seed, epoch, sample id), so
    # the resumed run sees the very same pixels. dropout 0: with dropout on, the resumed run's dropout stream
    # differs from the uninterrupted one
    # (the global RNG is not at the same point after a resume, even with the loader's own generator).
    return tiny_config(
        **{
            "max_duration": "6ba",
            "data.train": "true",
            "data.shuffle": "true",
            "loss_log": str(folder / "loss.jsonl"),
            "model.text.dropout": 0.0,
            **extra,
        }
    )


@pytest.mark.slow
def test_crash_and_autoresume_equal_an_uninterrupted_run(demo_sets, tiny_config, tmp_path, caplog):
    ref = _cfg(tiny_config, tmp_path / "ref")
    train(ref)
    expected = _losses(tmp_path / "ref" / "loss.jsonl")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert all(v == v and v > 0 for v in expected.values())

    cfg = _cfg(
        tiny_config,
        tmp_path / "run",
        save_folder=str(tmp_path / "run" / "ckpt"),
        save_interval="3ba",
        export_path=str(tmp_path / "run" / "model.pt"),
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[_Crash(5)])
    assert (tmp_path / "run" / "ckpt" / "ep0-ba3-rank0.pt").is_file()
    with caplog.at_level(logging.WARNING, logger="unimed.train.trainer"):
        train(cfg)  # the same command again: continues after batch 3 (the last checkpoint) with the loader where it was
    resumed = [r.getMessage() for r in caplog.records if "resumed from" in r.getMessage()]
    assert resumed == [
        f"unimed.train: resumed from {tmp_path / 'run' / 'ckpt' / 'ep0-ba3-rank0.pt'} at batch 3, sample 24 (epoch 0)"
    ]
    got = _losses(tmp_path / "run" / "loss.jsonl")
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step

    # The eval command reads the checkpoint and its config.yaml.
    from unimed.cli import main as unimed_main

    out = tmp_path / "eval"
    rc = unimed_main(
        [
            "eval",
            "zeroshot",
            "--checkpoint",
            str(tmp_path / "run" / "ckpt" / "ep0-ba6-rank0.pt"),
            "--data",
            demo_sets["eval_root"],
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    table = json.loads((out / "zeroshot.json").read_text())
    assert table["demo-modality"]["n"] == 36
    rc = unimed_main(
        [
            "eval",
            "zeroshot",
            "--checkpoint",
            str(tmp_path / "run" / "model.pt"),
            "--config",
            str(tmp_path / "run" / "ckpt" / "config.yaml"),
            "--data",
            demo_sets["eval"],
        ]
    )
    assert rc == 0


def test_run_py_reports_a_bad_key_in_one_line(capsys):
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("unimed_train_run", root / "train" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["demo-cpu", "optimizer.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error:") and "learning_rate" in err and "Traceback" not in err
