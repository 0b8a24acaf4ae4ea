"""Caption banks (data files) and label tables, including torchxrayvision's real label tables."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from unimed.errors import UserError
from unimed.ingest.captions import CaptionEngine, default_banks, load_bank
from unimed.ingest.labels import LabelTable
from unimed.schema import MODALITIES


def test_default_banks_cover_every_modality_with_five_phrasings_per_class():
    banks = default_banks()
    assert set(banks) == set(MODALITIES)
    for bank in banks.values():
        for key in ("templates", "multi", "unlabeled", "unlabeled_no_anatomy"):
            assert len(getattr(bank, key)) >= 5, (bank.modality, key)
        for cls, phrasings in bank.classes.items():
            assert len(set(phrasings)) >= 5, (bank.modality, cls)


def test_chestxray14_and_chexpert_classes_have_phrasings():
    bank = default_banks()["xray"]
    chex = [
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
        "No Finding",
    ]
    nih14 = [
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    ]
    for label in nih14 + chex:
        assert bank.resolve(label) is not None, label


def test_caption_engine_single_multi_unlabeled_and_unknown():
    eng = CaptionEngine()
    single = eng.captions("xray", ["Pneumothorax"])
    assert len(single) == 5 and sum("pneumothorax" in c.lower() for c in single) >= 4
    multi = eng.captions("xray", ["Edema", "Effusion"])
    assert all("edema and effusion" in c.lower() for c in multi)
    unknown = eng.captions("ct", ["renal cyst"])
    assert len(unknown) == 5 and all("renal cyst" in c.lower() for c in unknown)
    assert eng.unknown_classes("ct", ["renal cyst", "normal"]) == ["renal cyst"]
    anat = eng.captions("ct", [], anatomy="CHEST")
    assert all("chest" in c for c in anat)
    assert len(eng.captions("mri", [])) == 5


def test_user_bank_extends_the_shipped_one(tmp_path):
    bank = tmp_path / "ct.yaml"
    bank.write_text(
        "modality: ct\nnames: [CT]\ntemplates: ['{modality} of {label}']\nmulti: ['{modality}: {findings}']\n"
        "unlabeled: ['{modality} {anatomy}']\nunlabeled_no_anatomy: ['{modality}']\n"
        "classes:\n  hemorrhage: ['Head CT with intracranial hemorrhage.']\n"
    )
    eng = CaptionEngine([bank])
    assert eng.captions("ct", ["hemorrhage"]) == ["Head CT with intracranial hemorrhage."]
    assert eng.captions("ct", ["normal"])[0] == "A normal CT scan."  # shipped classes kept
    broken = tmp_path / "broken.yaml"
    broken.write_text("modality: ct\nnames: []\n")
    with pytest.raises(UserError, match="lacks"):
        load_bank(broken)


def _xrv_table(name: str, rows: int, dest: Path) -> Path:
    import torchxrayvision as xrv

    src = Path(xrv.__file__).parent / "data" / name
    with gzip.open(src, "rt") as fh, open(dest, "w") as out:
        for i, line in enumerate(fh):
            if i > rows:
                break
            out.write(line)
    return dest


def test_nih_label_table_from_torchxrayvision(tmp_path):
    table = LabelTable(_xrv_table("Data_Entry_2017_v2020.csv.gz", 200, tmp_path / "nih.csv"))
    with open(tmp_path / "nih.csv") as fh:
        rows = list(csv.DictReader(fh))
    multi = next(r for r in rows if "|" in r["Finding Labels"])
    hit = table.lookup(f"/anywhere/images/{multi['Image Index']}")
    assert hit is not None and hit.labels == multi["Finding Labels"].split("|")
    eng = CaptionEngine()
    assert eng.unknown_classes("xray", hit.labels) == []


def test_chexpert_one_hot_table_from_torchxrayvision(tmp_path):
    path = _xrv_table("chexpert_train.csv.gz", 50, tmp_path / "chex.csv")
    table = LabelTable(path)
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    row = next(r for r in rows if r.get("Pleural Effusion") in ("1.0", "1"))
    hit = table.lookup(str(tmp_path / row["Path"]))
    assert hit is not None and "Pleural Effusion" in hit.labels
    assert "Sex" not in hit.labels and "Age" not in hit.labels
    assert CaptionEngine().captions("xray", ["Pleural Effusion"])[0].endswith("pleural effusion.")


def test_label_table_without_a_path_column_is_a_user_error(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("name,label\na.png,x\n")
    with pytest.raises(UserError, match="no path column"):
        LabelTable(bad)


def test_a_tables_projection_column_becomes_meta_view_in_coded_values_only(tmp_path, helpers):
    """CheXpert's Frontal/Lateral (and NIH's View Position) reach ``meta.view`` as frontal or lateral; any
    other cell (free text) is not stored at all."""
    import numpy as np
    from PIL import Image

    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [("a.png", "Frontal"), ("b.png", "Lateral"), ("c.png", "PA"), ("d.png", "Smith portable")]
    for i, (name, _) in enumerate(rows):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)).save(raw / name)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Path", "Frontal/Lateral", "Edema"])
        w.writerows([(f"raw/{n}", v, "1.0") for n, v in rows])
    helpers.convert([raw], tmp_path / "out", labels=str(tmp_path / "labels.csv"), modality="xray")
    views = sorted(str(s["meta"].get("view")) for s in helpers.read(tmp_path / "out"))
    assert views == ["None", "frontal", "frontal", "lateral"]
    assert b"smith" not in helpers.written_bytes(tmp_path / "out").lower()
