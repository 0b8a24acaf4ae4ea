"""Self-contained checkpoints: the model description, the resolved config and the tokenizer travel inside.

A *descriptor* is everything needed to rebuild a trained model without the files it was trained
from: the model config (pretrained paths cleared), the text tower's own ``BertConfig`` (a BiomedBERT
folder's, when training started from one), the tokenizer's context length and pad id, and the
evaluation transform. ``UnimedBundle`` (a Composer callback, :mod:`unimed.train.bundle_callback`) stores the
descriptor, the resolved
training config and the tokenizer's files in every checkpoint, as plain strings in the callback's
state, which ``weights_only`` loads accept; ``unimed eval`` and ``unimed.load`` then need only the
checkpoint. Exported folders carry the same descriptor in their config JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from unimed.errors import UserError
from unimed.train.transform import EvalTransform

__all__ = [
    "BUNDLE_KEY",
    "FORMAT",
    "TOKENIZER_FILES",
    "describe",
    "bundle_from_state",
    "model_from_descriptor",
    "tokenizer_files",
    "tokenizer_from_files",
    "transform_for",
]

BUNDLE_KEY = "UnimedBundle"  # the callback's name in a checkpoint's state.callbacks
FORMAT = 1
#: Tokenizer files that travel (text only, never weights); anything else in the folder stays behind.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
_MAX_TOKENIZER_BYTES = 32 << 20


def transform_for(cfg) -> EvalTransform:  # (TrainConfig) -> EvalTransform
    """The evaluation transform of a training config: its image size and normalization."""
    return EvalTransform(int(cfg.model.vision.image_size), tuple(cfg.data.mean), tuple(cfg.data.std))


def describe(model, tokenizer, transform: EvalTransform) -> dict[str, Any]:
    """The descriptor of a built ``CLIPModel`` with its tokenizer and transform."""
    mcfg = dataclasses.asdict(model.cfg)
    for tower in ("vision", "text"):
        mcfg[tower]["pretrained"] = None
        mcfg[tower]["grad_checkpointing"] = False
    text = model.text.bert.config.to_dict()
    return {
        "format": FORMAT,
        "model": mcfg,
        "text_config": text,
        "context_length": int(tokenizer.context_length),
        "pad_id": int(tokenizer.pad_id),
        "preprocess": transform.to_dict(),
    }


def tokenizer_files(folder: str) -> dict[str, str]:
    """The tokenizer files of ``folder`` (see ``TOKENIZER_FILES``) as text."""
    out, size = {}, 0
    for name in TOKENIZER_FILES:
        path = Path(folder, name)
        if path.is_file():
            out[name] = path.read_text(encoding="utf-8")
            size += len(out[name])
    if not out:
        raise UserError(f"{folder}: no tokenizer file ({', '.join(TOKENIZER_FILES[:4])}) to bundle")
    if size > _MAX_TOKENIZER_BYTES:
        raise UserError(f"{folder}: tokenizer files of {size >> 20} MB; at most {_MAX_TOKENIZER_BYTES >> 20} MB travel")
    return out


def tokenizer_from_files(files: dict[str, str], context_length: int):  # -> CaptionTokenizer
    """A ``CaptionTokenizer`` from bundled files, written once to a folder named by their hash."""
    from unimed.streaming.tokenizer import CaptionTokenizer

    bad = set(files) - set(TOKENIZER_FILES)
    if bad:
        raise UserError(f"bundled tokenizer holds unexpected files {sorted(bad)}")
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:20]
    parent = Path(tempfile.gettempdir(), "unimed-tokenizers")
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / digest
    if not _holds(folder, files):
        staging = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=parent))
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        try:
            os.rename(staging, folder)
        except OSError:  # written meanwhile (or something else is there): use our own copy if it is not ours
            folder = folder if _holds(folder, files) else staging
        if folder != staging and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return CaptionTokenizer(str(folder), context_length)


def _holds(folder: Path, files: dict[str, str]) -> bool:
    """Whether ``folder`` holds exactly ``files`` (a shared temp folder is checked, never trusted)."""
    try:
        return (
            folder.is_dir()
            and sorted(p.name for p in folder.iterdir()) == sorted(files)
            and all((folder / n).read_text(encoding="utf-8") == t for n, t in files.items())
        )
    except OSError:
        return False


def model_from_descriptor(desc: dict[str, Any]):  # -> CLIPModel
    """An untrained ``CLIPModel`` shaped as ``desc`` says (weights come from the caller's state dict)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from transformers import BertConfig, BertModel

    from unimed.train.model import CLIPModel, ModelConfig

    if int(desc.get("format", 0)) > FORMAT:
        raise UserError(f"model description format {desc.get('format')} is newer than this unimed ({FORMAT})")
    try:
        mcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), desc["model"]))
    except OmegaConfBaseException as exc:
        raise UserError(
            f"model description does not fit this unimed's ModelConfig: {str(exc).splitlines()[0]}"
        ) from None
    text = dict(desc["text_config"])
    model = CLIPModel(mcfg, vocab_size=int(text["vocab_size"]), pad_id=int(desc["pad_id"]))
    model.text.bert = BertModel(BertConfig.from_dict(text), add_pooling_layer=False)
    pre = desc.get("preprocess") or {}
    if "mean" in pre and "std" in pre:  # the model normalizes its uint8 input as its training data was
        model.set_image_normalization(pre["mean"], pre["std"])
    return model


def bundle_from_state(state: Any) -> dict[str, Any] | None:
    """The bundle of a loaded Composer checkpoint dict (``state.callbacks.UnimedBundle``), if any."""
    try:
        raw = state["state"]["callbacks"][BUNDLE_KEY]
    except (KeyError, TypeError):
        return None
    if not isinstance(raw, dict) or "descriptor" not in raw:
        return None
    return {
        "descriptor": json.loads(raw["descriptor"]),
        "config": raw.get("config"),
        "tokenizer": dict(raw.get("tokenizer") or {}),
    }
