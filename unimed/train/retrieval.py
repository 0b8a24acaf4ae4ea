"""Image-text retrieval on any MDS folder with captions: recall@K in both directions.

Each image is a query over the folder's distinct caption texts (a hit when any of its own captions
ranks within the top K), and each distinct caption a query over the images (a hit when any image
carrying that caption ranks within the top K). Captions made from labels repeat across images, so
queries are the distinct texts and every image carrying a text counts as its match; the result
states how many captions were distinct. Samples without a caption are counted, not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimed.errors import UserError
from unimed.train.transform import EvalTransform
from unimed.train.zeroshot import image_features, iter_image_batches, text_embeddings

__all__ = ["collect_captions", "recall_at_k", "evaluate_retrieval"]


def collect_captions(folder: str, max_samples: int | None = None) -> tuple[list[int], list[list[str]], int]:
    """(positions of the samples with captions, their captions, samples without any)."""
    from unimed.streaming.shards import iter_samples

    positions, captions, without = [], [], 0
    for pos, sample in enumerate(iter_samples(folder)):
        caps = [str(c).strip() for c in sample.get("captions") or [] if str(c).strip()]
        if not caps:
            without += 1
            continue
        if max_samples is not None and len(positions) >= max_samples:
            break
        positions.append(pos)
        captions.append(caps)
    return positions, captions, without


def recall_at_k(sim: torch.Tensor, positives: list[list[int]], ks: Sequence[int]) -> dict[str, float]:
    """Recall@K of each row of ``sim`` [Q, G] given each row's matching columns."""
    hits = {k: 0 for k in ks}
    for q, cols in enumerate(positives):
        row = sim[q]
        best = row[cols].max()
        rank = int((row > best).sum())  # columns strictly better than the best match
        for k in ks:
            hits[k] += rank < k
    return {f"R@{k}": hits[k] / max(len(positives), 1) for k in ks}


@torch.no_grad()
def evaluate_retrieval(
    model,
    tokenizer,
    folder: str,
    transform: EvalTransform,
    batch_size: int = 64,
    max_samples: int | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Recall@K image->text and text->image on ``folder`` (see the module docstring)."""
    positions, captions, without = collect_captions(folder, max_samples)
    if len(positions) < 2:
        raise UserError(f"{folder}: {len(positions)} samples with captions; retrieval needs at least 2")
    texts: dict[str, int] = {}
    image_texts = [[texts.setdefault(c, len(texts)) for c in caps] for caps in captions]
    text_images: list[list[int]] = [[] for _ in texts]
    for i, ids in enumerate(image_texts):
        for t in set(ids):
            text_images[t].append(i)
    was_training = model.training
    model.eval()
    try:
        img, _ = image_features(model, iter_image_batches(folder, positions, transform, batch_size))
        txt = text_embeddings(model, tokenizer, list(texts))
    finally:
        model.train(was_training)
    sim = (img @ txt.T).cpu()
    i2t = recall_at_k(sim, image_texts, ks)
    t2i = recall_at_k(sim.T.contiguous(), text_images, ks)
    out: dict[str, Any] = {
        "n_images": len(positions),
        "n_captions": sum(len(c) for c in captions),
        "n_distinct_captions": len(texts),
        "left_out": {"no caption": without} if without else {},
    }
    out.update({f"image_to_text/{k}": v for k, v in i2t.items()})
    out.update({f"text_to_image/{k}": v for k, v in t2i.items()})
    out["mean_recall"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
    return out
