"""Image-text manifests: existing image-caption sets (PMC-OA, ROCO, Quilt, MIMIC-CXR-style reports).

A manifest is a CSV (``.csv``, ``.tsv``, ``.csv.gz``), JSON Lines (``.jsonl``) or Parquet file passed
as an input of ``ingest convert``. Its columns:

* ``image``: the image path, relative to the manifest's folder (or absolute);
* text, at least one of: ``caption`` (one caption), ``captions`` (a list: JSON list or ``|``-separated
  in a CSV cell), ``report`` (free-text report: FINDINGS / IMPRESSION kept), or the sectioned
  ``findings`` / ``impression`` columns of MIMIC-CXR-style report tables;
* optional ``modality`` and ``labels`` (a list, or ``|``/``;``-separated).

Rows naming the same image are one sample holding all their captions. Each image is read by the
source that recognizes it, so a DICOM image goes through the DICOM path (burned-in gate,
de-identified metadata, intensity transform). Every text is cleaned and PHI-scrubbed by
:mod:`unimed.ingest.reports` before it becomes a caption. Images listed by a manifest are not also
converted on their own when their folder is an input too.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unimed.errors import RejectError
from unimed.ingest import reports
from unimed.ingest.sources.base import Item, ManifestEntry, Options, Source, Task, register, registry
from unimed.schema import MODALITIES

__all__ = ["ManifestSource", "read_manifest", "MODALITY_ALIASES"]

IMAGE_COLUMNS = ("image", "image_path", "img", "filename", "file")
TEXT_COLUMNS = ("caption", "captions", "report", "findings", "impression", "text")
_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".parquet")

#: Modality spellings found in public manifests -> unimed modality.
MODALITY_ALIASES: dict[str, str] = {
    "x-ray": "xray",
    "xr": "xray",
    "cxr": "xray",
    "cr": "xray",
    "dx": "xray",
    "radiograph": "xray",
    "mr": "mri",
    "magnetic resonance": "mri",
    "us": "ultrasound",
    "sonography": "ultrasound",
    "histopathology": "pathology",
    "histology": "pathology",
    "sm": "pathology",
    "wsi": "pathology",
    "retina": "fundus",
    "retinal": "fundus",
    "op": "fundus",
    "computed tomography": "ct",
}


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return "parquet" if suffix == ".parquet" else ("jsonl" if "json" in suffix else "csv")
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")  # type: ignore[return-value]
    return open(path, newline="", encoding="utf-8-sig")


def _columns(path: Path, kind: str) -> list[str]:
    """The column names of a manifest, read from its first line (or Parquet schema)."""
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return ["image", "caption"]  # claim it: plan() then names the missing package
        return list(pq.read_schema(path).names)
    with _open_text(path) as fh:
        line = fh.readline()
    if kind == "jsonl":
        row = json.loads(line) if line.strip() else {}
        return list(row) if isinstance(row, dict) else []
    delim = "\t" if ".tsv" in path.name.lower() else ","
    return next(csv.reader([line], delimiter=delim), [])


def read_manifest(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a manifest as dicts with lower-cased column names."""
    path = Path(path)
    kind = _kind(path)
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RejectError("Parquet manifests need the package pyarrow (pip install pyarrow)") from None
        table = pq.read_table(path)
        for batch in table.to_batches(max_chunksize=65536):
            for row in batch.to_pylist():
                yield {str(k).lower().strip(): v for k, v in row.items()}
        return
    with _open_text(path) as fh:
        if kind == "jsonl":
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise RejectError(f"manifest line {n} is not JSON") from None
                    yield {str(k).lower().strip(): v for k, v in row.items()}
        else:
            delim = "\t" if ".tsv" in path.name.lower() else ","
            for row in csv.DictReader(fh, delimiter=delim):
                yield {str(k).lower().strip(): v for k, v in row.items() if k is not None}


def _as_list(value: Any) -> list[str]:
    """A cell holding one text, a list, a JSON list, or ``|``/``;``-separated texts."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    text = str(value).strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
            if isinstance(items, list):
                return [str(v).strip() for v in items if str(v).strip()]
        except json.JSONDecodeError:
            pass
    for sep in ("|", ";"):
        if sep in text:
            return [t.strip() for t in text.split(sep) if t.strip()]
    return [text] if text else []


def _modality(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    if not text:
        return None
    return MODALITY_ALIASES.get(text, text)


@register
class ManifestSource(Source):
    """CSV, JSON Lines and Parquet image-text manifests."""

    name = "manifest"
    priority = 10  # first: a CSV or JSON file no other source reads, listing images the others then read
    requires = ()

    def probe(self, path: Path, head: bytes) -> bool:
        kind = _kind(path)
        if kind is None:
            return False
        try:
            cols = {c.lower().strip() for c in _columns(path, kind)}
        except Exception:
            return False
        return bool(cols & set(IMAGE_COLUMNS)) and bool(cols & set(TEXT_COLUMNS))

    def plan(self, path: Path, opts: Options) -> list[Task]:
        """One task per distinct image: its rows' texts, labels and modality (text is cleaned later)."""
        root = path.parent
        by_image: dict[str, Task] = {}
        for n, row in enumerate(read_manifest(path), 1):
            col = next((c for c in IMAGE_COLUMNS if row.get(c)), None)
            if col is None:
                continue
            rel = str(row[col]).strip()
            full = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(root, rel))
            task = by_image.get(full)
            if task is None:
                try:
                    weight = os.path.getsize(full)
                except OSError:
                    weight = 0  # a missing image is rejected when its task runs
                task = by_image[full] = Task(self.name, [full], weight=weight, manifest=ManifestEntry())
            entry = task.manifest
            assert entry is not None
            entry.rows.append(n)
            entry.captions += _as_list(row.get("caption")) + _as_list(row.get("captions")) + _as_list(row.get("text"))
            report = str(row.get("report") or "").strip()
            if row.get("findings") or row.get("impression"):
                report += f" FINDINGS: {row.get('findings') or ''} IMPRESSION: {row.get('impression') or ''}"
            if report.strip():
                entry.reports.append(report)
            task.labels += [lab for lab in _as_list(row.get("labels")) if lab not in task.labels]
            mod = _modality(row.get("modality"))
            if mod:
                task.modality = mod
        if not by_image:
            raise RejectError("manifest lists no images (empty, or no image column values)")
        return list(by_image.values())

    def iter_items(self, task: Task, opts: Options) -> Iterator[Item]:
        entry = task.manifest
        assert entry is not None, "a manifest task carries its rows"
        where = f"manifest row {entry.rows[0]}"  # the manifest's name is a path: it stays in the report
        path = Path(task.paths[0])
        if not path.is_file():
            raise RejectError(f"image file not found ({where})")
        modality = task.modality
        if modality and modality not in MODALITIES:
            # The cell is free text: it is not echoed (the report folder has the manifest's path).
            raise RejectError(f"the modality column holds none of {', '.join(MODALITIES)} ({where})")
        texts = [c for t in entry.captions if (c := reports.clean_text(t, mode=opts.text))]
        for rep in entry.reports:
            texts += reports.report_captions(rep, mode=opts.text)
        texts = list(dict.fromkeys(texts))
        if not texts and not task.labels:
            raise RejectError(f"no caption left after cleaning ({where})")
        inner_opts = dataclasses.replace(opts, modality=modality) if modality else opts
        with open(path, "rb") as fh:
            head = fh.read(256)
        source = next((s for name, s in registry().items() if name != self.name and s.probe(path, head)), None)
        if source is None:
            raise RejectError(f"no source recognized the image ({where})")
        if source.missing():
            raise RejectError(f"{source.name} source needs package(s) {', '.join(source.missing())}")
        planned = source.plan(path, inner_opts)
        for inner in planned if isinstance(planned, list) else [planned]:
            if modality:
                inner.modality = modality
            for item in source.iter_items(inner, inner_opts):
                item.texts = texts + item.texts
                yield item
