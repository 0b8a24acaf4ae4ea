"""Trained weights back into a ``CLIPModel``: Composer checkpoints (monolithic or FSDP2-sharded) or exports.

A checkpoint is one of: a Composer ``.pt`` file (``state.model`` holds ``model.*`` keys), a sharded
checkpoint folder (``.metadata`` + ``*.distcp``, converted in memory through
``torch.distributed.checkpoint``), or the plain state dict ``export_path`` writes. The model is
rebuilt from the ``config.yaml`` saved beside the checkpoints (searched in the checkpoint's folder
and its parents) unless a config is given.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from unimed.errors import UserError

__all__ = ["find_config", "read_model_state", "load_trained", "tokenizer_for"]


def find_config(checkpoint: str) -> str:
    """The ``config.yaml`` nearest above ``checkpoint`` (at most three levels up)."""
    p = Path(checkpoint).resolve()
    for folder in [p if p.is_dir() else p.parent, *list(p.parents)[:3]]:
        if (folder / "config.yaml").is_file():
            return str(folder / "config.yaml")
    raise UserError(f"no config.yaml beside {checkpoint}; give the training YAML with --config")


def _load_file(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def read_model_state(checkpoint: str) -> dict[str, torch.Tensor]:
    """The ``CLIPModel`` state dict (keys without the Composer ``model.`` prefix) of any checkpoint kind."""
    if os.path.isdir(checkpoint):
        if not (Path(checkpoint) / ".metadata").is_file():
            raise UserError(f"{checkpoint} is a folder without .metadata: not a sharded checkpoint")
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "full.pt")
            dcp_to_torch_save(checkpoint, out)
            state = _load_file(out)
    elif os.path.isfile(checkpoint):
        state = _load_file(checkpoint)
    else:
        raise UserError(f"checkpoint {checkpoint!r} does not exist")
    if isinstance(state, dict) and "state" in state and isinstance(state["state"], dict):
        state = state["state"].get("model", state["state"])
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k.removeprefix("model.")] = v
    if not out:
        raise UserError(f"{checkpoint}: no model weights found")
    return out


def tokenizer_for(cfg):  # (TrainConfig) -> CaptionTokenizer
    """The caption tokenizer a config trains with: ``data.tokenizer``, else the text tower's folder."""
    from unimed.streaming.tokenizer import CaptionTokenizer

    path = cfg.data.tokenizer or cfg.model.text.pretrained
    if not path:
        raise UserError("no tokenizer: set data.tokenizer (a folder from `ingest tokenizer`) or model.text.pretrained")
    return CaptionTokenizer(path, cfg.model.text.context_length)


def load_trained(checkpoint: str | None, config: str | None = None, cfg=None):
    """(CLIPModel in eval mode, TrainConfig, CaptionTokenizer); ``checkpoint`` None keeps the random init."""
    from unimed.train.config import load_config
    from unimed.train.weights import build_model

    if cfg is None:
        cfg = load_config(config or find_config(checkpoint))
    tokenizer = tokenizer_for(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, tokenizer.vocab_size, tokenizer.pad_id)
    if checkpoint:
        state = read_model_state(checkpoint)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise UserError(f"{checkpoint}: weights missing for {result.missing_keys[:5]} (a different model config?)")
    return model.eval(), cfg, tokenizer
