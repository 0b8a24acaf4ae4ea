"""Zero-shot classification: prompt-ensemble class embeddings, top-1 per set, AUC/F1 for binary sets.

A class embedding is the normalized mean of the normalized embeddings of its prompts. Images are
read from MDS folders made by ``ingest convert --class-folders`` and preprocessed deterministically
(shorter side resized bicubically to the model's size, centre crop, CLIP normalization). Every rank
runs the whole set, so the callback works under FSDP2 (each forward is collective there).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from unimed.train.catalog import EvalSetSpec, load_prompts, prompts_for

__all__ = ["class_embeddings", "iter_eval_batches", "evaluate_set", "binary_metrics", "preprocess"]

_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Encoded image -> float32 [3, size, size]: shorter side to ``size``, centre crop, normalized."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((arr - _MEAN) / _STD).transpose(2, 0, 1).copy()


@torch.no_grad()
def class_embeddings(model, tokenizer, spec: EvalSetSpec, prompts: dict | None = None) -> torch.Tensor:
    """[C, D] unit class embeddings: the mean of each class's normalized prompt embeddings."""
    doc = prompts if prompts is not None else load_prompts(spec.prompts or spec.modality)
    device = next(model.parameters()).device
    rows = []
    for classname in spec.classes:
        texts = prompts_for(doc, classname)
        tokens = torch.as_tensor(np.stack([tokenizer(t) for t in texts]), device=device)
        _, emb, _ = model(None, tokens)
        rows.append(torch.nn.functional.normalize(emb.float().mean(0), dim=-1))
    return torch.stack(rows)


def iter_eval_batches(
    folder: str, spec: EvalSetSpec, size: int, batch_size: int, max_samples: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images [B, 3, S, S], class indices [B]) of the samples whose label is one of the set's classes."""
    from unimed.streaming.shards import iter_samples

    images: list[np.ndarray] = []
    labels: list[int] = []
    seen = 0
    for sample in iter_samples(folder):
        values = [sample["modality"]] if spec.target == "modality" else list(sample["labels"])
        idx = next((i for i in (spec.class_index(v) for v in values) if i is not None), None)
        if idx is None:
            continue
        images.append(preprocess(sample["image"], size))
        labels.append(idx)
        seen += 1
        if len(images) == batch_size:
            yield torch.from_numpy(np.stack(images)), torch.tensor(labels)
            images, labels = [], []
        if max_samples is not None and seen >= max_samples:
            break
    if images:
        yield torch.from_numpy(np.stack(images)), torch.tensor(labels)


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


@torch.no_grad()
def evaluate_set(
    model, tokenizer, folder: str, spec: EvalSetSpec, image_size: int, batch_size: int = 64,
    max_samples: int | None = None, prompts: dict | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of ``model`` on one set: ``top1`` (and ``auc``/``f1``/... when binary), ``n``."""
    was_training = model.training
    model.eval()
    try:
        classes = class_embeddings(model, tokenizer, spec, prompts)
        device = classes.device
        probs, targets = [], []
        for images, labels in iter_eval_batches(folder, spec, image_size, batch_size, max_samples):
            emb, _, scale = model(images.to(device), None)
            logits = scale.float() * emb.float() @ classes.T
            probs.append(logits.softmax(-1).cpu())
            targets.append(labels)
    finally:
        model.train(was_training)
    if not probs:
        return {"n": 0, "top1": float("nan")}
    p, t = torch.cat(probs).numpy(), torch.cat(targets).numpy()
    out: dict[str, Any] = {"n": int(len(t)), "top1": float((p.argmax(1) == t).mean())}
    out["per_class_n"] = {c: int((t == i).sum()) for i, c in enumerate(spec.classes)}
    if spec.binary and len(spec.classes) == 2:
        out.update(binary_metrics(p[:, 1], t))
    return out
