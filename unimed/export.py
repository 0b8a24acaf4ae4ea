"""``unimed export`` and ``unimed import``: trained models out to open_clip / Hugging Face folders, and in.

``--format open_clip`` writes what ``open_clip.create_model_and_transforms("local-dir:DIR")`` loads:
``open_clip_config.json`` (``model_cfg`` with an HF text tower: ``hf_proj_type: mlp``,
``hf_pooler_type: cls_last_hidden_state_pooler``; ``preprocess_cfg``), ``open_clip_model.safetensors``
in open_clip's key names, and the BERT's ``config.json`` and tokenizer files, which open_clip reads
through ``hf_model_name``/``hf_tokenizer_name`` (the folder's absolute path: open_clip resolves no
relative path, so a moved folder needs those two entries edited, or a new export).
``--format hf`` writes a Hugging Face-style folder: ``config.json`` (``model_type: unimed-clip`` and
the model descriptor), ``model.safetensors`` (unimed's keys) and the tokenizer files
(``AutoTokenizer.from_pretrained(DIR)`` loads them). ``unimed.load`` reads both back exactly.

``unimed import SRC --out DIR`` reads another project's checkpoint (see :mod:`unimed.train.layouts`),
prints what mapped, and writes it as an ``hf`` folder; ``--towers text`` writes only the text tower
as a BERT folder for ``model.text.pretrained`` (BiomedCLIP, whose image tower does not map).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from unimed.errors import UserError
from unimed.train.loss import get_loss

__all__ = [
    "FORMATS",
    "open_clip_config",
    "open_clip_state",
    "export_open_clip",
    "export_hf",
    "export_text_tower",
    "run_export",
    "run_import",
]

FORMATS = ("open_clip", "hf")


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies that share no memory (what safetensors asks for)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def open_clip_state(model) -> dict[str, torch.Tensor]:
    """The model's weights under open_clip's names (``text.transformer.*``, ``text.proj.0/2``, 0-d scale)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("text.bert."):
            k = "text.transformer." + k[len("text.bert.") :]
        k = {"text.proj.fc1.weight": "text.proj.0.weight", "text.proj.fc2.weight": "text.proj.2.weight"}.get(k, k)
        if k in ("logit_scale", "logit_bias"):
            v = v.reshape(())
        out[k] = v
    return out


def open_clip_config(desc: dict[str, Any], folder: str) -> dict[str, Any]:
    """``open_clip_config.json`` for a descriptor, the HF text tower read from ``folder``."""
    m = desc["model"]
    v = m["vision"]
    model_cfg: dict[str, Any] = {
        "embed_dim": m["embed_dim"],
        "quick_gelu": bool(v["quick_gelu"]),
        "vision_cfg": {
            "image_size": v["image_size"],
            "layers": v["layers"],
            "width": v["width"],
            "head_width": v["width"] // v["heads"],
            "mlp_ratio": v["mlp_ratio"],
            "patch_size": v["patch_size"],
        },
        "text_cfg": {
            "hf_model_name": folder,
            "hf_tokenizer_name": folder,
            "hf_model_pretrained": False,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": desc["context_length"],
        },
    }
    loss = get_loss(m.get("loss", "clip"), where="the model descriptor's loss")
    if loss.needs_bias:  # open_clip builds the bias parameter only when given its init
        model_cfg["init_logit_bias"] = loss.init_bias
    return {"model_cfg": model_cfg, "preprocess_cfg": desc["preprocess"], "unimed": desc}


def _save_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.tokenizer.save_pretrained(str(out))  # writes tokenizer_class, so AutoTokenizer needs no model config


def export_open_clip(loaded, out: str | os.PathLike) -> Path:
    """Write an open_clip model folder (see the module docstring); return it."""
    from safetensors.torch import save_file

    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    text_cfg = dict(loaded.descriptor["text_config"])
    text_cfg["pad_token_id"] = int(loaded.tokenizer.pad_id)  # open_clip masks padding by the config's pad id
    (folder / "config.json").write_text(json.dumps(text_cfg, indent=2))
    doc = open_clip_config(loaded.descriptor, str(folder))
    (folder / "open_clip_config.json").write_text(json.dumps(doc, indent=2))
    save_file(
        _tensors(open_clip_state(loaded.model)), str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"}
    )
    _save_tokenizer(loaded.tokenizer, folder)
    return folder


def export_hf(loaded, out: str | os.PathLike) -> Path:
    """Write a Hugging Face-style folder (see the module docstring); return it."""
    from safetensors.torch import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"model_type": "unimed-clip", "architectures": ["CLIPModel"], "unimed": loaded.descriptor}
    (folder / "config.json").write_text(json.dumps(doc, indent=2))
    save_file(_tensors(loaded.model.state_dict()), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _save_tokenizer(loaded.tokenizer, folder)
    return folder


def export_text_tower(source: str, out: str | os.PathLike, tokenizer: str | None = None):  # -> ImportReport
    """Write the text tower of an importable checkpoint as a BERT folder (``model.text.pretrained``)."""
    from transformers import BertConfig, BertModel

    from unimed.train.layouts import (
        ImportReport,
        detect_layout,
        text_config_from_state,
        to_unimed_keys,
        unwrap_state,
    )
    from unimed.train.loading import read_weights

    path = Path(source)
    weights = path
    if path.is_dir():
        from unimed.train.loading import OPEN_CLIP_WEIGHTS

        weights = next((path / n for n in OPEN_CLIP_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise UserError(f"{source}: no weight file ({', '.join(OPEN_CLIP_WEIGHTS[:3])})")
    state = unwrap_state(read_weights(weights))
    layout = detect_layout(state, source)
    mapped, dropped = to_unimed_keys(state, layout, source, towers=("text",))
    report = ImportReport(source, layout, unexpected=dropped)
    bert_state = {k[len("text.bert.") :]: v for k, v in mapped.items() if k.startswith("text.bert.")}
    report.notes.append(
        "text projection (text.proj.*) and logit scale not carried: model.text.pretrained takes the BERT only"
    )
    cfg = BertConfig.from_dict(text_config_from_state(mapped, None, 0, report.notes))
    bert = BertModel(cfg, add_pooling_layer=False)
    result = bert.load_state_dict(bert_state, strict=False)
    if result.missing_keys:
        raise UserError(f"{source}: text tower weights missing for {result.missing_keys[:5]}")
    report.towers["text"] = f"{len(bert_state) - len(result.unexpected_keys)}/{len(bert.state_dict())}"
    report.unexpected += list(result.unexpected_keys)
    Path(out).mkdir(parents=True, exist_ok=True)
    bert.save_pretrained(str(out))
    if tokenizer:
        from unimed.streaming.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
        if len(tok) > cfg.vocab_size:
            raise UserError(
                f"{tokenizer}: {len(tok)} tokens, the text tower embeds {cfg.vocab_size}: not its tokenizer"
            )
        tok.save_pretrained(str(out))
    return report


def run_export(checkpoint: str, fmt: str, out: str, config: str | None = None, ema: bool = True) -> Path:
    """``unimed export``: load ``checkpoint`` (its averaged weights, if it has them, unless ``ema`` is
    False) and write it in ``fmt``; print where and what."""
    from unimed.train.loading import load_any

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: one of {FORMATS}")
    loaded = load_any(checkpoint, config, ema=ema)
    folder = export_open_clip(loaded, out) if fmt == "open_clip" else export_hf(loaded, out)
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"unimed export: {checkpoint} ({loaded.kind}) -> {folder} ({fmt}, {n / 1e6:.2f}M parameters)")
    return folder


def run_import(
    source: str, out: str, tokenizer: str | None = None, quick_gelu: bool | None = None, towers: str = "all"
):  # -> ImportReport
    """``unimed import``: read another layout, print the report, write an ``hf`` folder (or a BERT folder)."""
    from unimed.train.loading import load_any

    if towers == "text":
        report = export_text_tower(source, out, tokenizer)
    elif towers == "all":
        loaded = load_any(source, tokenizer=tokenizer, quick_gelu=quick_gelu)
        export_hf(loaded, out)
        report = loaded.report
    else:
        raise UserError(f"--towers {towers!r}: all or text")
    if report is not None:
        print(f"unimed import: {report.summary()}")
        Path(out, "import_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    print(f"unimed import: wrote {out}")
    return report
