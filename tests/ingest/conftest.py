"""Fixtures for the ingest tests: a fixed uid key, conversion and read-back helpers."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

UID_KEY = "unimed-test-key-0123456789abcdef0123"  # 32+ bytes, as a real key must be


@pytest.fixture(autouse=True)
def _uid_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIMED_UID_KEY", UID_KEY)


def run_convert(inputs: list, out: Path, **kw) -> dict:
    """Convert with the library call (the CLI's config), quietly."""
    from unimed.ingest.convert import ConvertConfig, convert

    kw.setdefault("progress", False)
    cfg = ConvertConfig(inputs=[str(i) for i in inputs], out=str(out), **kw)
    return convert(cfg, echo=lambda s: None)


def read_samples(out: Path) -> list[dict]:
    """All samples of a converted folder, read by a stock streaming.StreamingDataset."""
    from unimed.ingest.reader import open_dataset

    with open_dataset(str(out)) as ds:
        return [ds[i] for i in range(len(ds))]


def decode(sample: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(sample["image"])) as im:
        return np.asarray(im)


def rejects(out: Path, report: Path | None = None) -> list[dict]:
    """The operator's reject list (uid, path, reason) from the report folder beside ``out``."""
    import json

    path = Path(report or f"{out}.report") / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset_rejects(out: Path) -> list[dict]:
    """The dataset's own reject list (uid and reason only)."""
    import json

    path = Path(out) / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def helpers():
    class H:
        convert = staticmethod(run_convert)
        read = staticmethod(read_samples)
        decode = staticmethod(decode)
        rejects = staticmethod(rejects)
        dataset_rejects = staticmethod(dataset_rejects)
        key = UID_KEY.encode()

    return H


os.environ.setdefault("TQDM_DISABLE", "1")
