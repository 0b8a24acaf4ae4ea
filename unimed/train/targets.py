"""Which samples of an evaluation folder count, and as what: every label resolved, or a refusal.

One pass over a set's labels (no image is decoded) decides each sample's target through the catalog
entry: its class (multiclass), or its row of findings (multilabel: 1 present, 0 absent, -1 not
mentioned). Nothing is dropped silently: a sample is either used, or left out for a reason the
catalog states (an excluded label, the 5x200 selection, the per-class cap), counted under that reason
in the result; a label that resolves to nothing stops the evaluation with a ``UserError`` naming each
such label and how many samples carry it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from unimed.errors import UserError
from unimed.train.catalog import CATALOG_PATH, EvalSetSpec

__all__ = ["SetTargets", "collect_targets", "sample_values"]


@dataclass
class SetTargets:
    """The samples a set uses (positions in shard order) and their targets."""

    spec: EvalSetSpec
    positions: list[int] = field(default_factory=list)
    targets: list = field(default_factory=list)  # class index, or a row of findings (multilabel)
    left_out: Counter = field(default_factory=Counter)  # reason -> samples
    groups: list[str] = field(default_factory=list)  # patient (else study, else uid) per used sample
    total: int = 0  # samples in the folder

    def array(self) -> np.ndarray:
        """Targets as an array: [N] class indices, or [N, C] in {1, 0, -1}."""
        if self.spec.task == "multilabel":
            return np.asarray(self.targets, dtype=np.int8).reshape(-1, len(self.spec.classes))
        return np.asarray(self.targets, dtype=np.int64)

    def per_class_n(self) -> dict[str, int]:
        """Samples per class (multiclass) or positives per finding (multilabel)."""
        t = self.array()
        if self.spec.task == "multilabel":
            return {c: int((t[:, i] == 1).sum()) for i, c in enumerate(self.spec.classes)}
        return {c: int((t == i).sum()) for i, c in enumerate(self.spec.classes)}


def sample_values(sample: dict, spec: EvalSetSpec) -> list[str]:
    """The labels of one sample that a set reads (its ``modality`` for a modality set)."""
    if spec.target == "modality":
        return [str(sample["modality"])]
    return [str(v) for v in sample.get("labels") or []]


def _multiclass(spec: EvalSetSpec, values: list[str], unknown: Counter) -> tuple[int | None, str]:
    """(class index or None, reason it is left out)."""
    hits, excluded = set(), []
    for v in values:
        r = spec.resolve(v)
        if r.kind == "class":
            hits.add(r.index)
        elif r.kind == "exclude":
            excluded.append(v)
        elif r.kind == "unknown":
            unknown[v] += 1
    if len(hits) == 1:
        return hits.pop(), ""
    if spec.select == "one-positive":
        return None, "none of the classes positive" if not hits else "several of the classes positive"
    if hits:
        unknown[" + ".join(spec.classes[i] for i in sorted(hits)) + " (one sample, several classes)"] += 1
        return None, ""
    if excluded:
        return None, f"excluded label {excluded[0]!r}"
    if not values:
        unknown["(no label)"] += 1
        return None, ""
    return None, "only labels that are not scored"


def _multilabel(spec: EvalSetSpec, values: list[str], unknown: Counter) -> list[int] | None:
    """One row: 1 present, 0 absent, -1 not mentioned (explicit negatives only)."""
    row = [0 if spec.negatives == "implicit" else -1] * len(spec.classes)
    said: dict[int, int] = {}
    for v in values:
        r = spec.resolve(v)
        if r.kind in ("class", "negative"):
            value = 1 if r.kind == "class" else 0
            if said.get(r.index, value) != value:
                unknown[f"{spec.classes[r.index]} and -{spec.classes[r.index]} (one sample)"] += 1
                return None
            said[r.index] = value
        elif r.kind == "unknown":
            unknown[v] += 1
        elif r.kind == "exclude":
            return None
    for i, value in said.items():
        row[i] = value
    return row


def collect_targets(folder: str, spec: EvalSetSpec, max_samples: int | None = None) -> SetTargets:
    """The targets of ``folder``'s samples under ``spec``; a ``UserError`` if any label is unknown."""
    from unimed.streaming.shards import iter_samples

    out = SetTargets(spec)
    unknown: Counter[str] = Counter()
    per_class: Counter[int] = Counter()
    for pos, sample in enumerate(iter_samples(folder)):
        out.total += 1
        view = (sample.get("meta") or {}).get("view")
        if spec.view and view and view != spec.view:  # a sample that states no view is kept
            out.left_out[f"{view} view (the set takes {spec.view} images)"] += 1
            continue
        values = sample_values(sample, spec)
        if spec.task == "multilabel":
            row = _multilabel(spec, values, unknown)
            if row is None:
                out.left_out["excluded label"] += 1
                continue
            target: int | list[int] = row
        else:
            idx, reason = _multiclass(spec, values, unknown)
            if idx is None:
                if reason:
                    out.left_out[reason] += 1
                continue
            if spec.per_class is not None and per_class[idx] >= spec.per_class:
                out.left_out[f"beyond {spec.per_class} per class"] += 1
                continue
            per_class[idx] += 1
            target = idx
        if max_samples is not None and len(out.positions) >= max_samples:
            out.left_out["beyond --max-samples"] += 1
            continue
        out.positions.append(pos)
        out.targets.append(target)
        out.groups.append(str(sample.get("patient") or sample.get("study") or sample.get("uid") or pos))
    if unknown:
        shown = ", ".join(f"{k!r}: {n}" for k, n in unknown.most_common(12))
        more = f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""
        raise UserError(
            f"{folder}: labels that name no class of set {spec.name!r} ({shown}{more}; samples per label, of "
            f"{out.total}); its classes: {list(spec.classes)}; add the release's names as aliases (or exclude) "
            f"in {CATALOG_PATH.name}, or relabel the folder"
        )
    if not out.positions:
        why = "; ".join(f"{k}: {n}" for k, n in out.left_out.items()) or "it is empty"
        raise UserError(f"{folder}: no sample to evaluate for set {spec.name!r} ({why})")
    return out
