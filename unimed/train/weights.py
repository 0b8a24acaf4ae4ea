"""Pretrained weights from local paths only, with a report of what matched and what did not.

The image tower takes the ``visual.*`` tensors of an open_clip or MetaCLIP checkpoint file (a plain
state dict, or one under ``state_dict``/``model``, ``module.`` prefixes removed); positional
embeddings are resized when the checkpoint's grid differs (a 224 checkpoint into a 336 tower); a
``.pt``/``.bin`` file is unpickled only through ``safe_load`` (``weights_only``, a refusal names it). An
open_clip model folder (``open_clip_config.json`` + weights) is accepted too; where the source declares
its activation (``quick_gelu`` in an ``open_clip_config.json`` beside or inside), a tower configured
with the other one is refused: GELU weights run through QuickGELU (or back) give other features. The
text tower takes a Hugging Face folder (BiomedBERT) through ``BertModel.from_pretrained`` with
``local_files_only``, refused when its vocabulary is smaller than the tokenizer's. Each load logs the
missing and unexpected keys, so a wrong file is obvious.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from unimed.errors import UserError
from unimed.train.checkpoint import safe_load
from unimed.train.model_config import ModelConfig

if TYPE_CHECKING:
    from unimed.train.model import CLIPModel

__all__ = ["LoadReport", "load_vision_weights", "load_text_weights", "build_model", "declared_quick_gelu"]

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What one pretrained load did."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def log(self, tower: str) -> None:
        """Log the report, listing up to 10 missing and unexpected keys."""
        logger.warning(
            "unimed.train: %s tower from %s: %d tensors loaded, %d missing %s, %d unexpected %s",
            tower,
            self.source,
            self.loaded,
            len(self.missing),
            self.missing[:10],
            len(self.unexpected),
            self.unexpected[:10],
        )


def _weights_in(path: str) -> str:
    """A weight file: ``path`` itself, or the one an open_clip model folder holds."""
    if os.path.isdir(path):
        from unimed.train.loading import OPEN_CLIP_WEIGHTS

        for name in OPEN_CLIP_WEIGHTS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise UserError(f"{path}: a folder without open_clip weights ({', '.join(OPEN_CLIP_WEIGHTS[:3])})")
    return path


def declared_quick_gelu(path: str) -> bool | None:
    """The activation an ``open_clip_config.json`` beside (or inside) ``path`` declares, else None."""
    import json

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config = os.path.join(folder, "open_clip_config.json")
    if not os.path.isfile(config):
        return None
    with open(config) as fh:
        doc = json.load(fh)
    return bool(doc.get("model_cfg", doc).get("quick_gelu", False))


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    path = _weights_in(path)
    if not os.path.isfile(path):
        raise UserError(f"image tower checkpoint {path!r} does not exist: give a local open_clip/MetaCLIP file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state: Any = load_file(path)
    else:
        state = safe_load(path)  # weights_only; a file that would unpickle anything else is a UserError
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _resize_positions(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """Bicubically resize [1 + g*g, W] positional embeddings to ``tokens`` rows."""
    old, new = int(math.isqrt(pos.shape[0] - 1)), int(math.isqrt(tokens - 1))
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(pos.dtype)])


def load_vision_weights(visual: torch.nn.Module, path: str) -> LoadReport:
    """Load an open_clip/MetaCLIP checkpoint's ``visual.*`` tensors into ``visual``."""
    declared = declared_quick_gelu(path)
    tower = getattr(getattr(visual, "cfg", None), "quick_gelu", None)
    if declared is not None and tower is not None and declared != tower:
        said, ours = ("QuickGELU", "GELU") if declared else ("GELU", "QuickGELU")
        raise UserError(
            f"{path}: trained with {said} (its open_clip_config.json), but the image tower uses {ours}: "
            f"set model.vision.quick_gelu={str(declared).lower()}"
        )
    state = _read_state_dict(path)
    prefix = "visual." if any(k.startswith("visual.") for k in state) else ""
    vis = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = visual.state_dict()
    pos = vis.get("positional_embedding")
    if pos is not None and pos.shape != own["positional_embedding"].shape:
        vis["positional_embedding"] = _resize_positions(pos, own["positional_embedding"].shape[0])
    wrong = [k for k, v in vis.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise UserError(
            f"{path}: shapes differ from the configured image tower for {wrong[:5]}: "
            "set model.vision (width, layers, patch_size) to the checkpoint's architecture"
        )
    result = visual.load_state_dict(vis, strict=False)
    report = LoadReport(
        path, len(vis) - len(result.unexpected_keys), list(result.missing_keys), list(result.unexpected_keys)
    )
    report.log("image")
    return report


def load_text_weights(tower: torch.nn.Module, folder: str) -> LoadReport:
    """Replace ``tower.bert`` by the BERT weights of a local Hugging Face folder."""
    from transformers import BertModel

    if not os.path.isdir(folder):
        raise UserError(f"text tower folder {folder!r} does not exist: give a local Hugging Face BERT folder")
    bert, info = BertModel.from_pretrained(
        folder, local_files_only=True, add_pooling_layer=False, output_loading_info=True
    )
    current: Any = tower.bert  # the tower's BertModel (nn.Module's attribute type is Tensor | Module)
    if bert.config.hidden_size != current.config.hidden_size:
        raise UserError(
            f"{folder}: hidden size {bert.config.hidden_size} differs from model.text.hidden_size "
            f"{current.config.hidden_size}"
        )
    if bert.config.vocab_size < current.config.vocab_size:
        raise UserError(
            f"{folder}: its embeddings hold {bert.config.vocab_size} tokens, the tokenizer has "
            f"{current.config.vocab_size}: train with the text tower's own tokenizer (data.tokenizer unset or "
            f"= {folder})"
        )
    tower.bert = bert
    report = LoadReport(
        folder,
        len(bert.state_dict()) - len(info["missing_keys"]),
        list(info["missing_keys"]),
        list(info["unexpected_keys"]),
    )
    report.log("text")
    return report


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int = 0) -> CLIPModel:
    """The CLIP model for ``cfg``: random init, then the local pretrained weights it names."""
    from unimed.train.model import CLIPModel

    model = CLIPModel(cfg, vocab_size=cfg.text.vocab_size or vocab_size, pad_id=pad_id)
    if cfg.vision.pretrained:
        load_vision_weights(model.visual, cfg.vision.pretrained)
    if cfg.text.pretrained:
        load_text_weights(model.text, cfg.text.pretrained)
        if cfg.text.grad_checkpointing:
            model.text.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
