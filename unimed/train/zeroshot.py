"""Zero-shot classification: prompt-ensemble class embeddings, then top-1 or per-finding AUC.

A class embedding is the normalized mean of the normalized embeddings of its prompts. Multiclass sets
report top-1, balanced top-1, per-class accuracy and the confusion matrix (AUC, F1, precision and
recall for binary sets); multi-label sets score each finding by its present-versus-absent prompts
(softmax over the two) and report per-finding AUC and their mean, as the field does. Which samples
count and as what comes from :mod:`unimed.train.targets`; every figure carries its n per class.
The same functions serve ``unimed eval``, the training callback and ``unimed.load(...).classify``.
Every rank runs the whole set, so it works under FSDP2 (each forward is collective there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from unimed.train.catalog import EvalSetSpec, load_prompts, prompts_for
from unimed.train.targets import SetTargets, collect_targets
from unimed.train.transform import EvalTransform

__all__ = [
    "class_embeddings",
    "text_embeddings",
    "image_features",
    "iter_image_batches",
    "class_probabilities",
    "evaluate_set",
    "multiclass_metrics",
    "multilabel_metrics",
    "binary_metrics",
    "preprocess",
]


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Encoded image -> uint8 [3, size, size] (the default :class:`EvalTransform`; the model normalizes)."""
    return EvalTransform(size).array(data)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """[N, D] unit text embeddings (float32, on the model's device)."""
    device = _device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = torch.as_tensor(np.stack([tokenizer(t) for t in texts[i : i + batch_size]]), device=device)
        _, emb, _ = model(None, tokens)
        out.append(emb.float())
    return torch.cat(out)


@torch.no_grad()
def class_embeddings(
    model, tokenizer, spec: EvalSetSpec | Sequence[str], prompts: dict | None = None, negative: bool = False
) -> torch.Tensor:
    """[C, D] unit class embeddings: the mean of each class's normalized prompt embeddings.

    ``spec`` is a set (its classes and prompt set) or a list of class names (with ``prompts``);
    ``negative`` embeds each class's absent-finding prompts instead.
    """
    if isinstance(spec, EvalSetSpec):
        classes, doc = spec.classes, prompts if prompts is not None else load_prompts(spec.prompts or spec.modality)
    else:
        classes, doc = tuple(spec), prompts if prompts is not None else load_prompts("generic")
    rows = []
    for classname in classes:
        emb = text_embeddings(model, tokenizer, prompts_for(doc, classname, negative=negative))
        rows.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def iter_image_batches(
    folder: str, positions: Sequence[int], transform: EvalTransform, batch_size: int
) -> Iterator[torch.Tensor]:
    """[B, 3, S, S] batches of the samples at ``positions`` (shard order), preprocessed."""
    from unimed.streaming.shards import iter_samples

    wanted, batch = set(positions), []
    for pos, sample in enumerate(iter_samples(folder)):
        if pos in wanted:
            batch.append(transform.array(sample["image"]))
            if len(batch) == batch_size:
                yield torch.from_numpy(np.stack(batch))
                batch = []
    if batch:
        yield torch.from_numpy(np.stack(batch))


@torch.no_grad()
def image_features(model, batches: Iterator[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit image embeddings [N, D] float32, the scale) of preprocessed images, on the model's device."""
    device = _device(model)
    if isinstance(batches, torch.Tensor):
        batches = iter([batches])
    out, scale = [], None
    for images in batches:
        emb, _, scale = model(images.to(device), None)
        out.append(emb.float())
    return torch.cat(out), scale.float()


def class_probabilities(features: torch.Tensor, classes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Softmax over classes of scale x cosine similarity: [N, C]."""
    return (scale * features @ classes.T).softmax(-1)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic; ties get average ranks."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(probs_pos: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """AUC, F1, precision and recall of class 1 (the positive class) from its probabilities."""
    positive = target == 1
    pred = probs_pos >= 0.5
    tp = int((pred & positive).sum())
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int(positive.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"auc": _auc(probs_pos, positive), "f1": f1, "precision": precision, "recall": recall}


def multiclass_metrics(
    probs: np.ndarray, target: np.ndarray, classes: Sequence[str], binary: bool = False
) -> dict[str, Any]:
    """Top-1, balanced top-1, per-class accuracy and n, confusion (rows: truth); binary metrics if asked."""
    pred = probs.argmax(1)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (target, pred), 1)
    n = confusion.sum(1)
    per_class = {c: (float(confusion[i, i] / n[i]) if n[i] else float("nan")) for i, c in enumerate(classes)}
    present = [v for i, v in enumerate(per_class.values()) if n[i]]
    out: dict[str, Any] = {
        "n": int(len(target)),
        "top1": float((pred == target).mean()),
        "balanced_top1": float(np.mean(present)) if present else float("nan"),
        "per_class_n": {c: int(n[i]) for i, c in enumerate(classes)},
        "per_class_top1": per_class,
        "confusion": confusion.tolist(),
    }
    if binary and k == 2:
        out.update(binary_metrics(probs[:, 1], target))
    return out


def multilabel_metrics(scores: np.ndarray, target: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-finding AUC over the samples where the finding is stated (target 1 or 0), and their mean."""
    findings = {}
    for i, c in enumerate(classes):
        stated = target[:, i] >= 0
        positive = target[stated, i] == 1
        findings[c] = {
            "auc": _auc(scores[stated, i], positive),
            "n_pos": int(positive.sum()),
            "n_neg": int((~positive).sum()),
            "n_unmentioned": int((~stated).sum()),
        }
    aucs = [f["auc"] for f in findings.values() if f["auc"] == f["auc"]]
    return {
        "n": int(len(target)),
        "mean_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "findings_scored": len(aucs),
        "per_finding": findings,
        "per_class_n": {c: f["n_pos"] for c, f in findings.items()},
    }


@torch.no_grad()
def evaluate_set(
    model,
    tokenizer,
    folder: str,
    spec: EvalSetSpec,
    image_size: int,
    batch_size: int = 64,
    max_samples: int | None = None,
    prompts: dict | None = None,
    transform: EvalTransform | None = None,
    targets: SetTargets | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of ``model`` on one set (see the module docstring), with what was left out and why."""
    transform = transform or EvalTransform(image_size)
    targets = targets or collect_targets(folder, spec, max_samples)
    was_training = model.training
    model.eval()
    try:
        doc = prompts if prompts is not None else load_prompts(spec.prompts or spec.modality)
        batches = iter_image_batches(folder, targets.positions, transform, batch_size)
        features, scale = image_features(model, batches)
        if spec.task == "multilabel":
            present = class_embeddings(model, tokenizer, spec, doc)
            absent = class_embeddings(model, tokenizer, spec, doc, negative=True)
            pair = torch.stack([scale * features @ absent.T, scale * features @ present.T], -1)
            scores = pair.softmax(-1)[..., 1].cpu().numpy()
            out = multilabel_metrics(scores, targets.array(), spec.classes)
        else:
            probs = class_probabilities(features, class_embeddings(model, tokenizer, spec, doc), scale)
            out = multiclass_metrics(probs.cpu().numpy(), targets.array(), spec.classes, spec.binary)
    finally:
        model.train(was_training)
    out["task"] = spec.task
    out["samples_in_folder"] = targets.total
    out["left_out"] = dict(targets.left_out)
    if spec.per_class:
        short = {c: n for c, n in out["per_class_n"].items() if n < spec.per_class}
        out["protocol"] = (
            f"{spec.per_class} per class"
            if not short
            else f"incomplete: {spec.per_class} per class asked, fewer for {short}"
        )
    return out
