"""``ingest split``: train/val/test folders of a converted dataset with no patient (or study) in two of them.

A sample's *group* is its ``patient`` key (``--by patient``) or its ``study`` key (``--by study``); a
sample without one (PNG/JPEG folders, NIfTI volumes, DICOM without PatientID or StudyInstanceUID) is a
group of its own. Each group goes where ``u``, a SHA-256 of the seed and the group's key read as a number
in [0, 1), falls among the cumulative fractions. So a group's split depends only on its key, the seed and
the fractions: a patient never changes split when samples or patients are added and the split is run
again, and the folder is read once. The fractions hold in expectation; the achieved ones, in samples and
in groups, are reported (and written to ``split.json``); with few patients they can be far off, and
another ``--seed`` is another draw.

Each split is a new MDS folder written by :class:`unimed.shards.ShardWriter` with its ``summary.json``,
read by a stock ``streaming.StreamingDataset`` and checked by ``ingest verify``: an MDS index names whole
shards, and a shard holds samples of many patients, so no index alone could select a split's samples.
The keys are keyed hashes already; splitting needs no uid key, and nothing readable is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from unimed.errors import UserError
from unimed.ingest.progress import Progress
from unimed.schema import shard_columns
from unimed.shards import ShardWriter, iter_samples, read_index

__all__ = ["BY", "SplitConfig", "split", "parse_fractions", "parse_names", "draw", "report_lines"]

#: ``--by``: the column whose keys must not be shared between splits.
BY = ("patient", "study")
_PLURAL = {"patient": "patients", "study": "studies", "sample": "samples"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,47}$")
_DEFAULT_NAMES = {2: ["train", "test"], 3: ["train", "val", "test"]}


@dataclass
class SplitConfig:
    """Everything ``ingest split`` takes (the CLI flags)."""

    folder: str
    by: str = "patient"
    fractions: str = "0.8,0.1,0.1"
    seed: int = 0
    out: str | None = None
    names: str | None = None
    progress: bool = True  # a progress line on stderr, as ``ingest convert`` shows it
    values: list[float] = field(default_factory=list, init=False)
    split_names: list[str] = field(default_factory=list, init=False)

    def check(self) -> None:
        """Raise UserError for impossible options (before anything is read or written)."""
        if self.by not in BY:
            raise UserError(f"--by {self.by}: use {' or '.join(BY)}")
        self.values = parse_fractions(self.fractions)
        self.split_names = parse_names(self.names, len(self.values))
        out = os.path.abspath(self.out_dir)
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise UserError(f"--out {self.out_dir}: exists and is not an empty folder; choose a new one")
        if os.path.commonpath([out, os.path.abspath(self.folder)]) == os.path.abspath(self.folder):
            raise UserError(f"--out {self.out_dir}: must lie outside {self.folder} (the dataset stays as it is)")

    @property
    def out_dir(self) -> str:
        """Where the split folders go: ``--out``, else ``DIR.split`` beside DIR."""
        return self.out or os.path.normpath(self.folder) + ".split"


def parse_fractions(text: str) -> list[float]:
    """``0.8,0.1,0.1`` as numbers: at least two, none negative, summing to 1 (a one-line UserError if not)."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--fractions {text}: give numbers separated by commas, e.g. 0.8,0.1,0.1") from None
    if len(values) < 2:
        raise UserError(f"--fractions {text}: give one fraction per split, at least two (e.g. 0.9,0.1)")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--fractions {text}: a fraction is negative or not a number")
    if abs(sum(values) - 1.0) > 1e-6:
        raise UserError(f"--fractions {text}: they sum to {sum(values):g}, not 1")
    return values


def parse_names(text: str | None, count: int) -> list[str]:
    """The split names: ``--names`` (one per fraction), else train,val,test (or train,test for two)."""
    if text is None:
        if count not in _DEFAULT_NAMES:
            raise UserError(f"--fractions: {count} fractions need --names, one name per split")
        return list(_DEFAULT_NAMES[count])
    names = [n.strip() for n in text.split(",")]
    if len(names) != count:
        raise UserError(f"--names {text}: {len(names)} names for {count} fractions; give one name per fraction")
    for n in names:
        if not _NAME.match(n):
            raise UserError(f"--names {text}: {n!r} is not a folder name (letters, digits, . _ -; at most 48)")
    if len(set(names)) != len(names):
        raise UserError(f"--names {text}: a name is given twice")
    return names


def draw(seed: int, group: str) -> float:
    """The group's number in [0, 1) for ``seed``: the first 64 bits of a SHA-256 of both."""
    digest = hashlib.sha256(f"unimed-split\x00{seed}\x00{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _bounds(fractions: list[float]) -> list[float]:
    total, out = 0.0, []
    for f in fractions:
        total += f
        out.append(total)
    out[-1] = 1.0  # rounding never leaves a draw without a split
    return out


def _where(u: float, bounds: list[float]) -> int:
    return next(i for i, b in enumerate(bounds) if u < b)


def _source_shards(folder: str, by: str) -> list[dict]:
    """The index entries of ``folder``, refused where there is nothing to split or no ``by`` column."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder (give a folder written by `ingest convert`)")
    shards = read_index(folder)["shards"]  # not a dataset: a one-line UserError there
    if not any(s.get("samples") for s in shards):
        raise UserError(f"{folder}: holds no samples, so nothing to split")
    lacking = sum(by not in (s.get("column_names") or []) for s in shards)
    if lacking:
        which = "its shards have" if lacking == len(shards) else f"{lacking} of its {len(shards)} shards have"
        raise UserError(
            f"{folder}: {which} no {by} column (converted before {by} keys were stored); "
            f"re-convert it with this version and the same uid key to split by {by}"
        )
    return shards


def split(cfg: SplitConfig) -> dict[str, Any]:
    """Write the splits of ``cfg.folder`` into ``cfg.out_dir``; return the report (also ``split.json`` there).

    The folders are written under ``OUT.partial`` and renamed to ``OUT`` at the end, so an interrupted
    run leaves no half-written split behind ``OUT``.
    """
    cfg.check()
    shards = _source_shards(cfg.folder, cfg.by)
    columns = shard_columns(shards)
    first = shards[0]
    out = cfg.out_dir
    partial = f"{os.path.normpath(out)}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted split left
    bounds = _bounds(cfg.values)
    writers = [
        ShardWriter(
            os.path.join(partial, n),
            columns,
            compression=first.get("compression"),
            hashes=["xxh64"],
            size_limit=first.get("size_limit") or "64mb",
        )
        for n in cfg.split_names
    ]
    samples = [0] * len(writers)
    alone = [0] * len(writers)  # samples without a key: each its own group
    groups: list[set[str]] = [set() for _ in writers]
    modality: list[Counter] = [Counter() for _ in writers]
    source: list[Counter] = [Counter() for _ in writers]
    cache: dict[str, int] = {}
    bar = Progress(sum(s.get("samples", 0) for s in shards), cfg.progress, what="split", unit="samples", count=None)
    for s in iter_samples(cfg.folder):
        bar.update(1)
        key = s[cfg.by]
        if key:
            k = cache.get(key)
            if k is None:
                k = cache[key] = _where(draw(cfg.seed, key), bounds)
            groups[k].add(key)
        else:
            k = _where(draw(cfg.seed, "uid:" + s["uid"]), bounds)
            alone[k] += 1
        writers[k].write({c: s[c] for c in columns})
        samples[k] += 1
        modality[k][s["modality"]] += 1
        source[k][s["source"]] += 1
    bar.close()
    total, keyed = sum(samples), sum(len(g) for g in groups)
    report: dict[str, Any] = {
        "by": cfg.by,
        "seed": cfg.seed,
        "fractions": dict(zip(cfg.split_names, cfg.values)),
        "method": "hash of the seed and each group's key (a group keeps its split as data is added)",
        "samples": total,
        "groups": keyed,
        "samples_without_key": sum(alone),
        "out": out,
        "splits": {},
    }
    for i, (name, w) in enumerate(zip(cfg.split_names, writers)):
        w.finish()
        report["splits"][name] = {
            "samples": samples[i],
            "groups": len(groups[i]),
            "samples_without_key": alone[i],
            "sample_fraction": round(samples[i] / total, 4),
            "group_fraction": round(len(groups[i]) / keyed, 4) if keyed else None,
        }
        summary = {
            "images": samples[i],
            "modality": dict(sorted(modality[i].items())),
            "source": dict(sorted(source[i].items())),
            _PLURAL[cfg.by]: len(groups[i]),
            "split": {"name": name, "by": cfg.by, "seed": cfg.seed, "fraction": cfg.values[i]},
        }
        with open(os.path.join(partial, name, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    with open(os.path.join(partial, "split.json"), "w") as fh:
        json.dump({k: v for k, v in report.items() if k != "out"}, fh, indent=2)
    if os.path.isdir(out):
        os.rmdir(out)  # empty (checked): the finished folders take its place
    os.replace(partial, out)
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """What ``ingest split`` prints: one line per split with the achieved fractions, then notes."""
    by, total = report["by"], report["samples"]

    def count(n: int, what: str) -> str:
        return f"{n} {what if n == 1 else _PLURAL[what]}"

    lines = [
        f"split {count(total, 'sample')}, {count(report['groups'], by)}, by {by} (seed {report['seed']}; "
        f"each {by}'s split from a hash of its key and the seed) into {report['out']}"
    ]
    width = max(len(n) for n in report["splits"])
    off = False
    for name, s in report["splits"].items():
        groups = count(s["groups"], by) + (f" ({s['group_fraction']:.3f})" if s["group_fraction"] is not None else "")
        want = report["fractions"][name]
        off |= abs(s["sample_fraction"] - want) > 0.05
        lines.append(
            f"  {name + ':':<{width + 1}} {count(s['samples'], 'sample')} ({s['sample_fraction']:.3f}, "
            f"asked {want:g}), {groups}" + ("  (empty)" if not s["samples"] else "")
        )
    if off:
        lines.append(
            f"note: the fractions hold on average over {_PLURAL[by]}; with "
            f"{count(report['groups'], by)} they are coarse (another --seed is another draw)"
        )
    if report["samples_without_key"]:
        lines.append(
            f"note: {report['samples_without_key']} samples have no {by} key (PNG/JPEG folders, NIfTI "
            f"volumes, DICOM without {'PatientID' if by == 'patient' else 'StudyInstanceUID'}): "
            "each is its own group"
        )
    return lines
