"""The demo writes its training shards where the demo config and the README's next command look."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from unimed.demo import _demo_config_path, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_points_at_the_demo_output(tmp_path, monkeypatch):
    out = inspect.signature(run_demo).parameters["out"].default
    cfg = yaml.safe_load(_demo_config_path().read_text())
    assert cfg["data"]["shards"] == [f"{out}/train-shards"]
    assert cfg["data"]["tokenizer"] == f"{out}/train-shards/tokenizer"
    src = inspect.getsource(run_demo.__globals__["_train_and_evaluate"])
    assert "build_demo_sets(root," in src  # the sets land in `out` itself, not a sub-folder
    assert "composer train/run.py train/yamls/demo-cpu.yaml" in (ROOT / "README.md").read_text()
