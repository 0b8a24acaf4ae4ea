"""unimed.shards writes what streaming.MDSWriter writes, byte for byte, and a stock StreamingDataset reads it."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from unimed import shards
from unimed.errors import UserError
from unimed.schema import COLUMNS


def _samples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "image": rng.randbytes(rng.choice([0, 1, 37, 900, 5000])),
                "captions": [f"caption {i} é ✓", "x" * rng.randint(1, 40)],
                "modality": rng.choice(["ct", "xray", "mri"]),
                "labels": [] if i % 3 else ["nodule", "effusion"],
                "source": "local",
                "uid": f"{rng.getrandbits(128):032x}",
                "patient": "" if i % 4 == 0 else f"{rng.getrandbits(128):032x}",
                "study": f"{rng.getrandbits(128):032x}",
                "meta": {"codec": "jpeg", "window": [40.0, 400.0], "spacing": [0.7, 0.7], "n": i, "none": None},
            }
        )
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "compression,hashes,size_limit",
    [
        ("zstd:3", ["xxh64"], "64mb"),
        (None, ["xxh64"], 20_000),
        ("zstd", ["sha1", "xxh64"], "8kb"),
        ("zstd:1", [], 3000),  # some samples exceed the limit alone (streaming then flushes an empty shard)
    ],
)
def test_byte_identical_to_mdswriter(tmp_path: Path, compression, hashes, size_limit) -> None:
    from streaming import MDSWriter

    samples = _samples(120)
    with MDSWriter(
        out=str(tmp_path / "lib"), columns=COLUMNS, compression=compression, hashes=hashes, size_limit=size_limit
    ) as w:
        for s in samples:
            w.write(s)
    with shards.ShardWriter(str(tmp_path / "ours"), COLUMNS, compression, hashes, size_limit) as w:
        for s in samples:
            w.write(s)
    lib, ours = _files(tmp_path / "lib"), _files(tmp_path / "ours")
    assert len(lib) > 1 and list(lib) == list(ours)
    for name in lib:
        assert lib[name] == ours[name], name
    assert [s for s in shards.iter_samples(str(tmp_path / "ours"))] == samples


def test_stock_streaming_dataset_reads_merged_folders(tmp_path: Path) -> None:
    from streaming import StreamingDataset

    samples = _samples(50, seed=1)
    for k, part in enumerate((samples[:20], samples[20:])):
        with shards.ShardWriter(str(tmp_path / "ds" / f"c{k}"), COLUMNS, "zstd:3", ["xxh64"], 30_000) as w:
            for s in part:
                w.write(s)
    merged = shards.merge_index(str(tmp_path / "ds"), ["c0", "c1"])
    assert sum(s["samples"] for s in merged) == 50
    ds = StreamingDataset(local=str(tmp_path / "ds"), shuffle=False, batch_size=1)
    got = [ds[i] for i in range(len(ds))]
    assert len(got) == 50
    for a, b in zip(got, samples):
        assert {k: a[k] for k in COLUMNS} == b
    assert list(shards.iter_samples(str(tmp_path / "ds"))) == samples
    del ds


def test_read_index_refuses_missing_empty_or_damaged(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no index.json"):
        shards.read_index(str(tmp_path))
    for text in ("", "{", json.dumps({"shards": 3}), json.dumps({"shards": [1]})):
        (tmp_path / "index.json").write_text(text)
        with pytest.raises(UserError, match="empty or damaged index"):
            shards.read_index(str(tmp_path))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        shards.ShardWriter(str(tmp_path / "a"), {"x": "pkl"})
    with pytest.raises(ValueError):
        shards.ShardWriter(str(tmp_path / "b"), COLUMNS, compression="gz")
    with pytest.raises(ValueError):
        shards.ShardWriter(str(tmp_path / "c"), COLUMNS, hashes=["xxh64", "sha1"])
    assert shards.parse_size("64mb") == 64 << 20 and shards.parse_size("100b") == 100
    assert shards.parse_size(0) is None and shards.parse_size("1.5kb") == 1536
    os.makedirs(tmp_path / "d")
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        shards.ShardWriter(str(tmp_path / "d"), COLUMNS)
