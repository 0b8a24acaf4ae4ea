"""Shared by the evaluation, export and API tests: one trained demo checkpoint per session, and real sets.

``trained_checkpoint`` trains the tiny demo CLIP once per test session (a cache in this module, so
several test modules share it) from "pretrained" towers: a BERT folder whose config differs from
what ``TextConfig`` would build (64 positions, LayerNorm eps 1e-6) and an image-tower file with an
``open_clip_config.json`` beside it. The checkpoint is copied alone into a folder, then the pretrained
files, the tokenizer folder and the training ``config.yaml`` are deleted: what loads afterwards loaded
from the checkpoint only. ``class_folder_set`` converts real sample images laid out under a public
release's folder names through ``ingest convert --class-folders``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tests.train.conftest import tiny_overrides

__all__ = ["trained_checkpoint", "class_folder_set", "demo_crops", "convert"]

_CACHE: dict[str, dict] = {}
# 150 steps of 16 at lr 1e-3 without weight decay: the tiny towers learn the six modalities whatever the
# thread count (60 steps of 8 at 2e-3 collapsed to one class in some orders of the suite).
STEPS = 150


def convert(args: list[str]) -> None:
    from unimed.ingest import cli as ingest_cli

    assert ingest_cli.main(["convert", *args, "--no-progress"]) == 0


def demo_crops(demo_sets: dict[str, str], split: str = "eval") -> Path:
    """``crops/<split>/<modality>/*.png``: the real-image crops the demo sets were converted from."""
    return Path(demo_sets["eval_root"]).parent / "crops" / split


def class_folder_set(root: Path, layout: dict[str, list[Path]], name: str, modality: str = "pathology") -> str:
    """Copy ``layout`` (folder name -> images) under ``root/raw-<name>`` and convert it to ``root/<name>``."""
    raw = root / f"raw-{name}"
    for folder, images in layout.items():
        (raw / folder).mkdir(parents=True, exist_ok=True)
        for i, src in enumerate(images):
            shutil.copyfile(src, raw / folder / f"{i:03d}{src.suffix}")
    out = root / name
    convert([str(raw), "--out", str(out), "--class-folders", "--modality", modality, "--source", name])
    return str(out)


def _pretrained(folder: Path, tokenizer_dir: str, cfg) -> tuple[str, str]:
    """A BERT folder (with the demo tokenizer) and an image-tower file for ``cfg``'s tiny towers."""
    from transformers import BertConfig, BertModel

    from unimed.train.checkpoint import tokenizer_for
    from unimed.train.model import CLIPModel

    tok = tokenizer_for(cfg)
    text = folder / "bert"
    torch.manual_seed(2)  # the same towers whichever tests ran before (the global RNG's state varies)
    bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=cfg.model.text.hidden_size,
                                num_hidden_layers=cfg.model.text.layers, num_attention_heads=cfg.model.text.heads,
                                intermediate_size=cfg.model.text.intermediate_size, max_position_embeddings=64,
                                layer_norm_eps=1e-6, pad_token_id=tok.pad_id), add_pooling_layer=False)
    bert.save_pretrained(text)
    for f in Path(tokenizer_dir).iterdir():
        if f.name != "unimed_tokenizer.json":
            shutil.copy(f, text / f.name)
    torch.manual_seed(3)
    visual = CLIPModel(cfg.model, tok.vocab_size, tok.pad_id).visual.state_dict()
    vision = folder / "vision"
    vision.mkdir()
    torch.save({"state_dict": {f"visual.{k}": v for k, v in visual.items()}}, vision / "open_clip_pytorch_model.bin")
    (vision / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    return str(text), str(vision / "open_clip_pytorch_model.bin")


def trained_checkpoint(tmp_path_factory, demo_sets: dict[str, str]) -> dict:
    """Train once per session; return {"ckpt": the lone .pt, "sharded_src": the run's .pt, ...}."""
    key = str(tmp_path_factory.getbasetemp())
    if key in _CACHE:
        return _CACHE[key]
    from unimed.train.bundle_callback import UnimedBundle
    from unimed.train.checkpoint import tokenizer_for
    from unimed.train.config import load_config
    from unimed.train.trainer import train

    root = tmp_path_factory.mktemp("trained")
    tok_copy = root / "tokenizer"
    shutil.copytree(demo_sets["tokenizer"], tok_copy)
    base = {**demo_sets, "tokenizer": str(tok_copy)}
    cfg = load_config("train/yamls/demo-cpu.yaml", tiny_overrides(base))
    text, vision = _pretrained(root / "pretrained", str(tok_copy), cfg)
    cfg = load_config("train/yamls/demo-cpu.yaml", tiny_overrides(base, **{
        "max_duration": f"{STEPS}ba", "save_folder": str(root / "run"), "save_interval": f"{STEPS}ba",
        "autoresume": "false", "model.text.dropout": 0.0, "optimizer.lr": 1e-3, "data.tokenizer": "null",
        "data.batch_size": 16, "optimizer.weight_decay": 0.0,
        "model.text.pretrained": text, "model.vision.pretrained": vision}))
    train(cfg, extra_callbacks=[UnimedBundle(cfg, tokenizer_for(cfg))])
    lone = root / "lone"
    lone.mkdir()
    src = next((root / "run").glob(f"ep*-ba{STEPS}-rank0.pt"))
    shutil.copy(src, lone / "model.pt")
    for gone in (tok_copy, root / "pretrained", root / "run" / "config.yaml"):
        shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    _CACHE[key] = {"ckpt": str(lone / "model.pt"), "run_ckpt": str(src), "root": root,
                   "gone": [str(tok_copy), text, vision]}
    return _CACHE[key]
