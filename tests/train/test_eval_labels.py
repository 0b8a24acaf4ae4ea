"""No sample is dropped silently: real release folder names resolve, unknown ones are refused with counts,
exclusions are counted, and multi-label sets get per-finding AUC (CheXpert's real label table)."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from unimed.errors import UserError
from unimed.train.catalog import load_catalog
from unimed.train.targets import collect_targets
from unimed.train.zeroshot import multilabel_metrics

CATALOG = load_catalog()


@pytest.fixture(scope="module")
def pathology(demo_crops) -> list[Path]:
    """Real histopathology crops (scikit-image's IHC slide), training and held-out."""
    return sorted((demo_crops("train") / "pathology").glob("*.png")) + sorted(
        (demo_crops("eval") / "pathology").glob("*.png")
    )


@pytest.mark.parametrize(
    "name, label, expected",
    [
        ("bach", "Normal", "normal"),
        ("bach", "Benign", "benign"),
        ("bach", "InSitu", "in situ carcinoma"),
        ("bach", "Invasive", "invasive carcinoma"),
        ("osteosarcoma", "Non-Tumor", "non-tumour"),
        ("osteosarcoma", "Non-Viable-Tumor", "necrotic tumour"),
        ("osteosarcoma", "Viable", "viable tumour"),
        ("pcam", "0", "lymph node"),
        ("pcam", "1", "lymph node with metastatic tumour"),
        ("pcam", "lymph node with metastatic tumor", "lymph node with metastatic tumour"),
        ("skin-tumour", "nevus", "naevus"),
        ("skin-tumour", "tumor_skin_epithelial_bcc", "basal cell carcinoma"),
        ("skin-cancer", "nontumor_skin_sebaceousglands_sebaceousglands", "sebaceous glands"),
        ("nct-crc-he", "TUM", "colorectal adenocarcinoma epithelium"),
        ("lc25000-lung", "lung_scc", "lung squamous cell carcinoma"),
        ("ct-organ-axial", "10", "spleen"),
        ("ct-organ-coronal", "femur-left", "left femoral head"),
        ("diabetic-retinopathy", "Proliferate_DR", "proliferative diabetic retinopathy"),
        ("diabetic-retinopathy", "No_DR", "no diabetic retinopathy"),
        ("refuge", "Non-Glaucoma", "no glaucoma"),
        ("fives", "A", "age-related macular degeneration"),
        ("odir-200x3", "M", "pathologic myopia"),
        ("rsna-pneumonia", "Lung Opacity", "pneumonia"),
        ("mri-acl", "1", "yes"),
        ("us-thyroid", "0", "benign"),
        ("chexpert-5x200", "Pleural Effusion", "pleural effusion"),
        ("nih-chestxray14", "Pleural_Thickening", "pleural thickening"),
    ],
)
def test_release_label_names_resolve_to_their_class(name, label, expected):
    spec = CATALOG[name]
    assert spec.classes[spec.class_index(label)] == expected


@pytest.mark.parametrize(
    "name, label",
    [
        ("us-breast", "normal"),
        ("nct-crc-he", "BACK"),
        ("osteosarcoma", "Viable: Non-Viable"),
        ("lc25000-colon", "lung_aca"),
        ("rsna-pneumonia", "No Lung Opacity / Not Normal"),
    ],
)
def test_release_labels_outside_a_set_are_excluded_by_name(name, label):
    assert CATALOG[name].resolve(label).kind == "exclude"


def test_every_alias_reaches_its_own_class():
    for spec in CATALOG.values():
        for alias, target in spec.aliases.items():
            assert spec.class_index(alias) == spec.class_index(target), (spec.name, alias)
        for i, c in enumerate(spec.classes):
            assert spec.class_index(c) == i, (spec.name, c)  # no class shadowed by another's alias


def test_bach_with_its_real_folder_names_keeps_all_four_classes(
    tmp_path, pathology, class_folder_set, trained_checkpoint
):
    import unimed

    layout = {"Normal": pathology[0:3], "Benign": pathology[3:6], "InSitu": pathology[6:9], "Invasive": pathology[9:12]}
    folder = class_folder_set(tmp_path, layout, "bach")
    targets = collect_targets(folder, CATALOG["bach"])
    assert targets.per_class_n() == {"benign": 3, "in situ carcinoma": 3, "invasive carcinoma": 3, "normal": 3}
    result = unimed.load(trained_checkpoint["ckpt"]).zeroshot(folder)["bach"]
    assert result["n"] == 12 and result["left_out"] == {}
    assert sum(sum(row) for row in result["confusion"]) == 12


def test_unknown_labels_are_refused_with_their_counts_before_the_model_loads(
    tmp_path, pathology, class_folder_set, capsys
):
    from unimed.cli import main

    layout = {"Normal": pathology[0:2], "Benign": pathology[2:4], "Benign2": pathology[4:7], "InSitu": pathology[7:8]}
    folder = class_folder_set(tmp_path / "eval", layout, "bach")
    with pytest.raises(UserError) as err:
        collect_targets(folder, CATALOG["bach"])
    message = str(err.value)
    assert "'Benign2': 3" in message and folder in message and "\n" not in message
    # The CLI says the same in one line, before it reads the checkpoint (which does not even exist here).
    capsys.readouterr()
    rc = main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "no-such.pt"), "--data", str(tmp_path / "eval")])
    err_text = capsys.readouterr().err
    assert rc == 2 and "'Benign2': 3" in err_text and err_text.count("\n") == 1


def test_exclusions_and_the_release_spellings_are_counted(tmp_path, pathology, class_folder_set):
    root = tmp_path / "sets"
    osteo = class_folder_set(
        root,
        {
            "Non-Tumor": pathology[0:2],
            "Non-Viable-Tumor": pathology[2:5],
            "Viable": pathology[5:6],
            "Viable: Non-Viable": pathology[6:10],
        },
        "osteosarcoma",
    )
    t = collect_targets(osteo, CATALOG["osteosarcoma"])
    assert t.per_class_n() == {"non-tumour": 2, "necrotic tumour": 3, "viable tumour": 1}
    assert t.left_out == {"excluded label 'Viable: Non-Viable'": 4} and t.total == 10
    skin = class_folder_set(
        root,
        {
            "tumor_skin_melanoma_melanoma": pathology[0:2],
            "nevus": pathology[2:4],
            "nontumor_skin_dermis_dermis": pathology[4:5],
        },
        "skin-tumour",
    )
    t = collect_targets(skin, CATALOG["skin-tumour"])
    assert t.per_class_n() == {"squamous cell carcinoma": 0, "melanoma": 2, "basal cell carcinoma": 0, "naevus": 2}
    assert t.left_out == {"excluded label 'nontumor_skin_dermis_dermis'": 1}


def _chexpert_tree(root: Path, xray: list[Path], rows: int) -> list[dict[str, str]]:
    """The first ``rows`` rows of CheXpert's real training table (torchxrayvision), each row's image a real
    radiograph crop stored at the row's own path; returns the rows."""
    import torchxrayvision as xrv
    from PIL import Image

    with gzip.open(Path(xrv.__file__).parent / "data" / "chexpert_train.csv.gz", "rt") as fh:
        reader = csv.DictReader(fh)
        table = [next(reader) for _ in range(rows)]
    for i, row in enumerate(table):
        dest = root / row["Path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(xray[i % len(xray)]).convert("L").save(dest, quality=95)
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return table


FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory, demo_crops, ingest_convert) -> tuple[str, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("chexpert")
    xray = sorted(demo_crops("train").glob("xray/*.png"))
    table = _chexpert_tree(root / "raw", xray, 80)
    ingest_convert(
        [
            str(root / "raw" / "CheXpert-v1.0-small"),
            "--out",
            str(root / "chexpert"),
            "--labels",
            str(root / "raw" / "train.csv"),
            "--modality",
            "xray",
            "--source",
            "chexpert",
        ]
    )
    return str(root / "chexpert"), table


def test_chexpert_5x200_selects_one_positive_of_five_from_the_real_table(chexpert):
    folder, table = chexpert
    spec = dataclasses.replace(CATALOG["chexpert-5x200"], per_class=4)  # the protocol's 200, scaled to 80 rows
    t = collect_targets(folder, spec)
    one = Counter()
    none = several = 0
    lateral = sum(row["Frontal/Lateral"] == "Lateral" for row in table)
    assert 0 < lateral < len(table)  # the real table's first rows hold both projections
    for row in table:
        if row["Frontal/Lateral"] == "Lateral":  # the protocol takes frontal images only
            continue
        pos = [c for c in FIVE if row[c] in ("1.0", "1")]
        if len(pos) == 1:
            one[pos[0].lower()] += 1
        none += not pos
        several += len(pos) > 1
    kept = {c.lower(): min(n, 4) for c, n in ((c, one[c.lower()]) for c in FIVE)}
    assert t.per_class_n() == kept
    beyond = sum(one.values()) - sum(kept.values())
    expected = {
        "lateral view (the set takes frontal images)": lateral,
        "none of the classes positive": none,
        "several of the classes positive": several,
        "beyond 4 per class": beyond,
    }
    assert t.left_out == {k: v for k, v in expected.items() if v}
    assert t.total == len(table) == len(t.positions) + sum(t.left_out.values())


def test_chexpert_multilabel_scores_each_finding_on_its_stated_rows(chexpert, trained_checkpoint):
    import unimed

    folder, table = chexpert
    # The folder's name picks the catalog entry.
    result = unimed.load(trained_checkpoint["ckpt"]).zeroshot(folder, sets=None)
    r = result["chexpert"]
    assert r["task"] == "multilabel" and r["n"] == len(table) and "top1" not in r
    for c in FIVE:
        f = r["per_finding"][c.lower()]
        assert f["n_pos"] == sum(row[c] in ("1.0", "1") for row in table), c
        assert f["n_neg"] == sum(row[c] in ("0.0", "0") for row in table), c
        assert f["n_pos"] + f["n_neg"] + f["n_unmentioned"] == len(table)
    aucs = [f["auc"] for f in r["per_finding"].values() if f["auc"] == f["auc"]]
    assert r["mean_auc"] == pytest.approx(np.mean(aucs)) and r["findings_scored"] == len(aucs) > 0
    from unimed.train.evaluate import render_markdown

    assert "| CheXpert (5 findings) (multi-label) | 5 | 80 | – | mean" in render_markdown(result)
    json.dumps(result)  # serializable as written by --out


def test_multilabel_auc_equals_scikit_learn_on_the_stated_rows():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    target = rng.choice([-1, 0, 1], size=(200, 3), p=[0.3, 0.5, 0.2]).astype(np.int8)
    scores = rng.random((200, 3))
    scores[:50] = np.round(scores[:50], 1)  # ties
    m = multilabel_metrics(scores, target, ["a", "b", "c"])
    for i, c in enumerate("abc"):
        stated = target[:, i] >= 0
        assert m["per_finding"][c]["auc"] == pytest.approx(roc_auc_score(target[stated, i], scores[stated, i]))
        assert m["per_finding"][c]["n_unmentioned"] == int((~stated).sum())
