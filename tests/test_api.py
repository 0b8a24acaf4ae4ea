"""The Python API on a trained demo checkpoint: load, embed, classify real sample images, and one eval path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import unimed


@pytest.fixture(scope="session")
def model(trained_checkpoint):
    return unimed.load(trained_checkpoint["ckpt"])


def test_load_needs_only_the_checkpoint(trained_checkpoint, model):
    # The tokenizer, BERT and image-tower files are deleted; the bundled training config is in the checkpoint.
    assert not any(Path(p).exists() for p in trained_checkpoint["gone"])
    assert not (Path(trained_checkpoint["ckpt"]).parent / "config.yaml").exists()
    assert model.config is not None and model.config.max_duration == f"{trained_checkpoint['steps']}ba"
    bert = model.model.text.bert.config
    assert (bert.max_position_embeddings, bert.layer_norm_eps) == (64, 1e-6)  # the pretrained folder's own config
    assert model.preprocess.size == 32 and "self-contained" in repr(model)


def test_embeddings_are_unit_vectors_of_the_model_width(model, demo_crops):
    crops = sorted((demo_crops() / "pathology").glob("*.png"))[:3]
    img = model.encode_image([str(p) for p in crops])
    txt = model.encode_text(["a histopathology image.", "a chest x-ray."])
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    # Paths, PIL images and a preprocessed batch give the same embedding.
    from PIL import Image

    same = model.encode_image([Image.open(crops[0])])
    batch = model.encode_image(model.preprocess.batch([str(crops[0])]))
    assert torch.equal(same, img[:1]) and torch.equal(batch, img[:1])


def test_classify_real_images_with_the_catalog_prompts(model, demo_crops):
    crops = demo_crops()
    files = sorted(crops.glob("*/*.png"))
    truth = [p.parent.name for p in files]
    result = model.classify([str(p) for p in files], "demo-modality")
    assert result.labels == ["xray", "ct", "mri", "ultrasound", "pathology", "fundus"]
    assert result.probs.shape == (36, 6) and torch.allclose(result.probs.sum(1), torch.ones(36), atol=1e-5)
    top1 = float(np.mean([p == t for p, t in zip(result.predicted, truth)]))
    assert top1 > 1 / 6, top1  # the trained model beats chance on held-out real images (an untrained one: 1/6)
    free = model.classify([str(files[0])], ["pathology", "fundus"], modality="pathology")
    assert free.labels == ["pathology", "fundus"] and len(free.as_dicts()) == 1


def test_classify_and_eval_zeroshot_are_one_path(model, demo_sets):
    """The API on the shard's own image bytes gives exactly the figures ``unimed eval zeroshot`` reports."""
    from unimed.streaming.shards import iter_samples

    samples = list(iter_samples(demo_sets["eval"]))
    result = model.classify([s["image"] for s in samples], "demo-modality")
    truth = np.array([result.labels.index(s["modality"]) for s in samples])
    pred = result.probs.argmax(1).numpy()
    report = model.zeroshot(demo_sets["eval"])["demo-modality"]
    assert report["n"] == 36 and report["per_class_n"] == {c: 6 for c in result.labels}
    assert report["top1"] == pytest.approx(float((pred == truth).mean()), abs=1e-12)
    confusion = np.zeros((6, 6), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    assert report["confusion"] == confusion.tolist()


def test_load_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(unimed.UserError, match="does not exist"):
        unimed.load(tmp_path / "nothing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(unimed.UserError, match="not a checkpoint folder"):
        unimed.load(tmp_path / "empty")
