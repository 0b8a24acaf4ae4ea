"""One loader for every kind of trained weights: the only way ``unimed eval``, export and the API get a model.

Accepted: a Composer checkpoint (``.pt``, or a sharded folder) with its bundle (self-contained) or with a
``config.yaml`` beside it / ``--config``; the plain state dict ``export_path`` writes (with a config);
unimed's exported folders (``--format hf`` and ``--format open_clip``); and other projects' layouts
(:mod:`unimed.train.layouts`: an open_clip folder or file, UniMed-CLIP's released checkpoints,
BiomedCLIP's text tower), which need their tokenizer (``tokenizer=``) unless the folder holds one.
Every file is read with ``weights_only=True`` (or as safetensors); a refusal is a ``UserError``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unimed.errors import UserError
from unimed.train.bundle import describe, model_from_descriptor, tokenizer_from_files, transform_for
from unimed.train.layouts import ImportReport, detect_layout, infer_descriptor, to_unimed_keys, unwrap_state
from unimed.train.transform import EvalTransform

__all__ = ["Loaded", "load_any", "build_loaded", "read_weights", "OPEN_CLIP_WEIGHTS"]

#: open_clip's own preference among the weight files of a model folder.
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


@dataclass
class Loaded:
    """A model ready to evaluate: eval mode, its tokenizer and transform, where it came from."""

    model: Any  # CLIPModel
    tokenizer: Any  # CaptionTokenizer
    transform: EvalTransform
    descriptor: dict[str, Any]
    config: Any = None  # TrainConfig, when the source carries one
    kind: str = ""
    report: ImportReport | None = None


def read_weights(path: str | os.PathLike) -> Any:
    """A weight file: safetensors, or ``torch.load(weights_only=True)`` with the checkpoint allow-list."""
    from unimed.train.checkpoint import safe_load

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return safe_load(path)


def build_loaded(
    descriptor: dict,
    state: dict[str, torch.Tensor],
    tokenizer,
    source: str,
    *,
    kind: str,
    config=None,
    report: ImportReport | None = None,
) -> Loaded:
    """Build the model the descriptor describes and load ``state`` into it: missing keys are refused."""
    model = model_from_descriptor(descriptor)
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise UserError(f"{source}: tensor shapes differ from the described model for {wrong[:5]}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise UserError(
            f"{source}: weights missing for {len(result.missing_keys)} tensors, e.g. "
            f"{result.missing_keys[:5]} (a different model config?)"
        )
    if report is not None:
        for tower, prefix in (("visual", "visual."), ("text", "text.")):
            expected = sum(k.startswith(prefix) for k in own)
            report.towers[tower] = f"{sum(k.startswith(prefix) for k in state if k in own)}/{expected}"
        report.unexpected += list(result.unexpected_keys)
    if int(tokenizer.vocab_size) > int(descriptor["text_config"]["vocab_size"]):
        raise UserError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens, the text tower's embedding "
            f"{descriptor['text_config']['vocab_size']}: they were not trained together"
        )
    transform = EvalTransform.from_dict(descriptor["preprocess"])
    return Loaded(model.eval(), tokenizer, transform, descriptor, config, kind, report)


def _composer(path: str, config: str | None, raw: Any = None, ema: bool = True) -> Loaded:
    """A Composer checkpoint (file or sharded folder), or the plain state dict ``export_path`` writes."""
    from unimed.train.bundle import bundle_from_state
    from unimed.train.checkpoint import find_config, read_checkpoint, tokenizer_for
    from unimed.train.config import config_from_dict, load_config

    state, raw_bundle = read_checkpoint(path, raw, ema=ema)
    bundle = bundle_from_state(raw_bundle) if raw_bundle is not None else None
    if bundle and not config:
        desc = bundle["descriptor"]
        cfg = None
        if bundle.get("config"):
            import yaml

            try:
                cfg = config_from_dict(yaml.safe_load(bundle["config"]), where=f"{path} (bundled config)")
            except UserError:
                cfg = None  # a config of another unimed version: the descriptor is enough to evaluate
        tok = tokenizer_from_files(bundle["tokenizer"], int(desc["context_length"]))
        return build_loaded(desc, state, tok, path, kind="composer (self-contained)", config=cfg)
    cfg = load_config(config or find_config(path))
    tok = tokenizer_for(cfg)
    desc = _descriptor_from_config(cfg, tok, state, path)
    return build_loaded(desc, state, tok, path, kind="composer + config.yaml", config=cfg)


def _descriptor_from_config(cfg, tokenizer, state: dict, source: str) -> dict:
    """The descriptor of a config whose pretrained files may be gone: BERT's config from its folder if
    there, else read off the checkpoint's tensors."""
    from unimed.train.model import CLIPModel

    torch.manual_seed(cfg.seed)
    model = CLIPModel(cfg.model, vocab_size=cfg.model.text.vocab_size or tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    desc = describe(model, tokenizer, transform_for(cfg))
    folder = cfg.model.text.pretrained
    if folder and Path(folder, "config.json").is_file():
        from transformers import BertConfig

        desc["text_config"] = BertConfig.from_pretrained(folder).to_dict()
    elif folder:
        from unimed.train.layouts import text_config_from_state

        desc["text_config"] = text_config_from_state(state, cfg.model.text.heads, tokenizer.pad_id, [])
    return desc


def _unimed_folder(folder: Path, tokenizer=None) -> Loaded:
    """An ``unimed export --format hf`` folder: config.json (descriptor), model.safetensors, tokenizer
    (``tokenizer``, a folder or a tokenizer, replaces the folder's own: its files moved or were left out)."""
    doc = json.loads((folder / "config.json").read_text())
    desc = doc["unimed"]
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{folder}: no model.safetensors beside its config.json")
    tok = _tokenizer_in(folder, tokenizer, int(desc["context_length"]))
    if tok is None:
        raise UserError(
            f"{folder}: no tokenizer files (tokenizer.json or vocab.txt) in the folder; give the "
            "tokenizer folder it was exported with (--tokenizer)"
        )
    return build_loaded(desc, read_weights(weights), tok, str(folder), kind="unimed hf folder")


def _foreign(
    state: dict,
    source: str,
    *,
    tokenizer,
    open_clip_cfg: dict | None,
    text_config: dict | None,
    quick_gelu: bool | None,
) -> tuple[dict, dict, ImportReport]:
    """(descriptor, state under unimed keys, report) of another project's layout."""
    from unimed.train.transform import CLIP_MEAN, CLIP_STD

    layout = detect_layout(state, source)
    report = ImportReport(source, layout)
    mapped, dropped = to_unimed_keys(state, layout, source)
    report.unexpected += dropped
    oc = (open_clip_cfg or {}).get("model_cfg", {})
    declared = oc.get("quick_gelu") if open_clip_cfg is not None else (True if layout == "unimed-clip" else None)
    if declared is not None and quick_gelu is not None and bool(declared) != bool(quick_gelu):
        said = "QuickGELU" if declared else "GELU"
        raise UserError(
            f"{source}: its image tower was trained with {said} (quick_gelu={bool(declared)}), "
            f"not {'QuickGELU' if quick_gelu else 'GELU'}: running it through the other activation "
            "changes every feature; drop the activation override"
        )
    act = declared if declared is not None else quick_gelu
    if act is None:
        act = False
        report.notes.append(
            "activation not declared by the source: GELU (open_clip's default); "
            "pass quick_gelu=True for OpenAI/MetaCLIP-initialized towers"
        )
    elif open_clip_cfg is None and layout == "unimed-clip":
        report.notes.append("activation QuickGELU (UniMed-CLIP's released towers)")
    vcfg, tcfg = oc.get("vision_cfg", {}), oc.get("text_cfg", {})
    for key, ours in (("hf_pooler_type", "cls_last_hidden_state_pooler"), ("hf_proj_type", "mlp")):
        if key in tcfg and tcfg[key] != ours:
            raise UserError(f"{source}: text_cfg.{key} is {tcfg[key]!r}; unimed's text tower is {ours!r}")
    heads = int(vcfg["width"]) // int(vcfg.get("head_width", 64)) if "width" in vcfg else None
    context = int(tcfg.get("context_length") or 256)
    if "context_length" not in tcfg:
        report.notes.append("context length 256 (the reference system's; not stored in the weights)")
    pre = (open_clip_cfg or {}).get("preprocess_cfg") or {}
    size = vcfg.get("image_size") or int(round((mapped["visual.positional_embedding"].shape[0] - 1) ** 0.5)) * int(
        mapped["visual.conv1.weight"].shape[-1]
    )
    preprocess = {
        "size": size,
        "mean": list(pre.get("mean", CLIP_MEAN)),
        "std": list(pre.get("std", CLIP_STD)),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    desc = infer_descriptor(
        mapped,
        source,
        quick_gelu=bool(act),
        context_length=context,
        pad_id=int(tokenizer.pad_id),
        preprocess=preprocess,
        vision_heads=heads,
        text_config=text_config,
        notes=report.notes,
    )
    return desc, mapped, report


def _tokenizer_in(folder: Path | None, given, context: int):
    from unimed.streaming.tokenizer import CaptionTokenizer

    if given is not None:
        return given if not isinstance(given, (str, os.PathLike)) else CaptionTokenizer(str(given), context)
    if folder is not None and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
        return CaptionTokenizer(str(folder), context)
    return None


def _open_clip_folder(folder: Path, tokenizer, quick_gelu: bool | None) -> Loaded:
    """An open_clip model folder: open_clip_config.json + weights (+ config.json and tokenizer files)."""
    doc = json.loads((folder / "open_clip_config.json").read_text())
    weights = next((folder / n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"{folder}: an open_clip folder without weights ({', '.join(OPEN_CLIP_WEIGHTS[:3])})")
    state = unwrap_state(read_weights(weights))
    if "unimed" in doc:  # our own export: the exact descriptor travels
        desc = doc["unimed"]
        if quick_gelu is not None and bool(desc["model"]["vision"]["quick_gelu"]) != bool(quick_gelu):
            raise UserError(
                f"{folder}: its image tower uses quick_gelu={desc['model']['vision']['quick_gelu']}, "
                f"not {quick_gelu}: drop the activation override"
            )
        mapped, dropped = to_unimed_keys(state, "open_clip", str(folder))
        tok = _tokenizer_in(folder, tokenizer, int(desc["context_length"]))
        report = ImportReport(str(folder), "open_clip (unimed export)", unexpected=dropped)
        return build_loaded(desc, mapped, tok, str(folder), kind="open_clip folder", report=report)
    tcfg = doc.get("model_cfg", {}).get("text_cfg", {})
    if doc.get("model_cfg", {}).get("vision_cfg", {}).get("timm_model_name"):
        from unimed.train.layouts import BIOMEDCLIP_VISUAL

        raise UserError(f"{folder}: {BIOMEDCLIP_VISUAL}; import its text tower alone (`--towers text`)")
    context = int(tcfg.get("context_length") or 256)
    tok = _tokenizer_in(folder, tokenizer, context)
    if tok is None and tcfg.get("hf_tokenizer_name") and os.path.isdir(tcfg["hf_tokenizer_name"]):
        tok = _tokenizer_in(Path(tcfg["hf_tokenizer_name"]), None, context)
    if tok is None:
        raise UserError(f"{folder}: no tokenizer in the folder; give the text tower's tokenizer folder (--tokenizer)")
    text_config = None
    for cand in (folder / "config.json", Path(tcfg.get("hf_model_name") or "/nonexistent") / "config.json"):
        if cand.is_file() and json.loads(cand.read_text()).get("model_type") == "bert":
            text_config = json.loads(cand.read_text())
            break
    desc, mapped, report = _foreign(
        state, str(folder), tokenizer=tok, open_clip_cfg=doc, text_config=text_config, quick_gelu=quick_gelu
    )
    return build_loaded(desc, mapped, tok, str(folder), kind="open_clip folder", report=report)


def load_any(
    path: str | os.PathLike, config: str | None = None, tokenizer=None, quick_gelu: bool | None = None, ema: bool = True
) -> Loaded:
    """Load any accepted source (see the module docstring) into a :class:`Loaded`; a Composer checkpoint
    of a run with a weight average gives the averaged weights unless ``ema`` is False."""
    p = Path(path)
    source = os.fspath(path)
    if p.is_dir():
        if (p / "open_clip_config.json").is_file():
            return _open_clip_folder(p, tokenizer, quick_gelu)
        if (p / "config.json").is_file() and json.loads((p / "config.json").read_text()).get("unimed"):
            return _unimed_folder(p, tokenizer)
        if (p / ".metadata").is_file():
            return _composer(source, config, ema=ema)
        raise UserError(
            f"{source}: not a checkpoint folder (no .metadata, open_clip_config.json or unimed config.json)"
        )
    if not p.is_file():
        raise UserError(f"checkpoint {source!r} does not exist")
    raw = read_weights(p)
    is_composer = isinstance(raw, dict) and isinstance(raw.get("state"), dict) and "model" in raw["state"]
    state = unwrap_state(raw)
    if is_composer or detect_layout(state, source) == "unimed":
        return _composer(source, config, raw, ema=ema)
    sidecar = p.parent / "open_clip_config.json"
    doc = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    context = int(((doc or {}).get("model_cfg", {}).get("text_cfg", {}) or {}).get("context_length") or 256)
    tok = _tokenizer_in(None, tokenizer, context)
    if tok is None:
        layout = detect_layout(state, source)
        raise UserError(
            f"{source}: {'an' if layout[0] in 'aeiou' else 'a'} {layout} checkpoint carries no tokenizer: give the "
            "text tower's tokenizer folder (--tokenizer, e.g. its BiomedBERT folder)"
        )
    desc, mapped, report = _foreign(
        state, source, tokenizer=tok, open_clip_cfg=doc, text_config=None, quick_gelu=quick_gelu
    )
    return build_loaded(desc, mapped, tok, source, kind=f"{report.layout} checkpoint", report=report)
