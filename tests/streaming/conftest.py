"""Shared fixtures for the streaming tests: one small synthetic shard set and tokenizer per session."""

from __future__ import annotations

import pytest

from unimed.streaming.synthetic import SyntheticSpec, write_synthetic_shards
from unimed.streaming.tokenizer import train_tokenizer

COUNTS = {"xray": 120, "ct": 80, "pathology": 60, "fundus": 40}
CORRUPT = 2  # per modality


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> dict[str, str]:
    """modality -> MDS folder: small images, 30% PNG (8/16-bit) among the grey ones, 2 broken each."""
    root = tmp_path_factory.mktemp("shards")
    spec = SyntheticSpec(counts=COUNTS, size=96, png_fraction=0.3, corrupt=CORRUPT, seed=1, size_limit=1 << 17)
    return write_synthetic_shards(str(root), spec)


@pytest.fixture(scope="session")
def tokenizer_dir(shards, tmp_path_factory) -> str:
    """A WordPiece tokenizer trained on the synthetic captions."""
    root = str(shards["xray"]).rsplit("/", 1)[0]
    return train_tokenizer(root, str(tmp_path_factory.mktemp("tok")), vocab_size=200, context_length=32)
