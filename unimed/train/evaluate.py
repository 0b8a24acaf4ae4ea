"""``unimed eval zeroshot``: a checkpoint and a folder of evaluation sets in, Markdown and JSON tables out.

The data folder is one MDS folder (one set, named after the folder) or a root whose sub-folders are
sets; a sub-folder named like a catalog entry (``chexpert-5x200``) takes its classes and prompts from
the catalog, any other takes the labels found in it and the prompts of its modality. Results are
grouped by modality, each with its mean top-1, as in the reference paper's table.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from unimed.errors import UserError
from unimed.train.catalog import EvalSetSpec, load_catalog, load_prompts

__all__ = ["discover_sets", "spec_for_folder", "evaluate_sets", "render_markdown", "run_zeroshot"]


def spec_for_folder(folder: str, name: str, catalog: dict[str, EvalSetSpec]) -> EvalSetSpec:
    """The catalog entry named ``name``, else a spec built from the folder's own labels and modality."""
    if name in catalog:
        return catalog[name]
    from unimed.streaming.shards import iter_samples

    labels: Counter[str] = Counter()
    modality: Counter[str] = Counter()
    for sample in iter_samples(folder):
        labels.update(sample["labels"][:1])
        modality[sample["modality"]] += 1
    if not labels:
        raise UserError(f"{folder}: no labels in its samples; convert it with `ingest convert ... --class-folders`")
    mod = modality.most_common(1)[0][0]
    classes = tuple(sorted(labels))
    return EvalSetSpec(name=name, modality=mod, classes=classes, title=name, prompts=mod,
                       binary=len(classes) == 2, reference=False)


def discover_sets(root: str, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, folder) of each set under ``root``: ``root`` itself when it holds ``index.json``."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"evaluation data {root!r} is not a folder")
    if (base / "index.json").is_file():
        found = [(base.name, str(base))]
    else:
        found = [(p.name, str(p)) for p in sorted(base.iterdir()) if (p / "index.json").is_file()]
    if names:
        have = dict(found)
        missing = [n for n in names if n not in have and not os.path.isdir(n)]
        if missing:
            raise UserError(f"evaluation sets {missing} not found under {root}; found {sorted(have)}")
        found = [(n, have.get(n, n)) for n in names]
    if not found:
        raise UserError(f"no MDS folder (index.json) in {root}")
    return found


def evaluate_sets(
    model, tokenizer, sets: list[tuple[str, str]], image_size: int, batch_size: int = 64,
    max_samples: int | None = None, prompts_path: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per set name (each with its ``modality`` and ``title``)."""
    from unimed.train.zeroshot import evaluate_set

    catalog = load_catalog()
    override = load_prompts(prompts_path) if prompts_path else None
    results = {}
    for name, folder in sets:
        spec = spec_for_folder(folder, name, catalog)
        metrics = evaluate_set(model, tokenizer, folder, spec, image_size, batch_size, max_samples, override)
        results[name] = {"modality": spec.modality, "title": spec.title or name, "classes": list(spec.classes),
                         "chance": 1.0 / len(spec.classes), **metrics}
    return results


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def render_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One table per modality (set, n, top-1, AUC, F1) with the modality's mean top-1."""
    lines = []
    by_mod: dict[str, list[str]] = {}
    for name, r in results.items():
        by_mod.setdefault(r["modality"], []).append(name)
    for mod, names in by_mod.items():
        lines += [f"### {mod}", "", "| set | classes | n | top-1 | AUC | F1 |", "| --- | --- | --- | --- | --- | --- |"]
        for n in names:
            r = results[n]
            lines.append(f"| {r['title']} | {len(r['classes'])} | {r['n']} | {_fmt(r['top1'])} | "
                         f"{_fmt(r.get('auc'))} | {_fmt(r.get('f1'))} |")
        tops = [results[n]["top1"] for n in names if not math.isnan(results[n]["top1"])]
        if tops:
            lines.append(f"| **mean** | | | **{_fmt(sum(tops) / len(tops))}** | | |")
        lines.append("")
    return "\n".join(lines)


def run_zeroshot(
    checkpoint: str, data: str, prompts: str | None = None, out: str | None = None,
    sets: list[str] | None = None, batch_size: int = 64, max_samples: int | None = None,
    config: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate a checkpoint on the sets under ``data``; print the tables, write them to ``out``."""
    from unimed.train.checkpoint import load_trained

    model, cfg, tokenizer = load_trained(checkpoint, config)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate_sets(model, tokenizer, discover_sets(data, sets), cfg.model.vision.image_size,
                            batch_size, max_samples, prompts)
    table = render_markdown(results)
    print(table)
    if out:
        os.makedirs(out, exist_ok=True)
        Path(out, "zeroshot.md").write_text(table)
        Path(out, "zeroshot.json").write_text(json.dumps(results, indent=2))
    return results
