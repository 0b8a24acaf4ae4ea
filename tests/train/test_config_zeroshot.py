"""The typed config, the catalog and prompts, and the zero-shot metrics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from unimed.errors import UserError
from unimed.train.catalog import load_catalog, load_prompts, prompts_for
from unimed.train.config import load_config
from unimed.train.evaluate import evaluate_sets, render_markdown
from unimed.train.model import CLIPModel
from unimed.train.zeroshot import _auc, binary_metrics


@pytest.mark.parametrize("name", ["demo-cpu", "vitb16-unimed", "vitl14-unimed"])
def test_the_bundled_configs_load(name):
    cfg = load_config(name)
    assert cfg.model.text.context_length == cfg.data.context_length
    if name == "vitb16-unimed":
        assert (cfg.optimizer.lr, cfg.optimizer.betas, cfg.optimizer.eps) == (5e-4, [0.9, 0.98], 1e-6)
        assert cfg.optimizer.weight_decay == 0.2 and cfg.scheduler.warmup == "2000ba" and cfg.global_batch_size == 2048
    if name == "vitl14-unimed":
        assert cfg.optimizer.lr == 4e-4 and cfg.model.vision.image_size == 336 and cfg.model.vision.patch_size == 14


_HEAVY = ("torch", "streaming", "composer", "transformers", "nvidia.dali")


@pytest.mark.parametrize(
    "modules, heavy",
    [
        # Reading and validating a config: none of the heavy libraries.
        (["unimed.train.config"], _HEAVY),
        # `unimed eval` (CLI, evaluation, loading a checkpoint, the API) needs torch, never DALI or the trainer's stack.
        (
            [
                "unimed.cli",
                "unimed.train.evaluate",
                "unimed.train.loading",
                "unimed.train.zeroshot",
                "unimed.api",
                "unimed.train.retrieval",
                "unimed.train.probe",
            ],
            ("streaming", "composer", "nvidia.dali"),
        ),
    ],
)
def test_loading_a_config_imports_nothing_heavy(tmp_path, modules, heavy):
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "from unimed.train.config import load_config\nload_config('demo-cpu')\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_misspelled_or_mistyped_keys_are_errors():
    with pytest.raises(UserError, match="learning_rate"):
        load_config("demo-cpu", ["optimizer.learning_rate=1e-3"])
    with pytest.raises(UserError, match="batch_size"):
        load_config("demo-cpu", ["data.batch_size=many"])
    with pytest.raises(UserError, match="key=value"):
        load_config("demo-cpu", ["data.batch_size"])
    cfg = load_config("demo-cpu", ["data.batch_size=5", "model.vision.layers=1"])
    assert cfg.data.batch_size == 5 and cfg.model.vision.layers == 1


def test_catalog_lists_the_21_reference_sets_with_prompts_for_every_class():
    catalog = load_catalog()
    reference = [s for s in catalog.values() if s.reference]
    assert len(reference) == 21
    counts = {}
    for s in reference:
        counts[s.modality] = counts.get(s.modality, 0) + 1
        doc = load_prompts(s.prompts)
        for c in s.classes:
            assert len(prompts_for(doc, c)) >= 3, (s.name, c)
    assert counts == {"xray": 2, "fundus": 4, "ct": 3, "mri": 2, "ultrasound": 2, "pathology": 8}
    assert catalog["nct-crc-he"].class_index("TUM") == 7 and catalog["lc25000-lung"].class_index("lung_n") == 1


def test_auc_and_binary_metrics():
    assert _auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert _auc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5
    m = binary_metrics(np.array([0.9, 0.2, 0.7, 0.4]), np.array([1, 0, 0, 1]))
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5


def test_zeroshot_on_the_held_out_modality_set(demo_sets, tiny_cfg):
    from unimed.train.checkpoint import tokenizer_for

    tok = tokenizer_for(tiny_cfg)
    torch.manual_seed(0)
    model = CLIPModel(tiny_cfg.model, tok.vocab_size, tok.pad_id)
    results = evaluate_sets(model, tok, [("demo-modality", demo_sets["eval"])], 32, batch_size=16)
    r = results["demo-modality"]
    assert r["n"] == 36 and 0.0 <= r["top1"] <= 1.0 and r["chance"] == pytest.approx(1 / 6)
    assert set(r["per_class_n"].values()) == {6}
    table = render_markdown(results)
    assert "| Imaging modality (demo) | 6 | 36 |" in table
