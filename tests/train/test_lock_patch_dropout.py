"""Locked-tower tuning (LiT) and patch dropout: which parameters get gradients, and what FLOPs count."""

from __future__ import annotations

import pytest
import torch

from unimed.errors import UserError
from unimed.train.composer_model import UnimedCLIP, train_flops_per_sample
from unimed.train.model import CLIPModel, ModelConfig, TextConfig, VisionConfig
from unimed.train.trainer import build_optimizer


def _cfg(**vision) -> ModelConfig:
    return ModelConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, **vision),
        text=TextConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, context_length=12, dropout=0.0),
    )


def _grads(cfg: ModelConfig) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)
    cm = UnimedCLIP(CLIPModel(cfg, vocab_size=50))
    batch = {"image": torch.randn(4, 3, 32, 32), "tokens": torch.randint(1, 50, (4, 12))}
    cm.loss(cm(batch), batch).backward()
    return {n.removeprefix("model."): p.grad for n, p in cm.named_parameters()}


def test_a_locked_image_tower_gets_no_gradient_and_the_text_tower_does():
    grads = _grads(_cfg(locked=True))
    visual = {n: g for n, g in grads.items() if n.startswith("visual.")}
    assert visual and all(g is None for g in visual.values())
    text = {n: g for n, g in grads.items() if n.startswith("text.") and "key.bias" not in n}
    assert all(g is not None and float(g.abs().max()) > 0 for g in text.values())
    assert float(grads["logit_scale"].abs()) > 0


def test_the_last_blocks_of_a_locked_tower_stay_trainable(tiny_config):
    grads = _grads(_cfg(locked=True, unlocked_layers=1))
    assert grads["visual.conv1.weight"] is None and grads["visual.transformer.resblocks.0.mlp.c_fc.weight"] is None
    for name in ("visual.transformer.resblocks.1.mlp.c_fc.weight", "visual.ln_post.weight", "visual.proj"):
        assert grads[name] is not None and float(grads[name].abs().max()) > 0, name
    text_locked = ModelConfig(
        **{
            **_cfg().__dict__,
            "text": TextConfig(
                hidden_size=32,
                layers=2,
                heads=2,
                intermediate_size=64,
                context_length=12,
                locked=True,
                unlocked_layers=1,
            ),
        }
    )
    g = _grads(text_locked)
    assert (
        g["text.bert.embeddings.word_embeddings.weight"] is None
        and g["text.bert.encoder.layer.0.output.dense.weight"] is None
    )
    assert g["text.bert.encoder.layer.1.output.dense.weight"] is not None and g["text.proj.fc2.weight"] is not None
    model = CLIPModel(_cfg(locked=True), vocab_size=50)
    opt = build_optimizer(model, tiny_config())
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not any(id(p) in in_opt for p in model.visual.parameters())  # no optimizer state for frozen weights
    with pytest.raises(UserError, match="model.vision.unlocked_layers=3 must be between 0"):
        CLIPModel(_cfg(locked=True, unlocked_layers=3), vocab_size=50)


def test_locked_towers_and_patch_dropout_count_their_flops():
    from unimed.train.composer_model import vision_forward_flops

    full = train_flops_per_sample(_cfg())
    vision = vision_forward_flops(_cfg())
    # A fully locked image tower is run forward only: 1x instead of 3x.
    assert full - train_flops_per_sample(_cfg(locked=True)) == pytest.approx(2 * vision, rel=1e-12)
    one = train_flops_per_sample(_cfg(locked=True, unlocked_layers=1))
    assert train_flops_per_sample(_cfg(locked=True)) < one < full
    dropped = vision_forward_flops(_cfg(patch_dropout=0.5), train=True)
    assert full - train_flops_per_sample(_cfg(patch_dropout=0.5)) == pytest.approx(3 * (vision - dropped), rel=1e-12)
    assert dropped < 0.6 * vision  # 9 of 17 tokens through the blocks


def test_patch_dropout_keeps_a_random_share_of_patches_in_training_only():
    torch.manual_seed(0)
    model = CLIPModel(_cfg(patch_dropout=0.5), vocab_size=50)
    seen = []
    model.visual.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    image = torch.randn(3, 3, 32, 32)
    a = model.encode_image(image)
    b = model.encode_image(image)
    model.eval()
    c = model.encode_image(image)
    d = model.encode_image(image)
    assert seen == [1 + 8, 1 + 8, 1 + 16, 1 + 16]  # 16 patches; training keeps 8 (and the class token)
    assert not torch.allclose(a, b) and torch.equal(c, d)
    model.train()
    model.encode_image(image).sum().backward()
    assert model.visual.positional_embedding.grad is not None
    with pytest.raises(ValueError, match="patch_dropout"):
        CLIPModel(_cfg(patch_dropout=1.0), vocab_size=50)
