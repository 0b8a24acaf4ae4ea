"""Label tables: a CSV mapping images (by path, file name or glob) to one or more labels.

Recognized layouts:

* a path column (``path``, ``image``, ``file``, ``filename``, ``Image Index``, ``Path``) and a labels
  column (``labels``, ``label``, ``class``, ``Finding Labels``) whose cell holds one label or several
  separated by ``|`` or ``;`` (the NIH ChestX-ray14 table);
* a path column and one column per class holding 1 (positive), 0, -1 (uncertain) or empty
  (the CheXpert table): positives become the labels, explicit negatives (0) the negative labels
  ``-Class`` (captions phrase them as absent findings); uncertain and empty cells are left out;
* an optional ``modality`` column (for plain images, which carry none).

Folder-per-class layouts need no table: ``--class-folders`` takes the first folder below each input
folder as the label.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimed.errors import UserError
from unimed.ingest.captions import NEGATIVE

__all__ = ["LabelTable", "Lookup", "preview_captions"]

PATH_COLUMNS = (
    "path",
    "image",
    "file",
    "filename",
    "image index",
    "image_id",
    "imageid",
    "image_path",
    "dicom",
    "nifti",
)
LABEL_COLUMNS = ("labels", "label", "class", "finding labels", "findings", "diagnosis")
IGNORED = {
    "sex",
    "age",
    "frontal/lateral",
    "ap/pa",
    "view",
    "patient id",
    "patient age",
    "patient gender",
    "follow-up #",
    "view position",
    "viewposition",
    "originalimage[width",
    "height]",
    "originalimagepixelspacing[x",
    "y]",
    "split",
    "fold",
    "id",
    "study",
    "subject_id",
    "study_id",
    "dicom_id",
}


@dataclass
class Lookup:
    """What a table says about one image."""

    labels: list[str]
    modality: str | None = None
    view: str | None = None  # "frontal" | "lateral" (a radiograph's projection), where the table says


#: Projection columns of public label tables (CheXpert's Frontal/Lateral, NIH's View Position, MIMIC's
#: ViewPosition) and their values, mapped onto the only two values stored (``meta.view``).
VIEW_COLUMNS = ("frontal/lateral", "view position", "viewposition", "view")
VIEWS = {
    "frontal": "frontal",
    "lateral": "lateral",
    "pa": "frontal",
    "ap": "frontal",
    "ap axial": "frontal",
    "ll": "lateral",
    "rl": "lateral",
    "lat": "lateral",
    "lateral decubitus": "lateral",
}


def _split(cell: str) -> list[str]:
    for sep in ("|", ";"):
        if sep in cell:
            return [c.strip() for c in cell.split(sep) if c.strip()]
    return [cell.strip()] if cell.strip() else []


class LabelTable:
    """A CSV label table; :meth:`lookup` finds the row of an image path."""

    def __init__(self, csv_path: str | Path) -> None:
        self.path = Path(csv_path)
        if not self.path.is_file():
            raise UserError(f"{csv_path}: label table not found")
        root = self.path.parent.resolve()
        opener = gzip.open if self.path.suffix == ".gz" else open
        try:
            with opener(self.path, "rt", newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = [h for h in (reader.fieldnames or [])]
                lower = {h.lower().strip(): h for h in header}
                path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
                if path_col is None:
                    raise UserError(f"{csv_path}: no path column; name one of {', '.join(PATH_COLUMNS)}")
                label_col = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
                mod_col = lower.get("modality")
                view_col = next((lower[c] for c in VIEW_COLUMNS if c in lower), None)
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
            raise UserError(
                f"{csv_path}: not a CSV label table in UTF-8 text ({type(exc).__name__}); give the "
                "table (path and labels columns), not an image or another file"
            ) from None
        onehot: list[str] = []
        if label_col is None:
            for h in header:
                if h in (path_col, mod_col) or h.lower().strip() in IGNORED:
                    continue
                values = {(r.get(h) or "").strip() for r in rows}
                if values <= {"", "0", "1", "-1", "0.0", "1.0", "-1.0"}:
                    onehot.append(h)
            if not onehot:
                raise UserError(f"{csv_path}: no labels column ({', '.join(LABEL_COLUMNS)}) and no 0/1 class columns")
        self.exact: dict[str, Lookup] = {}
        self.by_name: dict[str, Lookup | None] = {}
        self.patterns: list[tuple[str, Lookup]] = []
        self.entries: list[Lookup] = []  # every row, in order
        for r in rows:
            key = (r.get(path_col) or "").strip()
            if not key:
                continue
            if label_col is not None:
                labels = _split(r.get(label_col) or "")
            else:
                labels = [h for h in onehot if (r.get(h) or "").strip() in ("1", "1.0")]
                labels += [
                    f"{NEGATIVE}{h}"
                    for h in onehot
                    if (r.get(h) or "").strip() in ("0", "0.0") and not h.lower().startswith("no ")
                ]
            view = VIEWS.get((r.get(view_col) or "").strip().lower()) if view_col else None  # coded, or nothing
            look = Lookup(labels, (r.get(mod_col) or "").strip().lower() or None if mod_col else None, view)
            self.entries.append(look)
            if any(ch in key for ch in "*?["):
                self.patterns.append((key, look))
                continue
            full = os.path.normpath(key if os.path.isabs(key) else os.path.join(root, key))
            self.exact[full] = look
            name = os.path.basename(key)
            # A file name seen twice is ambiguous: only the full path can match it then.
            self.by_name[name] = None if name in self.by_name else look
        self.root = root

    def lookup(self, path: str) -> Lookup | None:
        """The row for ``path``: by full path, then by file name, then by glob; None if absent."""
        norm = os.path.normpath(os.path.abspath(path))
        if norm in self.exact:
            return self.exact[norm]
        hit = self.by_name.get(os.path.basename(path))
        if hit is not None:
            return hit
        for pattern, look in self.patterns:
            rel = os.path.relpath(norm, self.root)
            if (
                fnmatch.fnmatch(rel, pattern)
                or fnmatch.fnmatch(norm, pattern)
                or fnmatch.fnmatch(os.path.basename(path), pattern)
            ):
                return look
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.patterns)


def preview_captions(
    csv_path: str | Path, banks: list[str | Path] | None = None, modality: str | None = None, examples: int = 5
) -> dict[str, Any]:
    """What a label table turns into: captions of its most frequent label sets, and unknown classes.

    ``modality`` defaults to the table's modality column, else to the modality of the first bank.
    Returns ``{"rows", "label_sets", "classes": {label: rows}, "unknown": {modality: {label: rows}},
    "examples": [{"modality", "labels", "rows", "captions"}]}``.
    """
    from unimed.ingest.captions import CaptionEngine, load_bank

    engine = CaptionEngine(list(banks or []))
    default = modality or (load_bank(banks[0], partial=True).modality if banks else None)
    table = LabelTable(csv_path)
    sets: Counter = Counter()
    for look in table.entries:
        mod = look.modality or default
        if mod is None:
            raise UserError(f"{csv_path}: no modality column; pass --modality or a --bank")
        sets[(mod, tuple(look.labels))] += 1
    classes: Counter = Counter()
    unknown: dict[str, Counter] = {}
    for (mod, labels), n in sets.items():
        for lab in labels:
            classes[lab] += n
        for lab in engine.unknown_classes(mod, list(labels)):
            unknown.setdefault(mod, Counter())[lab] += n
    shown = [
        {"modality": mod, "labels": list(labels), "rows": n, "captions": engine.captions(mod, list(labels))}
        for (mod, labels), n in sets.most_common(examples)
    ]
    return {
        "rows": len(table.entries),
        "label_sets": len(sets),
        "classes": dict(classes.most_common()),
        "unknown": {m: dict(c.most_common()) for m, c in sorted(unknown.items())},
        "examples": shown,
    }
