"""``unimed eval zeroshot|retrieval|linear-probe``: a model and MDS folders in, one Markdown table and one JSON out.

The data folder is one MDS folder (one set, named after the folder) or a root whose sub-folders are
sets; a sub-folder named like a catalog entry (``chexpert-5x200``) takes its classes, aliases,
protocol and prompts from the catalog; any other takes the labels found in it (a multi-label set when
its samples carry several labels or ``-Name`` negatives) and the prompts of its modality. The model
comes from :func:`unimed.train.loading.load_any` (the checkpoint alone when it is self-contained),
the same loader as ``unimed.load``. Each run prints its table and, with ``--out``, writes
``<kind>.md`` and ``<kind>.json`` there; every figure comes with its n per class.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimed.errors import UserError
from unimed.train.catalog import EvalSetSpec, load_catalog, load_prompts

if TYPE_CHECKING:
    from unimed.streaming.tokenizer import CaptionTokenizer
    from unimed.train.model import CLIPModel
    from unimed.train.transform import EvalTransform

__all__ = [
    "discover_sets",
    "spec_for_folder",
    "evaluate_sets",
    "check_sets",
    "render_markdown",
    "render_retrieval",
    "render_probe",
    "run_zeroshot",
    "run_retrieval",
    "run_linear_probe",
    "write_outputs",
]


def spec_for_folder(folder: str, name: str, catalog: dict[str, EvalSetSpec] | None = None) -> EvalSetSpec:
    """The catalog entry named ``name``, else a spec built from the folder's own labels and modality."""
    catalog = load_catalog() if catalog is None else catalog
    if name in catalog:
        return catalog[name]
    from unimed.streaming.shards import iter_samples

    labels: Counter[str] = Counter()
    modality: Counter[str] = Counter()
    several = negatives = False
    for sample in iter_samples(folder):
        values = [str(v) for v in sample["labels"] or []]
        pos = [v for v in values if not v.startswith("-")]
        several |= len(pos) > 1
        negatives |= len(pos) < len(values)
        labels.update(pos + [v[1:] for v in values if v.startswith("-")])
        modality[sample["modality"]] += 1
    if not labels:
        raise UserError(f"{folder}: no labels in its samples; convert it with `ingest convert ... --class-folders`")
    mod = modality.most_common(1)[0][0]
    classes = tuple(sorted(labels))
    prompts = mod if (Path(__file__).parent / "prompts" / f"{mod}.yaml").is_file() else "generic"
    if several or negatives:
        return EvalSetSpec(
            name=name,
            modality=mod,
            classes=classes,
            title=name,
            prompts=prompts,
            reference=False,
            task="multilabel",
            negatives="explicit" if negatives else "implicit",
        )
    return EvalSetSpec(
        name=name, modality=mod, classes=classes, title=name, prompts=prompts, binary=len(classes) == 2, reference=False
    )


def discover_sets(root: str, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, folder) of each set under ``root``: ``root`` itself when it holds ``index.json``.

    An ``s3://`` root is downloaded into the cache first (:func:`unimed.remote.local_folder`; a later
    call downloads only what changed); the sets keep their remote folder names.
    """
    from unimed.remote import local_folder

    base = Path(local_folder(root))
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


def check_sets(sets: list[tuple[str, str]], max_samples: int | None = None) -> dict[str, Any]:
    """Resolve every label of every set now (before training or evaluating); a ``UserError`` if one fails."""
    from unimed.train.targets import collect_targets

    catalog = load_catalog()
    return {name: collect_targets(folder, spec_for_folder(folder, name, catalog), max_samples) for name, folder in sets}


def evaluate_sets(
    model: CLIPModel,
    tokenizer: CaptionTokenizer,
    sets: list[tuple[str, str]],
    image_size: int,
    batch_size: int = 64,
    max_samples: int | None = None,
    prompts_path: str | None = None,
    transform: EvalTransform | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot metrics per set name (each with its ``modality``, ``title``, ``classes`` and ``chance``).

    Every set's labels are resolved before any image is embedded, so a mistake in the last set stops
    the run before the first one's work.
    """
    from unimed.train.zeroshot import evaluate_set

    catalog = load_catalog()
    override = load_prompts(prompts_path) if prompts_path else None
    specs = {name: spec_for_folder(folder, name, catalog) for name, folder in sets}
    targets = check_sets(sets, max_samples)
    results = {}
    for name, folder in sets:
        spec = specs[name]
        metrics = evaluate_set(
            model,
            tokenizer,
            folder,
            spec,
            image_size,
            batch_size,
            max_samples,
            override,
            transform=transform,
            targets=targets[name],
        )
        results[name] = {
            "modality": spec.modality,
            "title": spec.title or name,
            "classes": list(spec.classes),
            "chance": 1.0 / len(spec.classes) if spec.task == "multiclass" else 0.5,
            **metrics,
        }
    return results


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _left(r: dict[str, Any]) -> str:
    left = r.get("left_out") or {}
    return "; ".join(f"{k}: {v}" for k, v in left.items()) if left else "–"


def render_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One table per modality (set, n, top-1 or mean AUC, AUC, F1, n per class, left out), with its mean top-1."""
    lines = []
    by_mod: dict[str, list[str]] = {}
    for name, r in results.items():
        by_mod.setdefault(r["modality"], []).append(name)
    for mod, names in by_mod.items():
        lines += [
            f"### {mod}",
            "",
            "| set | classes | n | top-1 | AUC | F1 | n per class | left out |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in names:
            r = results[n]
            if r.get("task") == "multilabel":
                per = _counts({c: f"{f['n_pos']}+/{f['n_neg']}-" for c, f in r["per_finding"].items()})
                aucs = ", ".join(f"{c} {_fmt(f['auc'])}" for c, f in r["per_finding"].items())
                lines.append(
                    f"| {r['title']} (multi-label) | {len(r['classes'])} | {r['n']} | – | "
                    f"mean {_fmt(r['mean_auc'])} ({aucs}) | – | {per} | {_left(r)} |"
                )
                continue
            lines.append(
                f"| {r['title']} | {len(r['classes'])} | {r['n']} | {_fmt(r['top1'])} | "
                f"{_fmt(r.get('auc'))} | {_fmt(r.get('f1'))} | {_counts(r['per_class_n'])} | {_left(r)} |"
            )
        tops = [results[n]["top1"] for n in names if "top1" in results[n] and not math.isnan(results[n]["top1"])]
        if tops:
            lines.append(f"| **mean top-1** | | | **{_fmt(sum(tops) / len(tops))}** | | | | |")
        lines.append("")
    return "\n".join(lines)


def render_retrieval(results: dict[str, dict[str, Any]]) -> str:
    """One table: recall@1/5/10 both ways per folder, with image and caption counts."""
    lines = [
        "| set | images | captions (distinct) | I→T R@1 | R@5 | R@10 | T→I R@1 | R@5 | R@10 | left out |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        i2t = " | ".join(_fmt(r[f"image_to_text/R@{k}"]) for k in (1, 5, 10))
        t2i = " | ".join(_fmt(r[f"text_to_image/R@{k}"]) for k in (1, 5, 10))
        lines.append(
            f"| {name} | {r['n_images']} | {r['n_captions']} ({r['n_distinct_captions']}) | {i2t} | {t2i} | "
            f"{_left(r)} |"
        )
    return "\n".join(lines) + "\n"


def render_probe(results: dict[str, dict[str, Any]]) -> str:
    """One table: linear-probe test top-1, balanced top-1, AUC, n per class (train / test), split and C."""
    lines = [
        "| set | test n | top-1 | balanced | AUC | n per class (train / test) | split | C |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        per = ", ".join(f"{c} {r['train_per_class_n'][c]}/{r['per_class_n'][c]}" for c in r["per_class_n"])
        lines.append(
            f"| {name} | {r['n']} | {_fmt(r['top1'])} | {_fmt(r['balanced_top1'])} | {_fmt(r.get('auc'))} | "
            f"{per} | {r['split']} | {r['C']:g} |"
        )
    return "\n".join(lines) + "\n"


def _clean(x: Any) -> Any:
    """JSON without NaN: NaN becomes null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_outputs(kind: str, table: str, results: dict[str, Any], out: str | None) -> None:
    """Print the table; with ``out``, write ``<kind>.md`` and ``<kind>.json`` there."""
    print(table)
    if out:
        os.makedirs(out, exist_ok=True)
        Path(out, f"{kind}.md").write_text(table)
        Path(out, f"{kind}.json").write_text(json.dumps(_clean(results), indent=2))


def _load(checkpoint: str, config: str | None, tokenizer: str | None = None, ema: bool = True):
    from unimed.api import load

    return load(checkpoint, config=config, tokenizer=tokenizer, ema=ema)


def run_zeroshot(
    checkpoint: str,
    data: str,
    prompts: str | None = None,
    out: str | None = None,
    sets: list[str] | None = None,
    batch_size: int = 64,
    max_samples: int | None = None,
    config: str | None = None,
    tokenizer: str | None = None,
    ema: bool = True,
) -> dict[str, dict[str, Any]]:
    """Zero-shot evaluation of a checkpoint on the sets under ``data``; the tables printed and written to ``out``."""
    found = discover_sets(data, sets)
    check_sets(found, max_samples)  # a label or prompt mistake is reported before the model is loaded
    if prompts:
        from unimed.train.catalog import load_prompts

        load_prompts(prompts)
    model = _load(checkpoint, config, tokenizer, ema)
    results = model.zeroshot(data, sets, prompts, batch_size, max_samples)
    write_outputs("zeroshot", render_markdown(results), results, out)
    return results


def run_retrieval(
    checkpoint: str,
    data: str,
    out: str | None = None,
    batch_size: int = 64,
    max_samples: int | None = None,
    config: str | None = None,
    tokenizer: str | None = None,
    ema: bool = True,
) -> dict[str, dict[str, Any]]:
    """Image-text retrieval on each MDS folder under ``data``."""
    found = discover_sets(data)
    model = _load(checkpoint, config, tokenizer, ema)
    results = {name: model.retrieval(folder, batch_size, max_samples) for name, folder in found}
    write_outputs("retrieval", render_retrieval(results), results, out)
    return results


def run_linear_probe(
    checkpoint: str,
    data: str,
    test: str | None = None,
    set_name: str | None = None,
    out: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    max_samples: int | None = None,
    config: str | None = None,
    tokenizer: str | None = None,
    ema: bool = True,
) -> dict[str, dict[str, Any]]:
    """A linear probe on the class-folder set ``data`` (tested on ``test``, else on a patient split)."""
    found = discover_sets(data)
    if len(found) != 1:
        raise UserError(f"{data}: the linear probe takes one MDS folder, found {len(found)}")
    name = set_name or found[0][0]
    model = _load(checkpoint, config, tokenizer, ema)
    if test is not None:
        from unimed.remote import local_folder

        test = local_folder(test)
    results = {name: model.linear_probe(found[0][1], test, name, seed, batch_size, max_samples)}
    write_outputs("linear_probe", render_probe(results), results, out)
    return results
