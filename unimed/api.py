"""The Python API: ``model = unimed.load(path)``, then preprocess, embed, classify and evaluate.

``load`` takes whatever ``unimed eval`` takes (a self-contained Composer checkpoint, an exported
``hf``/``open_clip`` folder, another project's layout with its tokenizer) through the same loader,
and every method runs the same functions as the CLI: ``preprocess`` is the evaluation transform,
``classify`` builds class embeddings from the catalog's prompt sets exactly as ``unimed eval
zeroshot`` does, and ``zeroshot``/``retrieval``/``linear_probe`` are the CLI's evaluations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unimed.errors import UserError

__all__ = ["load", "Model", "Classification"]

_MODALITY_PROMPTS = {
    "xray": "xray",
    "x-ray": "xray",
    "ct": "ct",
    "mri": "mri",
    "ultrasound": "ultrasound",
    "us": "ultrasound",
    "pathology": "pathology",
    "fundus": "fundus",
}


@dataclass
class Classification:
    """Zero-shot probabilities of each image over ``labels``."""

    labels: list[str]
    probs: torch.Tensor  # [N, C], rows sum to 1

    @property
    def predicted(self) -> list[str]:
        """The most probable label of each image."""
        return [self.labels[i] for i in self.probs.argmax(1).tolist()]

    def as_dicts(self) -> list[dict[str, float]]:
        """One ``{label: probability}`` per image."""
        return [dict(zip(self.labels, row)) for row in self.probs.tolist()]


class Model:
    """A loaded model: ``encode_image``, ``encode_text``, ``classify`` and the three evaluations."""

    def __init__(self, loaded, device: str | torch.device | None = None) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.preprocess = loaded.transform  # image -> [3, S, S]; .batch(images) -> [N, 3, S, S]
        self.config = loaded.config
        self.report = loaded.report
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()

    def __repr__(self) -> str:
        m = self._loaded.descriptor["model"]
        return (
            f"unimed.Model({self._loaded.kind}: ViT {m['vision']['width']}x{m['vision']['layers']} at "
            f"{m['vision']['image_size']}px, BERT {m['text']['hidden_size']}x{m['text']['layers']}, "
            f"embed {m['embed_dim']}, on {self.device})"
        )

    @torch.no_grad()
    def encode_image(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Unit image embeddings [N, D] of paths, bytes, PIL images, arrays or a preprocessed [N, 3, S, S]."""
        from unimed.train.zeroshot import image_features

        if not isinstance(images, torch.Tensor) and isinstance(images, (list, tuple)):
            batches = (self.preprocess.batch(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
        else:
            batches = (b for b in [self.preprocess.batch(images)])
        return image_features(self.model, batches)[0].cpu()

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Unit text embeddings [N, D]."""
        from unimed.train.zeroshot import text_embeddings

        return text_embeddings(self.model, self.tokenizer, [texts] if isinstance(texts, str) else list(texts)).cpu()

    def _classes(self, labels: str | Sequence[str], modality: str | None):
        from unimed.train.catalog import load_catalog, load_prompts

        if isinstance(labels, str):
            catalog = load_catalog()
            if labels not in catalog:
                raise UserError(f"{labels!r} is not a catalog set; give a list of labels or one of {sorted(catalog)}")
            spec = catalog[labels]
            return spec, load_prompts(spec.prompts or spec.modality)
        labels = [str(x) for x in labels]
        if len(labels) < 2:
            raise UserError("classify needs at least two labels")
        name = "generic" if modality is None else _MODALITY_PROMPTS.get(str(modality).lower(), str(modality))
        return labels, load_prompts(name)

    @torch.no_grad()
    def classify(self, images: Any, labels: str | Sequence[str], modality: str | None = None) -> Classification:
        """Zero-shot probabilities over ``labels`` (a list, or a catalog set name such as ``"bach"``), with
        the prompt set of ``modality`` (xray, ct, mri, ultrasound, pathology, fundus; generic when None)."""
        from unimed.train.zeroshot import class_embeddings, class_probabilities, image_features

        classes, doc = self._classes(labels, modality)
        emb = class_embeddings(self.model, self.tokenizer, classes, doc)
        feats, scale = image_features(self.model, iter([self.preprocess.batch(images)]))
        names = list(classes.classes) if hasattr(classes, "classes") else list(classes)
        return Classification(names, class_probabilities(feats, emb, scale).cpu())

    def zeroshot(
        self,
        data: str,
        sets: list[str] | None = None,
        prompts: str | None = None,
        batch_size: int = 64,
        max_samples: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``unimed eval zeroshot`` on the MDS sets under ``data``: metrics per set."""
        from unimed.train.evaluate import discover_sets, evaluate_sets

        return evaluate_sets(
            self.model,
            self.tokenizer,
            discover_sets(data, sets),
            self.preprocess.size,
            batch_size,
            max_samples,
            prompts,
            transform=self.preprocess,
        )

    def retrieval(self, data: str, batch_size: int = 64, max_samples: int | None = None) -> dict[str, Any]:
        """``unimed eval retrieval`` on one MDS folder with captions."""
        from unimed.train.retrieval import evaluate_retrieval

        return evaluate_retrieval(self.model, self.tokenizer, data, self.preprocess, batch_size, max_samples)

    def linear_probe(
        self,
        data: str,
        test: str | None = None,
        set_name: str | None = None,
        seed: int = 0,
        batch_size: int = 64,
        max_samples: int | None = None,
    ) -> dict[str, Any]:
        """``unimed eval linear-probe`` on a class-folder set (split by patient unless ``test`` is given)."""
        from unimed.train.evaluate import spec_for_folder
        from unimed.train.probe import linear_probe

        name = set_name or os.path.basename(os.path.normpath(data))
        spec = spec_for_folder(data, name)
        return linear_probe(
            self.model, data, spec, self.preprocess, test, seed=seed, batch_size=batch_size, max_samples=max_samples
        )


def load(
    path: str | os.PathLike,
    config: str | None = None,
    tokenizer: str | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device | None = None,
    ema: bool = True,
) -> Model:
    """Load a checkpoint or an exported/foreign model folder (see :mod:`unimed.train.loading`).

    ``config``: a training YAML for a checkpoint that carries none; ``tokenizer``: the text tower's
    tokenizer folder for foreign checkpoints that carry none; ``quick_gelu``: the activation of a
    foreign image tower that does not declare it (refused where the source declares the other one);
    ``ema``: a checkpoint of a run that kept a moving average of its weights gives the averaged weights,
    unless False.
    """
    from unimed.train.loading import load_any

    return Model(load_any(path, config, tokenizer, quick_gelu, ema=ema), device)
