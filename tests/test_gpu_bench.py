"""The prepared GPU run's dry run: every section of ``benchmarks/gpu/run.py`` runs on CPU at toy sizes
and lands in one JSON, so the script a lent GPU will run cannot rot between leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu/run.py", "--cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    sections = doc["sections"]
    assert list(sections) == ["env", "pytest_gpu", "loss", "decode", "train"]
    for name in ("pytest_gpu", "loss", "decode", "train"):
        assert sections[name]["status"] == "ok", (name, sections[name].get("tail", "")[-2000:])
    assert "2/" in sections["pytest_gpu"]["summary"] or "collected" in sections["pytest_gpu"]["summary"]
    assert sections["loss"]["figures"]["ratios"]["memory/reference"] > 0
    decode = sections["decode"]["figures"]
    assert decode["dali_loader_img_s"] > 0 and decode["torchvision_decode_jpeg_img_s"] > 0
    train = sections["train"]
    assert train["plain_step"]["figures"]["images_per_second"] > 0
    assert train["figures"]["ratios"]["real/synthetic"] > 0
