"""Other projects' checkpoint layouts onto unimed's towers, with a report of what mapped and what did not.

Layouts read (the ViT keys are open_clip's everywhere, as ``unimed.train.model`` keeps them):

* ``unimed``: ``text.bert.*``, ``text.proj.fc1/fc2``, ``logit_scale`` of shape [1];
* ``open_clip``: a full open_clip CLIP with a Hugging Face text tower: ``text.transformer.*``,
  ``text.proj.0/2`` (``hf_proj_type: mlp``), ``logit_scale`` 0-d;
* ``unimed-clip``: the released UniMed-CLIP checkpoints: the same under ``text_encoder.*``, usually in
  ``{"state_dict": ...}`` with DDP's ``module.`` prefix; QuickGELU (its towers are OpenAI-style ViTs);
* ``biomedclip``: a timm ViT (``visual.trunk.*``) with an HF PubMedBERT: the text tower maps; the
  image tower does not (no pre-LayerNorm, LayerNorm eps 1e-6, a patch bias) and is refused, saying so.

Sizes are read off the tensors; what tensors cannot tell (attention heads, the activation, the
context length) comes from the source's config when it has one, else from the caller, else a stated
default, each noted in the report. A layout that does not map is refused with a ``UserError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from unimed.errors import UserError
from unimed.train.loss import loss_for_state

__all__ = [
    "ImportReport",
    "unwrap_state",
    "detect_layout",
    "to_unimed_keys",
    "infer_descriptor",
    "text_config_from_state",
    "LAYOUTS",
    "BIOMEDCLIP_VISUAL",
]

LAYOUTS = ("unimed", "open_clip", "unimed-clip", "biomedclip")


@dataclass
class ImportReport:
    """What an import did: the layout, tensors per tower, missing and unexpected keys, and notes."""

    source: str
    layout: str
    towers: dict[str, str] = field(default_factory=dict)  # tower -> "loaded/expected"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "layout": self.layout,
            "towers": self.towers,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One line: layout, tensors per tower, missing/unexpected counts (first few named), notes."""
        towers = ", ".join(f"{k} {v}" for k, v in self.towers.items())
        parts = [
            f"{self.source}: {self.layout} layout",
            towers,
            f"{len(self.missing)} missing {self.missing[:5]}",
            f"{len(self.unexpected)} unexpected {self.unexpected[:5]}",
        ]
        return "; ".join(p for p in parts if p) + ("; " + "; ".join(self.notes) if self.notes else "")


def unwrap_state(state: Any) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint dict: under ``state_dict``/``model``/``state.model``, ``module.`` removed."""
    if isinstance(state, dict) and isinstance(state.get("state"), dict) and "model" in state["state"]:
        state = {k.removeprefix("model."): v for k, v in state["state"]["model"].items()}
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"not a state dict but a {type(state).__name__}")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def detect_layout(state: dict[str, torch.Tensor], source: str) -> str:
    """Which of ``LAYOUTS`` the keys follow; a ``UserError`` naming what they look like otherwise."""
    keys = list(state)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("text.bert."):
        return "unimed"
    if has("text_encoder.transformer."):
        return "unimed-clip"
    if has("visual.trunk."):
        return "biomedclip"
    if has("text.transformer."):
        return "open_clip"
    if "token_embedding.weight" in state or has("transformer.resblocks."):
        raise UserError(
            f"{source}: an open_clip CLIP with open_clip's own text transformer (token_embedding.weight): "
            "unimed's text tower is a BERT; use its image tower through model.vision.pretrained"
        )
    raise UserError(
        f"{source}: no known checkpoint layout ({len(keys)} tensors, e.g. {keys[:3]}); "
        f"unimed imports {', '.join(LAYOUTS)}"
    )


BIOMEDCLIP_VISUAL = (
    "its image tower is a timm ViT (visual.trunk.*) without a pre-LayerNorm, with LayerNorm eps "
    "1e-6 and a patch-embedding bias, which unimed's OpenAI-style ViT (ln_pre) cannot represent"
)


def to_unimed_keys(
    state: dict[str, torch.Tensor], layout: str, source: str, towers: tuple[str, ...] = ("visual", "text")
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state under unimed's key names, the source keys left behind)."""
    if layout == "biomedclip" and "visual" in towers:
        raise UserError(
            f"{source}: BiomedCLIP layout: {BIOMEDCLIP_VISUAL}; its text tower maps: import it alone "
            "(`unimed import ... --towers text`)"
        )
    out, dropped = {}, []
    for key, value in state.items():
        k = key
        if layout == "unimed-clip":
            k = k.replace("text_encoder.", "text.", 1) if k.startswith("text_encoder.") else k
        if layout in ("open_clip", "unimed-clip", "biomedclip"):
            if k.startswith("text.transformer."):
                k = "text.bert." + k[len("text.transformer.") :]
            k = {"text.proj.0.weight": "text.proj.fc1.weight", "text.proj.2.weight": "text.proj.fc2.weight"}.get(k, k)
        if k in ("logit_scale", "logit_bias"):
            value = value.reshape(1)
        if k.startswith("text.bert.pooler.") or k.endswith("embeddings.position_ids"):
            dropped.append(key)
            continue
        tower = "visual" if k.startswith("visual.") else "text" if k.startswith("text.") else "head"
        if tower != "head" and tower not in towers:
            dropped.append(key)
            continue
        out[k] = value
    return out, dropped


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def _vision(state: dict, heads: int | None, quick_gelu: bool, notes: list[str]) -> dict[str, Any]:
    conv, pos = state["visual.conv1.weight"], state["visual.positional_embedding"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = int(round((pos.shape[0] - 1) ** 0.5))
    if heads is None:
        heads = max(1, width // 64)
        notes.append(f"image tower heads {heads} (width/64: not stored in the weights)")
    hidden = int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    return {
        "image_size": grid * patch,
        "patch_size": patch,
        "width": width,
        "layers": _count(state, r"visual\.transformer\.resblocks\.(\d+)\."),
        "heads": heads,
        "mlp_ratio": hidden / width,
        "quick_gelu": quick_gelu,
        "pretrained": None,
    }


def text_config_from_state(state: dict, heads: int | None, pad_id: int, notes: list[str]) -> dict[str, Any]:
    """A ``BertConfig`` dict read off ``text.bert.*`` tensors (heads as given, else hidden/64, noted)."""
    from transformers import BertConfig

    words = state["text.bert.embeddings.word_embeddings.weight"]
    hidden = int(words.shape[1])
    if heads is None:
        heads = max(1, hidden // 64)
        notes.append(f"text tower heads {heads} (hidden/64: not stored in the weights)")
    cfg = BertConfig(
        vocab_size=int(words.shape[0]),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_hidden_layers=_count(state, r"text\.bert\.encoder\.layer\.(\d+)\."),
        intermediate_size=int(state["text.bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["text.bert.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["text.bert.embeddings.token_type_embeddings.weight"].shape[0]),
        pad_token_id=pad_id,
    )
    return cfg.to_dict()


def infer_descriptor(
    state: dict[str, torch.Tensor],
    source: str,
    *,
    quick_gelu: bool,
    context_length: int,
    pad_id: int,
    preprocess: dict[str, Any],
    vision_heads: int | None = None,
    text_config: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """A model descriptor (see :mod:`unimed.train.bundle`) for a state under unimed's keys."""
    notes = notes if notes is not None else []
    for key in (
        "visual.conv1.weight",
        "visual.proj",
        "text.bert.embeddings.word_embeddings.weight",
        "text.proj.fc1.weight",
        "text.proj.fc2.weight",
    ):
        if key not in state:
            raise UserError(f"{source}: no {key!r}: not a full CLIP with unimed's towers")
    embed = int(state["visual.proj"].shape[1])
    fc1, fc2 = state["text.proj.fc1.weight"], state["text.proj.fc2.weight"]
    text = dict(text_config) if text_config else text_config_from_state(state, None, pad_id, notes)
    hidden = int(text["hidden_size"])
    if int(fc2.shape[0]) != embed or int(fc1.shape[0]) != (hidden + embed) // 2:
        raise UserError(
            f"{source}: text projection {list(fc1.shape)} -> {list(fc2.shape)} is not unimed's MLP "
            f"({hidden} -> {(hidden + embed) // 2} -> {embed}, no biases)"
        )
    vision = _vision(state, vision_heads, quick_gelu, notes)
    model = {
        "embed_dim": embed,
        "vision": vision,
        "text": {
            "vocab_size": int(text["vocab_size"]),
            "hidden_size": hidden,
            "layers": int(text["num_hidden_layers"]),
            "heads": int(text["num_attention_heads"]),
            "intermediate_size": int(text["intermediate_size"]),
            "context_length": int(context_length),
            "pretrained": None,
        },
        "loss": loss_for_state("logit_bias" in state),
    }
    return {
        "format": 1,
        "model": model,
        "text_config": text,
        "context_length": int(context_length),
        "pad_id": int(pad_id),
        "preprocess": preprocess,
    }
