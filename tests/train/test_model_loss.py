"""The CLIP model, its losses, FLOPs and pretrained-weight loading (tiny towers, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unimed.errors import UserError
from unimed.train import loss as loss_registry
from unimed.train.composer_model import UnimedCLIP, forward_flops_per_sample
from unimed.train.config import load_config
from unimed.train.loss import contrastive_loss, get_loss, register_loss, registered_losses
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
    with pytest.raises(UserError, match="'nce' is not a registered loss: use one of clip, siglip"):
        contrastive_loss(x, x, torch.tensor([1.0]), kind="nce")


def _reference_siglip(img, txt, scale, bias):
    logits = scale * img @ txt.T + bias
    z = 2 * torch.eye(len(img)) - 1
    return -F.logsigmoid(z * logits).sum() / len(img)


#: The built-in losses by their plain definitions (a new built-in adds its own here).
_DEFINITIONS = {"clip": lambda i, t, s, b: _reference_clip(i, t, s), "siglip": _reference_siglip}


def _pairs(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "image": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        "tokens": torch.randint(1, 50, (n, 12), generator=g),
        "valid": torch.ones(n, dtype=torch.bool),
    }


@pytest.mark.parametrize("name", registered_losses())
def test_every_registered_loss_sends_gradients_through_the_model(name):
    """Through the training path (``UnimedCLIP.loss``): every trainable parameter gets a finite gradient,
    both towers, the scale and (where the loss takes one) the bias a non-zero one; and the gradient at the
    embeddings is the loss's own definition's."""
    torch.manual_seed(6)
    model = CLIPModel(tiny(name), vocab_size=50)
    cm = UnimedCLIP(model)
    batch = _pairs()
    img, txt, scale = cm(batch)
    img.retain_grad()
    txt.retain_grad()
    loss = cm.loss((img, txt, scale), batch)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    needs_bias = get_loss(name).needs_bias
    assert (model.logit_bias is not None) == needs_bias
    moved = [
        "visual.conv1.weight",
        "visual.proj",
        "text.bert.encoder.layer.0.attention.self.query.weight",
        "text.proj.fc2.weight",
        "logit_scale",
    ] + (["logit_bias"] if needs_bias else [])
    grads = dict(model.named_parameters())
    for pname in moved:
        assert float(grads[pname].grad.abs().max()) > 0, pname
    if name in _DEFINITIONS:
        i, t = img.detach().requires_grad_(), txt.detach().requires_grad_()
        bias = None if model.logit_bias is None else model.logit_bias.detach()
        want = _DEFINITIONS[name](i, t, scale.detach(), bias)
        want.backward()
        assert float(loss) == pytest.approx(float(want), rel=1e-5)
        torch.testing.assert_close(img.grad, i.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(txt.grad, t.grad, rtol=1e-4, atol=1e-6)


@pytest.fixture
def registry(monkeypatch):
    """The loss registry as it is, restored after the test: a toy loss registered in a test stays there."""
    monkeypatch.setattr(loss_registry, "_REGISTRY", dict(loss_registry._REGISTRY))


@pytest.mark.parametrize("needs_bias", [False, True])
def test_a_registered_toy_loss_is_accepted_by_the_config_and_builds_its_model(registry, needs_bias):
    @register_loss("toy", needs_bias=needs_bias, init_bias=-3.0)
    def toy(image, text, scale, bias, impl):  # image-to-text cross-entropy only
        logits = scale * image @ text.T + (0.0 if bias is None else bias)
        return F.cross_entropy(logits, torch.arange(len(image)))

    assert load_config("demo-cpu", ["model.loss=toy"]).model.loss == "toy"
    model = CLIPModel(tiny("toy"), vocab_size=50)
    if needs_bias:
        assert model.logit_bias.shape == (1,) and float(model.logit_bias) == -3.0
    else:
        assert model.logit_bias is None
    cm = UnimedCLIP(model)
    batch = _pairs()
    cm.loss(cm(batch), batch).backward()
    assert float(model.visual.conv1.weight.grad.abs().max()) > 0
    assert needs_bias == (model.logit_bias is not None and float(model.logit_bias.grad.abs()) > 0)


def test_an_unknown_loss_is_one_line_listing_the_registered_ones(registry):
    register_loss("toy")(lambda image, text, scale, bias, impl: (image * text).sum())
    with pytest.raises(UserError) as err:
        load_config("demo-cpu", ["model.loss=nce"])
    msg = str(err.value)
    assert "\n" not in msg and "model.loss 'nce' is not a registered loss: use one of clip, siglip, toy" in msg
    with pytest.raises(UserError, match="one of clip, siglip, toy"):
        CLIPModel(tiny("nce"), vocab_size=50)
    with pytest.warns(UserWarning, match="registered twice"):
        register_loss("toy")(lambda image, text, scale, bias, impl: (image * text).sum())


def test_composer_model_loss_and_flops():
    torch.manual_seed(3)
    cm = UnimedCLIP(CLIPModel(tiny(), vocab_size=50))
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "tokens": torch.randint(1, 50, (4, 12)),
        "valid": torch.tensor([True, True, False, True]),
    }
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
