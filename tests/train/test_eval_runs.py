"""``unimed eval zeroshot|retrieval|linear-probe`` on the demo's real shards with the checkpoint alone:
one Markdown table and one JSON each, figures with n per class, recall checked against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unimed.cli import main


def _run(argv: list[str], out: Path, kind: str) -> tuple[dict, str]:
    assert main([*argv, "--out", str(out)]) == 0
    return json.loads((out / f"{kind}.json").read_text()), (out / f"{kind}.md").read_text()


def test_eval_zeroshot_writes_one_table_and_one_json(trained_checkpoint, demo_sets, tmp_path):
    data, table = _run(
        ["eval", "zeroshot", "--checkpoint", trained_checkpoint["ckpt"], "--data", demo_sets["eval_root"]],
        tmp_path,
        "zeroshot",
    )
    r = data["demo-modality"]
    assert r["n"] == 36 and r["per_class_n"] == {
        m: 6 for m in ("xray", "ct", "mri", "ultrasound", "pathology", "fundus")
    }
    assert r["top1"] == pytest.approx(sum(r["confusion"][i][i] for i in range(6)) / 36)
    assert (
        "xray 6, ct 6, mri 6, ultrasound 6, pathology 6, fundus 6" in table
        and sum(line.startswith("| --- ") for line in table.splitlines()) == 1
    )


def test_eval_retrieval_equals_brute_force_recall(trained_checkpoint, demo_sets, tmp_path):
    import unimed
    from unimed.streaming.shards import iter_samples

    data, table = _run(
        ["eval", "retrieval", "--checkpoint", trained_checkpoint["ckpt"], "--data", demo_sets["train"]],
        tmp_path,
        "retrieval",
    )
    r = data["train-shards"]
    samples = [s for s in iter_samples(demo_sets["train"]) if s["captions"]]
    texts = sorted({c for s in samples for c in s["captions"]})
    assert r["n_images"] == len(samples) == 96 and r["n_distinct_captions"] == len(texts)
    model = unimed.load(trained_checkpoint["ckpt"])
    img = model.encode_image([s["image"] for s in samples])
    txt = model.encode_text(texts)
    sim = img @ txt.T
    owner = torch.zeros(len(samples), len(texts), dtype=torch.bool)
    for i, s in enumerate(samples):
        for c in s["captions"]:
            owner[i, texts.index(c)] = True
    for k in (1, 5, 10):
        top = sim.topk(k, dim=1).indices  # image -> text: any own caption among the k best texts
        i2t = owner.gather(1, top).any(1).double().mean().item()
        topi = sim.T.topk(k, dim=1).indices  # text -> image: any image carrying the text among the k best
        t2i = owner.T.gather(1, topi).any(1).double().mean().item()
        assert r[f"image_to_text/R@{k}"] == pytest.approx(i2t, abs=1e-9), k
        assert r[f"text_to_image/R@{k}"] == pytest.approx(t2i, abs=1e-9), k
    assert r["image_to_text/R@1"] <= r["image_to_text/R@5"] <= r["image_to_text/R@10"]
    assert "| train-shards | 96 |" in table


def test_eval_linear_probe_on_the_training_crops_tested_on_held_out_ones(trained_checkpoint, demo_sets, tmp_path):
    data, table = _run(
        [
            "eval",
            "linear-probe",
            "--checkpoint",
            trained_checkpoint["ckpt"],
            "--data",
            demo_sets["train"],
            "--test",
            demo_sets["eval"],
            "--set",
            "demo-modality",
        ],
        tmp_path,
        "linear_probe",
    )
    r = data["demo-modality"]
    assert r["train_per_class_n"] == {m: 16 for m in r["per_class_n"]} and set(r["per_class_n"].values()) == {6}
    assert r["n"] == 36 and r["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0) and r["features"] == 32
    assert r["top1"] > 1 / 3, r["top1"]  # frozen features separate the six modalities well above chance (1/6)
    assert "| demo-modality | 36 |" in table and "xray 16/6" in table


def test_linear_probe_without_a_test_folder_splits_by_patient(trained_checkpoint, demo_sets):
    import unimed
    from unimed.train.catalog import load_catalog
    from unimed.train.probe import group_split, linear_probe
    from unimed.train.targets import collect_targets

    model = unimed.load(trained_checkpoint["ckpt"])
    spec = load_catalog()["demo-modality"]
    r = linear_probe(model.model, demo_sets["train"], spec, model.preprocess, seed=1)
    targets = collect_targets(demo_sets["train"], spec)
    is_test = group_split(targets.groups, 0.2, "probe-test-1")
    assert r["n"] == int(is_test.sum()) and sum(r["train_per_class_n"].values()) == int((~is_test).sum())
    test_groups = {g for g, t in zip(targets.groups, is_test) if t}
    assert not test_groups & {g for g, t in zip(targets.groups, is_test) if not t}  # no patient on both sides
