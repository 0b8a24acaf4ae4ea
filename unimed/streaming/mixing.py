"""Modality mixes: a YAML list of shard folders with weights, mapped onto ``streaming.Stream``s.

A mix file is either a list or a mapping with ``streams:`` (and optionally ``cache_dir:``)::

    cache_dir: /scratch/unimed-cache        # where remote shards are cached (optional)
    streams:
      - path: /data/shards/xray             # a local MDS folder ...
        proportion: 0.4
      - path: s3://bucket/unimed/ct         # ... or a remote one (s3://, gs://), cached locally
        proportion: 0.3
      - path: shards/pathology              # relative paths are relative to the YAML file
        repeat: 2.0                         # or choose: 5000

Each entry takes at most one of ``proportion`` (a share of the epoch), ``repeat`` (times over the
folder) or ``choose`` (samples per epoch), exactly as ``streaming.Stream`` defines them; proportions
are relative, and mixing proportions with repeat/choose is refused by mosaicml-streaming.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import yaml

from unimed.errors import UserError, yaml_error
from unimed.shards import read_index

__all__ = ["MixEntry", "REMOTE_SCHEMES", "load_mix", "parse_mix", "to_streams"]

REMOTE_SCHEMES: tuple[str, ...] = ("s3://", "gs://", "oci://", "azure://", "hf://")
_WEIGHTS = ("proportion", "repeat", "choose")
_KEYS = {"path", "local", "name", *_WEIGHTS}


@dataclass(frozen=True)
class MixEntry:
    """One shard folder of a mix and its weight (at most one of the three is set)."""

    path: str
    local: str | None = None  # cache folder for a remote path; derived from cache_dir if None
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None
    name: str | None = None  # free label for logs (e.g. the modality)

    @property
    def is_remote(self) -> bool:
        """Whether ``path`` is an object-store URL rather than a local folder."""
        return self.path.startswith(REMOTE_SCHEMES)


def parse_mix(doc: Any, root: str = ".", where: str = "mix") -> tuple[list[MixEntry], str | None]:
    """Validate a loaded mix document; return its entries and ``cache_dir`` (``where`` names it in errors)."""
    cache_dir = None
    if isinstance(doc, dict):
        unknown = set(doc) - {"streams", "cache_dir"}
        if unknown:
            raise UserError(f"{where}: unknown keys {sorted(unknown)}; expected 'streams' and 'cache_dir'")
        cache_dir = doc.get("cache_dir")
        doc = doc.get("streams")
    if not isinstance(doc, list) or not doc:
        raise UserError(f"{where}: expected a non-empty list of streams (path + proportion/repeat/choose)")
    entries = []
    for i, raw in enumerate(doc):
        if isinstance(raw, str):
            raw = {"path": raw}
        if not isinstance(raw, dict) or "path" not in raw:
            raise UserError(f"{where}: stream {i} must be a mapping with a 'path'")
        unknown = set(raw) - _KEYS
        if unknown:
            raise UserError(f"{where}: stream {i} has unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        if sum(raw.get(k) is not None for k in _WEIGHTS) > 1:
            raise UserError(f"{where}: stream {i} gives more than one of {_WEIGHTS}")
        path = str(raw["path"])
        if not path.startswith(REMOTE_SCHEMES):
            path = os.path.normpath(os.path.join(root, os.path.expanduser(path)))
        entries.append(
            MixEntry(
                path=path,
                local=raw.get("local"),
                proportion=None if raw.get("proportion") is None else float(raw["proportion"]),
                repeat=None if raw.get("repeat") is None else float(raw["repeat"]),
                choose=None if raw.get("choose") is None else int(raw["choose"]),
                name=raw.get("name"),
            )
        )
    kinds = {k for e in entries for k in _WEIGHTS if getattr(e, k) is not None}
    if "proportion" in kinds and (kinds - {"proportion"} or any(e.proportion is None for e in entries)):
        raise UserError(f"{where}: when one stream has a proportion, every stream needs one (and no repeat/choose)")
    return entries, cache_dir


def load_mix(path: str) -> tuple[list[MixEntry], str | None]:
    """Read a mix YAML file; relative shard paths resolve against the file's folder."""
    if not os.path.isfile(path):
        raise UserError(f"Mix file {path!r} does not exist")
    with open(path) as fh:
        try:
            doc = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise yaml_error(path, exc) from None
    return parse_mix(doc, root=os.path.dirname(os.path.abspath(path)), where=path)


def _cache_folder(cache_dir: str, remote: str) -> str:
    digest = hashlib.sha1(remote.encode()).hexdigest()[:10]
    tail = remote.rstrip("/").rsplit("/", 1)[-1] or "root"
    return os.path.join(cache_dir, f"{tail}-{digest}")


def to_streams(entries: list[MixEntry], cache_dir: str | None = None) -> list:  # list[streaming.Stream]
    """Map mix entries onto ``streaming.Stream``s: local folders are read in place, remote ones are
    downloaded shard by shard into ``cache_dir`` (or the entry's own ``local``)."""
    from streaming import Stream

    streams = []
    for entry in entries:
        weights = {k: getattr(entry, k) for k in _WEIGHTS if getattr(entry, k) is not None}
        if entry.is_remote:
            local = entry.local or (cache_dir and _cache_folder(cache_dir, entry.path))
            if not local:
                raise UserError(f"Remote stream {entry.path!r} needs a local cache: set cache_dir in the mix or config")
            streams.append(Stream(remote=entry.path, local=local, **weights))
        else:
            if not os.path.isfile(os.path.join(entry.path, "index.json")):
                raise UserError(f"Stream folder {entry.path!r} has no index.json: is it an MDS shard folder?")
            if not sum(int(s.get("samples", 0)) for s in read_index(entry.path)["shards"]):
                raise UserError(
                    f"Stream folder {entry.path!r} holds no samples: its conversion converted "
                    "nothing (see its summary.json and rejects.jsonl)"
                )
            streams.append(Stream(local=entry.path, **weights))
    return streams
