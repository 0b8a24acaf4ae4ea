"""Export and import with real open_clip: round trips equal within fp32 tolerance, foreign layouts mapped with a
report or refused by name, activation and tokenizer mismatches caught, every weight file loaded weights_only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import unimed
from unimed.errors import UserError

open_clip = pytest.importorskip("open_clip")  # a test extra; the suite installs it

TEXTS = ["a chest x-ray.", "a histopathology image of stained tissue.", "an MRI scan of the knee."]


@pytest.fixture(scope="module")
def images(demo_crops) -> list[str]:
    return [str(p) for p in sorted(demo_crops().glob("*/eval-000[01].png"))]


def test_open_clip_export_loads_in_open_clip_with_equal_embeddings(trained_checkpoint, images, tmp_path):
    from unimed.cli import main

    assert main(["export", trained_checkpoint["ckpt"], "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    ours = unimed.load(trained_checkpoint["ckpt"])
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    model.eval()
    from PIL import Image

    x = torch.stack([preprocess(Image.open(p)) for p in images])
    # the same eval transform, read from preprocess_cfg: ours hands uint8 to the model, which normalizes as
    # open_clip's transform does (the exported model keeps open_clip's contract: normalized float input)
    ours_x = ours.preprocess.batch(images)
    assert ours_x.dtype == torch.uint8 and torch.equal(x, ours.preprocess.normalize(ours_x))
    assert torch.equal(ours.model.prepare_image(ours_x), x)  # normalized once, in the model
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens, torch.as_tensor(np.stack([ours.tokenizer(t) for t in TEXTS])))
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x, normalize=True), ours.encode_image(images), atol=1e-5)
        assert torch.allclose(model.encode_text(tokens, normalize=True), ours.encode_text(TEXTS), atol=1e-5)
        assert torch.allclose(model.logit_scale.exp(), ours.model.scale())
    back = unimed.load(tmp_path / "oc")  # and unimed reads its own export back exactly
    assert torch.equal(back.encode_image(images), ours.encode_image(images))
    assert back.report.missing == [] and back.report.unexpected == []


def test_hf_export_has_config_safetensors_and_tokenizer(trained_checkpoint, images, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from unimed.export import run_export

    folder = run_export(trained_checkpoint["ckpt"], "hf", str(tmp_path / "hf"))
    doc = json.loads((folder / "config.json").read_text())
    assert doc["model_type"] == "unimed-clip" and doc["unimed"]["text_config"]["max_position_embeddings"] == 64
    ours = unimed.load(trained_checkpoint["ckpt"])
    weights = load_file(str(folder / "model.safetensors"))
    assert weights.keys() == ours.model.state_dict().keys()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert tok("a chest x-ray.")["input_ids"] == [int(i) for i in ours.tokenizer("a chest x-ray.") if i != 0]
    back = unimed.load(folder)
    assert torch.equal(back.encode_image(images), ours.encode_image(images))
    assert torch.equal(back.encode_text(TEXTS), ours.encode_text(TEXTS))
    # The tokenizer files moved away: one line saying so, and --tokenizer rescues the folder.
    moved = tmp_path / "tokenizer"
    moved.mkdir()
    for f in folder.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.move(str(f), moved / f.name)
    with pytest.raises(UserError, match="no tokenizer files .*--tokenizer"):
        unimed.load(folder)
    rescued = unimed.load(folder, tokenizer=str(moved))
    assert torch.equal(rescued.encode_text(TEXTS), ours.encode_text(TEXTS))


def test_a_sharded_checkpoint_carries_its_bundle(trained_checkpoint, images, tmp_path):
    from torch.distributed.checkpoint import FileSystemWriter, save

    full = torch.load(trained_checkpoint["run_ckpt"], weights_only=False)  # ours: trusted
    sd = {
        "state": {
            "model": full["state"]["model"],
            "callbacks": full["state"]["callbacks"],
            "timestamp": full["state"]["timestamp"],
        }
    }
    save(sd, storage_writer=FileSystemWriter(str(tmp_path / "sharded")), no_dist=True)
    model = unimed.load(tmp_path / "sharded")
    assert "self-contained" in repr(model)
    assert torch.equal(model.encode_image(images), unimed.load(trained_checkpoint["ckpt"]).encode_image(images))


def _bert_dir(folder: Path, tokenizer_dir: str, hidden: int = 64, heads: int = 1) -> str:
    from transformers import BertConfig, BertModel

    from unimed.streaming.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(1)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            pad_token_id=tok.pad_token_id,
        ),
        add_pooling_layer=False,
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _open_clip_model(bert: str, timm: bool = False):
    """A real open_clip CLIP with an HF text tower (CLS pooling, MLP projection), as UniMed-CLIP/BiomedCLIP."""
    vision = (
        {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        }
        if timm
        else {"image_size": 32, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8, "mlp_ratio": 2.0}
    )
    cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": vision,
        "text_cfg": {
            "hf_model_name": bert,
            "hf_tokenizer_name": bert,
            "hf_model_pretrained": False,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 32,
        },
    }
    torch.manual_seed(2)
    model = open_clip.model.CustomTextCLIP(**{k: v for k, v in cfg.items()}).eval()
    return model, cfg


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, demo_sets):
    """An open_clip folder (config + weights + tokenizer), its bare weights, and the UniMed-CLIP release layout."""
    root = tmp_path_factory.mktemp("foreign")
    bert = _bert_dir(root / "bert", demo_sets["tokenizer"])
    model, cfg = _open_clip_model(bert)
    folder = root / "open_clip"
    folder.mkdir()
    state = model.state_dict()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    for f in Path(bert).glob("*"):
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, folder / f.name)
    bare = root / "bare" / "epoch_10.pt"
    bare.parent.mkdir()
    torch.save({"epoch": 10, "state_dict": {f"module.{k}": v for k, v in state.items()}}, bare)
    released = root / "released" / "unimed_clip.pt"
    released.parent.mkdir()
    torch.save(
        {"epoch": 10, "state_dict": {"module." + k.replace("text.", "text_encoder.", 1): v for k, v in state.items()}},
        released,
    )
    return {"model": model, "folder": folder, "bare": bare, "released": released, "bert": bert, "root": root}


def _same(ours, theirs, images: list[str]) -> None:
    x = ours.preprocess.batch(images)  # uint8: unimed's model normalizes; open_clip's takes normalized floats
    tokens = torch.as_tensor(np.stack([ours.tokenizer(t) for t in TEXTS]))
    with torch.no_grad():
        assert torch.allclose(
            ours.encode_image(x), theirs.encode_image(ours.preprocess.normalize(x), normalize=True), atol=1e-5
        )
        assert torch.allclose(ours.encode_text(TEXTS), theirs.encode_text(tokens, normalize=True), atol=1e-5)


def test_import_an_open_clip_folder_with_an_hf_text_tower(foreign, images):
    model = unimed.load(foreign["folder"])
    report = model.report
    n_vis = sum(k.startswith("visual.") for k in foreign["model"].state_dict())
    assert report.layout == "open_clip" and report.towers == {"visual": f"{n_vis}/{n_vis}", "text": "39/39"}
    assert report.missing == [] and report.unexpected == []
    assert model.model.visual.cfg.quick_gelu and model.model.visual.cfg.heads == 2
    _same(model, foreign["model"], images)


def test_import_bare_weights_and_the_unimed_clip_release_layout(foreign, images, tmp_path, capsys):
    with pytest.raises(UserError, match="carries no tokenizer"):
        unimed.load(foreign["bare"])
    bare = unimed.load(foreign["bare"], tokenizer=foreign["bert"], quick_gelu=True)
    assert any("heads 2 (width/64" in n for n in bare.report.notes)
    _same(bare, foreign["model"], images)
    released = unimed.load(foreign["released"], tokenizer=foreign["bert"])  # QuickGELU: the release's towers
    assert released.report.layout == "unimed-clip" and released.model.visual.cfg.quick_gelu
    _same(released, foreign["model"], images)
    from unimed.cli import main

    out = tmp_path / "imported"
    assert main(["import", str(foreign["released"]), "--tokenizer", foreign["bert"], "--out", str(out)]) == 0
    assert "unimed-clip layout; visual" in capsys.readouterr().out
    assert json.loads((out / "import_report.json").read_text())["missing"] == []
    _same(unimed.load(out), foreign["model"], images)


def test_gelu_and_quick_gelu_mismatches_are_refused(foreign, tmp_path):
    with pytest.raises(UserError, match="trained with QuickGELU"):
        unimed.load(foreign["folder"], quick_gelu=False)  # the folder declares quick_gelu: true
    with pytest.raises(UserError, match="trained with QuickGELU"):
        unimed.load(foreign["released"], tokenizer=foreign["bert"], quick_gelu=False)
    # A GELU open_clip checkpoint as the pretrained image tower of a QuickGELU config.
    from unimed.train.model import VisionConfig, VisionTransformer
    from unimed.train.weights import load_vision_weights

    gelu = tmp_path / "gelu"
    gelu.mkdir()
    shutil.copy(foreign["folder"] / "open_clip_pytorch_model.bin", gelu / "open_clip_pytorch_model.bin")
    doc = json.loads((foreign["folder"] / "open_clip_config.json").read_text())
    doc["model_cfg"]["quick_gelu"] = False
    (gelu / "open_clip_config.json").write_text(json.dumps(doc))
    tower = VisionTransformer(
        VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2, mlp_ratio=2.0, quick_gelu=True), 32
    )
    with pytest.raises(UserError, match="trained with GELU .* set model.vision.quick_gelu=false"):
        load_vision_weights(tower, str(gelu / "open_clip_pytorch_model.bin"))
    tower = VisionTransformer(
        VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2, mlp_ratio=2.0, quick_gelu=False), 32
    )
    assert load_vision_weights(tower, str(gelu)).missing == []  # the folder itself is accepted too


def test_biomedclip_layout_maps_its_text_tower_and_refuses_its_image_tower(tmp_path, foreign):
    from transformers import BertModel

    from unimed.cli import main

    model, _ = _open_clip_model(foreign["bert"], timm=True)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    with pytest.raises(UserError, match=r"BiomedCLIP layout: .*timm ViT .*ln_pre.*--towers text"):
        unimed.load(path, tokenizer=foreign["bert"])
    out = tmp_path / "text-tower"
    assert main(["import", str(path), "--towers", "text", "--tokenizer", foreign["bert"], "--out", str(out)]) == 0
    report = json.loads((out / "import_report.json").read_text())
    assert report["layout"] == "biomedclip" and report["towers"] == {"text": "37/37"} and report["missing"] == []
    bert = BertModel.from_pretrained(str(out), local_files_only=True, add_pooling_layer=False).eval()
    tokens = torch.randint(5, bert.config.vocab_size, (2, 12))
    with torch.no_grad():
        want = model.text.transformer(input_ids=tokens, attention_mask=torch.ones_like(tokens)).last_hidden_state
        got = bert(input_ids=tokens, attention_mask=torch.ones_like(tokens)).last_hidden_state
    assert torch.allclose(got, want, atol=1e-6)


def test_a_tokenizer_that_is_not_the_text_towers_is_refused(foreign, demo_sets, tiny_config, tmp_path):
    from unimed.streaming.tokenizer import train_tokenizer
    from unimed.train.checkpoint import tokenizer_for

    cased = train_tokenizer(
        demo_sets["train"], str(tmp_path / "cased"), vocab_size=400, context_length=32, lowercase=False
    )  # another vocabulary (and more tokens) than the demo's lower-case one
    rows = foreign["model"].text.transformer.embeddings.word_embeddings.weight.shape[0]
    with pytest.raises(UserError, match=rf"the tokenizer has 2\d\d tokens, the text tower's embedding {rows}"):
        unimed.load(foreign["released"], tokenizer=cased)
    text = _bert_dir(tmp_path / "bert-cased", cased, hidden=32, heads=2)
    cfg = tiny_config(**{"model.text.pretrained": text})
    with pytest.raises(UserError, match=r"vocabulary differs from the text tower's .* for \d+ of \d+ tokens"):
        tokenizer_for(cfg)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_foreign_checkpoint_that_runs_code_is_refused(foreign, tmp_path):
    marker = tmp_path / "ran"
    state = torch.load(foreign["released"], weights_only=True)
    state["optimizer"] = _Payload(marker)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(UserError, match="not loaded: it holds Python objects outside the checkpoint allow-list"):
        unimed.load(bad, tokenizer=foreign["bert"])
    with pytest.raises(UserError, match="not loaded"):
        from unimed.export import run_import

        run_import(str(bad), str(tmp_path / "out"), foreign["bert"], towers="text")
    assert not marker.exists()
