"""``ingest verify``: re-hash every shard, decode every image, check the schema and the counts."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from unimed.ingest.progress import Progress
from unimed.ingest.reader import open_dataset
from unimed.remote import local_folder
from unimed.schema import check_columns, check_sample
from unimed.shards import decompress, file_hash, read_index, shard_file

__all__ = ["verify"]


def _check_files(folder: str, index: dict, progress: bool = True) -> list[str]:
    import xxhash

    faults = []
    bar = Progress(len(index.get("shards", [])), progress, what="verify", unit="shards hashed", count=None)
    for i, shard in enumerate(index.get("shards", [])):
        bar.update(1)
        wrong = check_columns(shard.get("column_names") or [])  # an older folder may lack later columns
        if wrong:
            faults.append(f"shard {i}: columns {shard.get('column_names')} differ from the schema ({wrong})")
        entry = shard_file(shard)
        name = entry["basename"]
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            faults.append(f"{name}: missing")
            continue
        if os.path.getsize(path) != entry["bytes"]:
            faults.append(f"{name}: {os.path.getsize(path)} bytes, index says {entry['bytes']}")
            continue
        want = entry.get("hashes", {}).get("xxh64")
        if want is None:
            faults.append(f"{name}: index holds no xxh64 hash")
        elif file_hash("xxh64", path) != want:
            faults.append(f"{name}: xxh64 hash mismatch (shard corrupted)")
            continue
        if shard.get("zip_data"):
            with open(path, "rb") as fh:
                raw = decompress(shard.get("compression"), fh.read())
            rwant = shard["raw_data"].get("hashes", {}).get("xxh64")
            if rwant and xxhash.xxh64(raw).hexdigest() != rwant:
                faults.append(f"{name}: decompressed data hash mismatch")
    bar.close()
    return faults


def _check_samples(folder: str, index: dict, decode: bool, progress: bool = True) -> tuple[list[str], int]:
    from PIL import Image

    faults: list[str] = []
    bounds = []
    total = 0
    for shard in index["shards"]:
        bounds.append((total, total + shard["samples"], shard_file(shard)["basename"]))
        total += shard["samples"]
    uids: dict[str, int] = {}
    with open_dataset(folder) as ds:
        # Started once the dataset is open (streaming's import takes seconds): the rate and the time left
        # are of the samples, not of the start-up.
        bar = Progress(total, progress, what="verify", unit="samples", count=None)
        if len(ds) != total:
            faults.append(f"dataset reports {len(ds)} samples, index shards hold {total}")
        for lo, hi, name in bounds:
            for idx in range(lo, hi):
                where = f"{name} sample {idx - lo}"
                bar.update(1)
                try:
                    sample = ds[idx]
                except Exception as exc:  # a damaged shard surfaces here
                    faults.append(f"{where}: unreadable ({type(exc).__name__})")
                    continue
                for fault in check_sample(sample):
                    faults.append(f"{where}: {fault}")
                uid = sample.get("uid")
                if uid in uids:
                    faults.append(f"{where}: duplicate uid (also sample {uids[uid]})")
                uids[uid] = idx
                if decode and isinstance(sample.get("image"), bytes | bytearray):
                    try:
                        with Image.open(io.BytesIO(sample["image"])) as im:
                            im.load()
                            meta: Any = sample.get("meta") or {}
                            if (meta.get("width"), meta.get("height")) != im.size:
                                faults.append(
                                    f"{where}: image is {im.size}, meta says {(meta.get('width'), meta.get('height'))}"
                                )
                    except Exception as exc:
                        faults.append(f"{where}: image does not decode ({type(exc).__name__})")
    bar.close()
    return faults, total


def verify(folder: str, decode: bool = True, progress: bool = True) -> tuple[list[str], dict]:
    """All faults of a converted folder (empty when sound) and its counts (``progress``: a progress line
    on stderr, as ``ingest convert`` shows it).

    An ``s3://`` folder is downloaded into the cache first (:func:`unimed.remote.fetch`; only changed
    objects on a second run), then checked as a local one: every shard against the index's hashes.
    """
    folder = local_folder(folder)
    index = read_index(folder)
    faults = _check_files(folder, index, progress)
    counts = {"shards": len(index["shards"]), "samples": sum(s["samples"] for s in index["shards"])}
    if faults:  # do not hand corrupted shards to the reader
        return faults, counts
    sample_faults, total = _check_samples(folder, index, decode, progress)
    faults += sample_faults
    summary_path = os.path.join(folder, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as fh:
            summary = json.load(fh)
        if summary.get("images") != total:
            faults.append(f"summary.json says {summary.get('images')} images, shards hold {total}")
    else:
        faults.append("summary.json missing")
    return faults, counts
