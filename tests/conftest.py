"""Fixtures for the whole suite: the demo's real-image sets, the tiny training config, the trained eval-kit
checkpoint, and the helpers tests share (as fixtures: no test module imports another).

The Triton kernels are defined here first, under Triton's interpreter when there is no GPU: Triton reads
``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined, and a test module that imports composer
(which imports ``triton.language``) may be collected before ``tests/kernels``. The variable is restored
at once, so the rest of the suite sees the environment it was started with.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available() and "unimed.kernels.contrastive" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import unimed.kernels.contrastive  # noqa: F401  (defines the kernels for the interpreter)
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before

_SHM = "/dev/shm"


def _streaming_shm() -> bool:
    """Whether mosaicml-streaming left shared-memory blocks (its names start with a 6-digit prefix)."""
    try:
        return any(name[:6].isdigit() and name[6:7] == "_" for name in os.listdir(_SHM))
    except OSError:
        return True  # no /dev/shm to look at: clean every time


def _clean() -> None:
    if not _streaming_shm():
        return  # nothing to clean: skip the 0.4 s full garbage collection of a process holding torch
    from streaming.base.util import clean_stale_shared_memory

    gc.collect()
    for _ in range(3):  # another process on the machine (a second pytest) may unlink a block first
        try:
            clean_stale_shared_memory()
            return
        except FileNotFoundError:
            continue


@pytest.fixture(autouse=True)
def _fresh_shared_memory():
    """StreamingDataset registers its folders in shared memory: clear leftovers around each test."""
    _clean()
    yield
    _clean()


# ----------------------------------------------------------------------------- shared data and models
# One way to share test helpers: the fixtures below (no test module imports another). The demo's sets and
# the trained eval-kit checkpoint are built once per session, whichever folder's tests ask first.

#: Steps of the eval-kit training: 150 steps of 16 at lr 1e-3 without weight decay; the tiny towers learn the
#: six modalities whatever the thread count (60 steps of 8 at 2e-3 collapsed to one class in some orders).
EVAL_KIT_STEPS = 150


def tiny_overrides_for(demo_sets: dict[str, str], **extra) -> list[str]:
    """Overrides that make demo-cpu.yaml tiny on ``demo_sets``: 32 px, 2-layer towers, 8 per batch;
    ``extra`` (dotted keys) on top. Plain, for the fixtures and for worker scripts given its result."""
    base = {
        "data.shards": f"[{demo_sets['train']}]",
        "data.tokenizer": demo_sets["tokenizer"],
        "data.batch_size": 8,
        "data.image_size": 32,
        "data.num_workers": 0,
        "model.vision.image_size": 32,
        "model.vision.width": 32,
        "model.vision.layers": 2,
        "model.vision.heads": 2,
        "model.text.hidden_size": 32,
        "model.text.intermediate_size": 64,
        "model.embed_dim": 32,
        "scheduler.warmup": "2ba",
        "console_log_interval": "100ba",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def demo_sets(tmp_path_factory) -> dict[str, str]:
    """Training shards (+ tokenizer) and the held-out modality set, from real sample images."""
    from unimed.train.demodata import build_demo_sets

    return build_demo_sets(
        tmp_path_factory.mktemp("demo"), train_per_modality=16, eval_per_modality=6, size=64, workers=1
    )


@pytest.fixture(scope="session")
def tiny_overrides(demo_sets):
    """``tiny_overrides(**extra)``: :func:`tiny_overrides_for` on the demo sets (``sets=`` for other ones)."""

    def overrides(sets: dict[str, str] | None = None, **extra) -> list[str]:
        return tiny_overrides_for(sets or demo_sets, **extra)

    return overrides


@pytest.fixture(scope="session")
def tiny_config(tiny_overrides):
    """``tiny_config(**extra)``: the shipped demo-cpu config made tiny, ``extra`` overrides on top."""
    from unimed.train.config import load_config

    return lambda sets=None, **extra: load_config("demo-cpu", tiny_overrides(sets, **extra))


@pytest.fixture
def tiny_cfg(tiny_config):
    """The tiny demo config, 4 batches."""
    return tiny_config(max_duration="4ba")


@pytest.fixture(scope="session")
def demo_crops(demo_sets):
    """``demo_crops(split="eval")``: ``crops/<split>/<modality>/*.png``, the real-image crops the demo sets
    were converted from."""
    return lambda split="eval": Path(demo_sets["eval_root"]).parent / "crops" / split


@pytest.fixture(scope="session")
def ingest_convert():
    """``ingest_convert(args)``: the ``ingest convert`` command on ``args`` (no progress bar); it must succeed."""
    from unimed.ingest import cli as ingest_cli

    def convert(args: list[str]) -> None:
        assert ingest_cli.main(["convert", *args, "--no-progress"]) == 0

    return convert


@pytest.fixture(scope="session")
def class_folder_set(ingest_convert):
    """``class_folder_set(root, layout, name, modality="pathology")``: copy ``layout`` (folder name -> images)
    under ``root/raw-<name>``, convert it with ``--class-folders`` to ``root/<name>``; return that folder."""

    def build(root, layout: dict, name: str, modality: str = "pathology") -> str:
        raw = root / f"raw-{name}"
        for folder, images in layout.items():
            (raw / folder).mkdir(parents=True, exist_ok=True)
            for i, src in enumerate(images):
                shutil.copyfile(src, raw / folder / f"{i:03d}{src.suffix}")
        out = root / name
        ingest_convert([str(raw), "--out", str(out), "--class-folders", "--modality", modality, "--source", name])
        return str(out)

    return build


def _pretrained(folder, tokenizer_dir: str, cfg) -> tuple[str, str]:
    """A BERT folder (with the demo tokenizer) and an image-tower file for ``cfg``'s tiny towers."""
    from transformers import BertConfig, BertModel

    from unimed.train.checkpoint import tokenizer_for
    from unimed.train.model import CLIPModel

    tok = tokenizer_for(cfg)
    text = folder / "bert"
    torch.manual_seed(2)  # the same towers whichever tests ran before (the global RNG's state varies)
    bert = BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=cfg.model.text.hidden_size,
            num_hidden_layers=cfg.model.text.layers,
            num_attention_heads=cfg.model.text.heads,
            intermediate_size=cfg.model.text.intermediate_size,
            max_position_embeddings=64,
            layer_norm_eps=1e-6,
            pad_token_id=tok.pad_id,
        ),
        add_pooling_layer=False,
    )
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


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, demo_sets, tiny_config) -> dict:
    """The tiny demo CLIP trained once per session (for the evaluation, export and API tests).

    It starts from "pretrained" towers: a BERT folder whose config differs from what ``TextConfig``
    would build (64 positions, LayerNorm eps 1e-6) and an image-tower file with an
    ``open_clip_config.json`` beside it. The checkpoint is copied alone into a folder, then the
    pretrained files, the tokenizer folder and the training ``config.yaml`` are deleted: what loads
    afterwards loaded from the checkpoint only. Returns {"ckpt": the lone .pt, "run_ckpt": the run's .pt,
    "root", "gone": the deleted paths, "steps"}.
    """
    from unimed.train.bundle_callback import UnimedBundle
    from unimed.train.checkpoint import tokenizer_for
    from unimed.train.trainer import train

    steps = EVAL_KIT_STEPS
    root = tmp_path_factory.mktemp("trained")
    tok_copy = root / "tokenizer"
    shutil.copytree(demo_sets["tokenizer"], tok_copy)
    base = {**demo_sets, "tokenizer": str(tok_copy)}
    text, vision = _pretrained(root / "pretrained", str(tok_copy), tiny_config(base))
    cfg = tiny_config(
        base,
        **{
            "max_duration": f"{steps}ba",
            "save_folder": str(root / "run"),
            "save_interval": f"{steps}ba",
            "autoresume": "false",
            "model.text.dropout": 0.0,
            "optimizer.lr": 1e-3,
            "data.tokenizer": "null",
            "data.batch_size": 16,
            "optimizer.weight_decay": 0.0,
            "model.text.pretrained": text,
            "model.vision.pretrained": vision,
        },
    )
    train(cfg, extra_callbacks=[UnimedBundle(cfg, tokenizer_for(cfg))])
    lone = root / "lone"
    lone.mkdir()
    src = next((root / "run").glob(f"ep*-ba{steps}-rank0.pt"))
    shutil.copy(src, lone / "model.pt")
    for gone in (tok_copy, root / "pretrained", root / "run" / "config.yaml"):
        shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    return {
        "ckpt": str(lone / "model.pt"),
        "run_ckpt": str(src),
        "root": root,
        "gone": [str(tok_copy), text, vision],
        "steps": steps,
    }
