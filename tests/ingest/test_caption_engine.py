"""The caption engine: findings banks, anatomy, negatives, generated banks, and ``ingest captions``."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from unimed.ingest.captions import CaptionEngine, default_banks
from unimed.ingest.cli import main
from unimed.ingest.labels import LabelTable

#: Class names of the reference system's 21 zero-shot sets that are findings (REFERENCE.md), by modality.
EVAL_CLASSES = {
    "xray": ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion", "normal", "pneumonia"],
    "fundus": [
        "no DR",
        "mild",
        "moderate",
        "severe",
        "proliferative",
        "glaucoma",
        "no glaucoma",
        "age-related macular degeneration",
        "diabetic retinopathy",
        "normal",
        "pathologic myopia",
        "cataract",
    ],
    "ct": [
        "heart",
        "left lung",
        "right lung",
        "liver",
        "spleen",
        "pancreas",
        "left kidney",
        "right kidney",
        "bladder",
        "left femoral head",
        "right femoral head",
    ],
    "mri": ["acl tear", "meniscus tear"],
    "ultrasound": ["benign", "malignant", "breast/benign", "thyroid/malignant"],
    "pathology": [
        "lung adenocarcinoma",
        "benign lung",
        "lung squamous cell carcinoma",
        "colon adenocarcinoma",
        "benign colonic tissue",
        "lymph node",
        "lymph node with metastatic tumour",
        "adipose",
        "debris",
        "lymphocytes",
        "mucus",
        "smooth muscle",
        "normal colon mucosa",
        "stroma",
        "tumour epithelium",
        "benign",
        "in-situ carcinoma",
        "invasive carcinoma",
        "normal",
        "non-tumour",
        "necrotic",
        "tumour",
        "necrosis",
        "skeletal muscle",
        "sweat glands",
        "vessels",
        "elastosis",
        "chondral tissue",
        "hair follicle",
        "epidermis",
        "nerves",
        "subcutis",
        "dermis",
        "sebaceous glands",
        "squamous cell carcinoma",
        "melanoma",
        "basal cell carcinoma",
        "naevus",
    ],
}


@pytest.mark.parametrize("modality", sorted(EVAL_CLASSES))
def test_evaluation_classes_have_bank_entries_and_five_phrasings(modality):
    eng = CaptionEngine()
    assert eng.unknown_classes(modality, EVAL_CLASSES[modality]) == []
    for label in EVAL_CLASSES[modality]:
        assert len(eng.captions(modality, [label])) >= 5, label


def test_every_finding_names_modality_anatomy_and_finding():
    eng = CaptionEngine()
    for modality, bank in default_banks().items():
        for name, finding in bank.findings.items():
            caps = eng.captions(modality, [name])
            assert len(caps) >= 5 and all("{" not in c for c in caps), (modality, name)
            assert all(any(s.lower() in c.lower() for s in finding.say) for c in caps), (modality, name)
            if finding.anatomy:
                assert all(finding.anatomy in c.lower() for c in caps), (modality, name)


def test_radimagenet_style_anatomy_labels():
    caps = CaptionEngine().captions("mri", ["knee/acl_pathology"])
    assert all("knee" in c.lower() for c in caps)
    assert CaptionEngine().unknown_classes("mri", ["MR/shoulder/supraspinatus_pathology", "knee/zzz"]) == ["knee/zzz"]


def test_negative_findings_are_phrased_as_absent():
    eng = CaptionEngine()
    caps = eng.captions("xray", ["Cardiomegaly", "-Pneumothorax", "-Pleural Effusion"])
    assert len(caps) == 5
    assert caps[0].startswith("A chest X-ray showing cardiomegaly.")
    assert all("pneumothorax or pleural effusion" in c.lower() for c in caps)
    only = eng.captions("xray", ["-Edema"])
    assert len(only) == 5 and all(
        "edema" in c and ("no " in c.lower() or "without" in c or "negative" in c) for c in only
    )
    assert all("glaucoma" in c for c in eng.captions("fundus", ["no glaucoma"]))


def test_chexpert_explicit_negatives_become_negative_labels(tmp_path):
    import torchxrayvision as xrv

    src = Path(xrv.__file__).parent / "data" / "chexpert_train.csv.gz"
    dest = tmp_path / "chex.csv"
    with gzip.open(src, "rt") as fh, open(dest, "w") as out:
        out.writelines(line for i, line in zip(range(200), fh))
    table = LabelTable(dest)
    negs = [look for look in table.entries if any(lab.startswith("-") for lab in look.labels)]
    assert negs and not any("-No Finding" in look.labels for look in table.entries)
    eng = CaptionEngine()
    for look in negs[:20]:
        assert eng.unknown_classes("xray", look.labels) == []
        assert len(eng.captions("xray", look.labels)) == 5


def test_generated_bank_is_just_a_data_file(tmp_path):
    bank = tmp_path / "llm_fundus.yaml"  # partial: modality and classes, e.g. written offline by an LLM
    phrasings = [f"Fundus photograph {i}: moderate non-proliferative diabetic retinopathy." for i in range(15)]
    bank.write_text(
        "modality: fundus\nclasses:\n  moderate diabetic retinopathy:\n" + "".join(f'    - "{p}"\n' for p in phrasings)
    )
    eng = CaptionEngine([bank])
    assert eng.captions("fundus", ["2"]) == phrasings
    assert len(eng.captions("fundus", ["glaucoma"])) == 5  # shipped entries kept


def test_ingest_captions_previews_and_reports_unknown_classes(tmp_path, capsys):
    table = tmp_path / "labels.csv"
    table.write_text("path,labels\na.png,Cardiomegaly|Edema\nb.png,Cardiomegaly|Edema\nc.png,Zebra sign\n")
    assert main(["captions", "--labels", str(table), "--modality", "xray"]) == 0
    out = capsys.readouterr().out
    assert "Cardiomegaly | Edema  (2 rows)" in out and "cardiomegaly and edema" in out
    assert "no bank entry in xray" in out and "Zebra sign (1 rows)" in out
    assert main(["captions", "--labels", str(table)]) == 2  # no modality anywhere: a user error
