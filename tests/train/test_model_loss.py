"""The CLIP model, its losses, FLOPs and pretrained-weight loading (tiny towers, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unimed.train.composer_model import UnimedCLIP, forward_flops_per_sample
from unimed.train.loss import contrastive_loss
from unimed.train.model import CLIPModel, ModelConfig, TextConfig, VisionConfig, VisionTransformer
from unimed.train.weights import load_text_weights, load_vision_weights


def tiny(loss: str = "clip", size: int = 32) -> ModelConfig:
    return ModelConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=size, patch_size=8, width=32, layers=2, heads=2),
        text=TextConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, context_length=12),
        loss=loss,
    )


def test_forward_shapes_scale_and_grad():
    torch.manual_seed(0)
    model = CLIPModel(tiny(), vocab_size=50)
    assert model.logit_scale.shape == (1,)  # FSDP2 refuses 0-d parameters
    img, txt, scale = model(torch.randn(3, 3, 32, 32), torch.randint(1, 50, (3, 12)))
    assert img.shape == txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert math.isclose(float(scale), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert float(model.scale()) == pytest.approx(1000.0)  # no clamp in forward: the step clamps the parameter
    model.clamp_logit_scale_()
    assert float(model.scale()) == pytest.approx(100.0) and float(model.logit_scale) == pytest.approx(math.log(100))
    only_img, none_txt, _ = model(torch.randn(2, 3, 32, 32))
    assert only_img.shape == (2, 16) and none_txt is None


def _reference_clip(img, txt, scale):
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_clip_loss_matches_the_definition_and_backpropagates():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor([10.0])
    got = contrastive_loss(img, txt, scale)
    assert torch.allclose(got, _reference_clip(img, txt, 10.0), atol=1e-5)
    got.backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()


def test_siglip_loss_runs_and_prefers_aligned_pairs():
    torch.manual_seed(2)
    x = F.normalize(torch.randn(5, 8), dim=-1)
    aligned = contrastive_loss(x, x, torch.tensor([10.0]), kind="siglip", logit_bias=torch.tensor([-5.0]))
    shuffled = contrastive_loss(x, x.roll(1, 0), torch.tensor([10.0]), kind="siglip", logit_bias=torch.tensor([-5.0]))
    assert float(aligned) < float(shuffled)
    with pytest.raises(ValueError, match="loss must be one of"):
        contrastive_loss(x, x, torch.tensor([1.0]), kind="nce")


def test_composer_model_loss_and_flops():
    torch.manual_seed(3)
    cm = UnimedCLIP(CLIPModel(tiny(), vocab_size=50))
    batch = {"image": torch.randn(4, 3, 32, 32), "tokens": torch.randint(1, 50, (4, 12)),
             "valid": torch.tensor([True, True, False, True])}
    loss = cm.loss(cm(batch), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    f4 = cm.flops_per_batch(batch)
    assert f4 > 3 * 4 * forward_flops_per_sample(cm.model.cfg) * 0.99
    # ViT-B/16 at 224 is 17.6 GMACs (35 GFLOPs); BERT-base at 256 tokens about 46 GFLOPs.
    assert 75e9 < forward_flops_per_sample(ModelConfig()) < 85e9


def test_vision_weights_from_an_open_clip_style_file(tmp_path):
    torch.manual_seed(4)
    src = VisionTransformer(tiny().vision, 16)
    state = {f"visual.{k}": v for k, v in src.state_dict().items()}
    state["visual.extra_head.weight"] = torch.zeros(2)  # unexpected key, reported
    state["logit_scale"] = torch.ones(())  # not a visual key: ignored
    path = tmp_path / "openclip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    dst = VisionTransformer(tiny().vision, 16)
    report = load_vision_weights(dst, str(path))
    assert report.unexpected == ["extra_head.weight"] and report.missing == []
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    bigger = VisionTransformer(tiny(size=48).vision, 16)  # 4x4 grid -> 6x6: positions resized
    load_vision_weights(bigger, str(path))
    assert torch.equal(bigger.positional_embedding[0], src.positional_embedding[0])


def test_text_weights_from_a_local_folder(tmp_path):
    torch.manual_seed(5)
    a = CLIPModel(tiny(), vocab_size=50)
    a.text.bert.save_pretrained(tmp_path / "bert")
    b = CLIPModel(tiny(), vocab_size=50)
    report = load_text_weights(b.text, str(tmp_path / "bert"))
    assert report.missing == [] and report.loaded > 0
    w = "embeddings.word_embeddings.weight"
    assert torch.equal(b.text.bert.state_dict()[w], a.text.bert.state_dict()[w])
