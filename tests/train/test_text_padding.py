"""The text side at its batch's own width: same embeddings and gradients as at the full context, FLOPs
counted at the width computed, and the ``compile: true`` option on CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from unimed.streaming.tokenizer import trim_padding
from unimed.train.composer_model import UnimedCLIP, text_forward_flops, vision_forward_flops
from unimed.train.model import CLIPModel, ModelConfig, TextConfig, VisionConfig
from unimed.train.trainer import train


def _model() -> UnimedCLIP:
    torch.manual_seed(0)
    cfg = ModelConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2),
        text=TextConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, context_length=256, dropout=0.0),
    )
    return UnimedCLIP(CLIPModel(cfg, vocab_size=60))


def _grads(cm: UnimedCLIP, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    cm.zero_grad()
    out = cm(batch)
    loss = cm.loss(out, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in cm.named_parameters() if p.grad is not None}


def test_trimmed_tokens_give_the_full_context_loss_and_gradients():
    cm = _model()
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(6, 256, dtype=torch.int64)
    for i, n in enumerate([5, 9, 17, 3, 12, 21]):
        tokens[i, :n] = torch.randint(5, 60, (n,), generator=g)
        tokens[i, 0] = 2
    batch = {"image": torch.randn(6, 3, 32, 32, generator=g), "tokens": tokens}
    short = {**batch, "tokens": trim_padding(tokens, pad_id=0)}
    assert short["tokens"].shape == (6, 24)
    loss_full, grads_full = _grads(cm, batch)
    loss_short, grads_short = _grads(cm, short)
    assert torch.allclose(loss_short, loss_full, rtol=1e-5, atol=1e-6)
    assert grads_full.keys() == grads_short.keys()
    for name, want in grads_full.items():
        assert torch.allclose(grads_short[name], want, rtol=1e-4, atol=1e-6), name
    flops_full, flops_short = cm.flops_per_batch(batch), cm.flops_per_batch(short)
    vision, cfg = vision_forward_flops(cm.model.cfg), cm.model.cfg
    sim = 2 * 2 * 6 * 6 * cfg.embed_dim
    assert flops_short == pytest.approx(3.0 * (6 * (vision + text_forward_flops(cfg, 24)) + sim), rel=1e-12)
    assert flops_full == pytest.approx(3.0 * (6 * (vision + text_forward_flops(cfg, 256)) + sim), rel=1e-12)
    assert text_forward_flops(cfg, 24) < text_forward_flops(cfg, 256) / 10


def test_bert_base_text_flops_at_256_and_at_40_tokens():
    cfg = ModelConfig()  # ViT-B/16 + BERT-base
    assert 44e9 < text_forward_flops(cfg, 256) < 48e9  # 46 of the 81 GFLOPs per pair at 256 tokens
    assert text_forward_flops(cfg, 40) < 0.15 * text_forward_flops(cfg, 256)
    assert 34e9 < vision_forward_flops(cfg) < 36e9


def _losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in open(path)]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None and shutil.which("clang") is None,
    reason="torch.compile on CPU needs a C++ compiler (none found)",
)
def test_compile_true_trains_on_cpu_and_matches_eager(tiny_config, tmp_path):
    common = {
        "max_duration": "2ba",
        "model.vision.layers": 1,
        "model.text.layers": 1,
        "model.text.dropout": 0.0,
        "data.batch_size": 4,
    }
    eager = tiny_config(loss_log=str(tmp_path / "e.jsonl"), **common)
    train(eager)
    compiled = tiny_config(loss_log=str(tmp_path / "c.jsonl"), compile="true", **common)
    trainer = train(compiled)
    blocks = [m for m in trainer.state.model.modules() if hasattr(m.forward, "_torchdynamo_orig_callable")]
    assert len(blocks) == 2  # one ViT block and one BERT layer, compiled in place (names unchanged)
    assert "model.visual.transformer.resblocks.0.attn.in_proj_weight" in dict(trainer.state.model.named_parameters())
    assert _losses(tmp_path / "c.jsonl") == pytest.approx(_losses(tmp_path / "e.jsonl"), rel=1e-4)
