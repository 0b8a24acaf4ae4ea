"""The MDS shard format, written and read here: shard files, their hashes and ``index.json``.

:class:`ShardWriter` writes what ``streaming.MDSWriter`` writes for the same samples, byte for byte
(shard files and ``index.json``; ``tests/test_shards.py`` checks it against the library), without
importing mosaicml-streaming, which pulls in torch and transformers (2.9 s and ~790 MB a process).
The format, from ``streaming/base/format/mds/writer.py`` and ``base/writer.py`` (0.13):

- columns in sorted order; a sample is the uint32 sizes of its variable-size columns, then the
  column bytes (``bytes`` as is, ``str`` as UTF-8, ``json`` as ``json.dumps`` in UTF-8);
- a joint shard is the uint32 sample count, the uint32 offsets of the samples (count + 1 of them),
  the writer's configuration as sorted-key JSON, then the samples; a shard closes before the sample
  that would take it past ``size_limit`` (counting 4 bytes a sample and the header);
- ``shard.NNNNN.mds`` is hashed, compressed (``zstd`` by the ``zstd`` package streaming uses, so the
  bytes match) into ``shard.NNNNN.mds.zstd`` and hashed again; only the compressed file is written;
- ``index.json`` is ``{"version": 2, "shards": [...]}`` dumped with sorted keys.

Reading: :func:`read_index` is the one check of an index file (missing, empty or damaged is a
one-line ``UserError``); :func:`merge_index` writes the index of several shard folders atomically;
:func:`iter_samples` decodes samples without streaming (for tools that need no ``StreamingDataset``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np

from unimed.errors import UserError

__all__ = [
    "ShardWriter",
    "ENCODINGS",
    "parse_size",
    "check_compression",
    "compress",
    "decompress",
    "file_hash",
    "read_index",
    "write_index",
    "merge_index",
    "iter_samples",
    "shard_file",
    "INDEX",
]

INDEX = "index.json"
#: The column encodings written here (the variable-size ones the shard schema uses).
ENCODINGS = ("bytes", "str", "json")
_UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_size(size: int | str | None) -> int | None:
    """A shard size limit in bytes (``"64mb"`` is 64 MiB, as streaming reads it); None or 0 is no limit."""
    if not size:
        return None
    if isinstance(size, int | float):
        value = int(size)
    else:
        text = size.strip().lower()
        unit = next((u for u in _UNITS if text.endswith(u)), None)
        try:
            if unit:
                value = int(float(text[: -len(unit)]) * _UNITS[unit])
            else:
                value = int(text[:-1] if text.endswith("b") else text)
        except ValueError:
            raise ValueError(f"size {size!r}: a number of bytes, or one with kb, mb, gb or tb") from None
    if not 0 <= value < 1 << 32:
        raise ValueError(f"size limit {size!r} must lie in 0..4 GiB (sample offsets are uint32)")
    return value


def check_compression(compression: str | None) -> None:
    """Raise ValueError unless ``compression`` is None or ``zstd[:LEVEL]`` (LEVEL 1..22, as streaming names them)."""
    if compression:
        _codec(compression)


def _codec(compression: str) -> tuple[str, int]:
    name, _, level = compression.partition(":")
    if name != "zstd" or (level and not (level.isdigit() and 1 <= int(level) <= 22)):
        raise ValueError(f"compression {compression!r}: use zstd or zstd:LEVEL (1..22), or none")
    return name, int(level or 3)


def compress(compression: str | None, data: bytes) -> bytes:
    """``data`` compressed as streaming compresses it (``zstd[:LEVEL]``, default level 3)."""
    if not compression:
        return data
    import zstd

    return zstd.compress(data, _codec(compression)[1])


def decompress(compression: str | None, data: bytes) -> bytes:
    """The inverse of :func:`compress`."""
    if not compression:
        return data
    import zstd

    _codec(compression)
    return zstd.decompress(data)


def _hasher(algo: str) -> Any:
    if algo.startswith("xxh"):
        import xxhash

        if algo not in xxhash.algorithms_available:
            raise ValueError(f"unknown hash {algo!r}")
        return getattr(xxhash, algo)
    if algo not in hashlib.algorithms_available or algo.startswith("shake_"):
        raise ValueError(f"unknown hash {algo!r}")
    return getattr(hashlib, algo)


def file_hash(algo: str, path: str) -> str:
    """The hex digest of a file under ``algo`` (xxh64, sha1, ...), read in blocks."""
    h = _hasher(algo)()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _encode(encoding: str, value: Any) -> bytes:
    if encoding == "bytes":
        if not isinstance(value, bytes):
            raise TypeError(f"a bytes column takes bytes, not {type(value).__name__}")
        return value
    if encoding == "str":
        if not isinstance(value, str):
            raise TypeError(f"a str column takes str, not {type(value).__name__}")
        return value.encode("utf-8")
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value).encode("utf-8")


def _decode(encoding: str, data: bytes) -> Any:
    if encoding == "bytes":
        return data
    text = data.decode("utf-8")
    return text if encoding == "str" else json.loads(text)


class ShardWriter:
    """Write samples into MDS shards in ``out`` (a local folder, created; it must be empty or absent).

    The same arguments as ``streaming.MDSWriter`` for local output, and the same files. ``index.json``
    is written (to a temporary name, then renamed) by :meth:`finish`, after every shard.
    """

    format = "mds"

    def __init__(
        self,
        out: str,
        columns: dict[str, str],
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
    ) -> None:
        for name in sorted(columns):
            if columns[name] not in ENCODINGS:
                raise ValueError(f"column {name!r}: encoding {columns[name]!r} is not one of {ENCODINGS}")
        hashes = list(hashes or [])
        if hashes != sorted(set(hashes)):
            raise ValueError("hashes must be unique and in sorted order")
        for algo in hashes:
            _hasher(algo)
        self.compression = compression or None
        if self.compression:
            _codec(self.compression)
        self.hashes = hashes
        self.size_limit = parse_size(size_limit)
        self.out = out
        if os.path.isdir(out) and os.listdir(out):
            raise FileExistsError(f"{out}: not empty")
        os.makedirs(out, exist_ok=True)
        self.names = sorted(columns)
        self.encodings = [columns[n] for n in self.names]
        self.config = {
            "version": 2,
            "format": self.format,
            "compression": self.compression,
            "hashes": self.hashes,
            "size_limit": self.size_limit,
            "column_names": self.names,
            "column_encodings": self.encodings,
            "column_sizes": [None] * len(self.names),
        }
        self.config_data = json.dumps(self.config, sort_keys=True).encode("utf-8")
        self.shards: list[dict] = []
        self._head = 4 + 4 + len(self.config_data)
        self._reset()

    def _reset(self) -> None:
        self.samples: list[bytes] = []
        self.size = self._head

    def encode(self, sample: dict[str, Any]) -> bytes:
        """One sample's bytes: the uint32 column sizes, then the columns."""
        data = [_encode(e, sample[n]) for n, e in zip(self.names, self.encodings)]
        return struct.pack(f"<{len(data)}I", *map(len, data)) + b"".join(data)

    def write(self, sample: dict[str, Any]) -> None:
        """Add a sample; first close the current shard when the sample would take it past the limit."""
        data = self.encode(sample)
        if self.size_limit and self.size_limit < self.size + len(data) + 4:
            self.flush()
        self.samples.append(data)
        self.size += len(data) + 4

    def _info(self, data: bytes, basename: str) -> dict:
        return {
            "basename": basename,
            "bytes": len(data),
            "hashes": {a: _hasher(a)(data).hexdigest() for a in self.hashes},
        }

    def flush(self) -> None:
        """Write the cached samples as the next shard (as streaming does, even when there are none)."""
        n = len(self.samples)
        offsets = np.array([0] + [len(s) for s in self.samples]).cumsum().astype(np.uint32)
        offsets += 4 + 4 * (n + 1) + len(self.config_data)
        raw = np.uint32(n).tobytes() + offsets.tobytes() + self.config_data + b"".join(self.samples)
        raw_name = f"shard.{len(self.shards):05d}.{self.format}"
        raw_info, zip_info = self._info(raw, raw_name), None
        data, name = raw, raw_name
        if self.compression:
            data, name = compress(self.compression, raw), f"{raw_name}.zstd"
            zip_info = self._info(data, name)
        with open(os.path.join(self.out, name), "wb") as fh:
            fh.write(data)
        self.shards.append({"samples": n, "raw_data": raw_info, "zip_data": zip_info, **self.config})
        self._reset()

    def finish(self) -> None:
        """Write the last shard and ``index.json``."""
        if self.samples:
            self.flush()
        write_index(self.out, self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:  # a failed chunk writes no index: it is redone whole
            self.finish()


def write_index(folder: str, shards: list[dict]) -> None:
    """Write ``<folder>/index.json`` as streaming does (sorted keys), to a temporary name, then renamed."""
    path = os.path.join(folder, INDEX)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump({"version": 2, "shards": shards}, fh, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_index(folder: str) -> dict:
    """The folder's ``index.json``; a missing, empty or damaged one is a one-line UserError."""
    path = os.path.join(folder, INDEX)
    if not os.path.isfile(path):
        raise UserError(f"{folder}: no index.json (not a converted folder, or the run has not finished)")
    try:
        with open(path) as fh:
            index = json.load(fh)
    except (ValueError, UnicodeDecodeError):
        index = None
    if (
        not isinstance(index, dict)
        or not isinstance(index.get("shards"), list)
        or not all(isinstance(s, dict) and isinstance(s.get("raw_data"), dict) for s in index["shards"])
    ):
        raise UserError(f"{path}: empty or damaged index; rerun `ingest merge {folder}` to rebuild it")
    return index


def shard_file(shard: dict) -> dict:
    """The index entry of the file a shard is stored as (compressed if it is)."""
    return shard.get("zip_data") or shard["raw_data"]


def merge_index(out: str, folders: list[str]) -> list[dict]:
    """Write ``<out>/index.json`` over the shards of ``out``'s subfolders ``folders``, in that order.

    Each shard's basenames are prefixed with its folder, as ``streaming.base.util.merge_index`` does.
    Returns the merged shard entries.
    """
    shards = []
    for d in folders:
        for shard in read_index(os.path.join(out, d))["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(key):
                    shard[key]["basename"] = os.path.join(d, shard[key]["basename"])
            shards.append(shard)
    write_index(out, shards)
    return shards


def iter_samples(folder: str) -> Iterator[dict[str, Any]]:
    """Every sample of a folder's shards, in index order, decoded by the column encodings."""
    for shard in read_index(folder)["shards"]:
        entry = shard_file(shard)
        with open(os.path.join(folder, entry["basename"]), "rb") as fh:
            data = fh.read()
        raw = decompress(shard.get("compression") if shard.get("zip_data") else None, data)
        n = int(np.frombuffer(raw, np.uint32, 1)[0])
        offsets = np.frombuffer(raw, np.uint32, n + 1, 4)
        names, encodings = shard["column_names"], shard["column_encodings"]
        fixed = shard.get("column_sizes") or [None] * len(names)
        if any(s is not None for s in fixed) or any(e not in ENCODINGS for e in encodings):
            raise ValueError(f"{entry['basename']}: only {', '.join(ENCODINGS)} columns are read here")
        for i in range(n):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            sizes = np.frombuffer(raw, np.uint32, len(names), lo)
            pos = lo + 4 * len(names)
            sample = {}
            for name, enc, size in zip(names, encodings, sizes):
                sample[name] = _decode(enc, raw[pos : pos + int(size)])
                pos += int(size)
            assert pos == hi, "sample sizes disagree with the shard's offsets"
            yield sample
