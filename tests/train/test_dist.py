"""FSDP2 on CPU: two gloo processes train, write a sharded checkpoint, resume it, and evaluation reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _launch(overrides: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    composer = Path(sys.executable).parent / "composer"
    cmd = [str(composer), "-n", "2", "--master_port", "29611", "train/run.py", "train/yamls/demo-cpu.yaml", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp2_two_processes_save_sharded_and_resume(demo_sets, tiny_overrides, tmp_path):
    env = {**os.environ, "FSDP_VERSION": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ckpt = tmp_path / "ckpt"
    common = tiny_overrides(
        **{
            "save_folder": str(ckpt),
            "save_interval": "2ba",
            "loss_log": str(tmp_path / "loss.jsonl"),
            "ema.enabled": "true",
            "ema.decay": 0.5,
        }
    )
    first = _launch([*common, "max_duration=2ba"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    shard = ckpt / "ep0-ba2"
    assert (shard / ".metadata").is_file() and len(list(shard.glob("*.distcp"))) == 2  # one shard per rank
    second = _launch([*common, "max_duration=4ba"], env)  # autoresume from ep0-ba2
    assert second.returncode == 0, second.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "loss.jsonl")]
    assert steps == [1, 2, 3, 4]  # the second run started at batch 3
    assert (ckpt / "ep0-ba4" / ".metadata").is_file()

    # Each rank averaged its own shards; the sharded checkpoint gives back whole averaged tensors.
    from unimed.train.checkpoint import read_model_state

    averaged, plain = read_model_state(str(ckpt / "ep0-ba4")), read_model_state(str(ckpt / "ep0-ba4"), ema=False)
    assert set(averaged) == set(plain)
    assert all(averaged[k].shape == plain[k].shape for k in plain)
    assert max(float((averaged[k].float() - plain[k].float()).abs().max()) for k in plain) > 1e-4
    from unimed.train.checkpoint import read_checkpoint

    entry = read_checkpoint(str(ckpt / "ep0-ba4"))[1]["state"]["callbacks"]["WeightEMA"]
    assert entry["updates"] == 4  # the resumed run went on from the 2 updates of the first

    from unimed.train.evaluate import run_zeroshot

    results = run_zeroshot(str(ckpt / "ep0-ba4"), demo_sets["eval"], out=str(tmp_path / "eval"))
    assert results["demo-modality"]["n"] == 36
