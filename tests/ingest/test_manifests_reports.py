"""Image-text manifests (CSV, JSONL, Parquet; DICOM images inside) and report cleaning / PHI scrubbing.

Real reports: the Indiana University chest X-ray reports shipped in torchxrayvision (OpenI XML).
"""

from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unimed.ingest.reports import clean_text, report_captions, scrub, split_sections
from unimed.samples import pydicom_data_dir, pydicom_dir


def _png(path: Path, seed: int, rgb: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    shape = (64, 80, 3) if rgb else (64, 80)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def nlm_reports(n: int) -> list[dict[str, str]]:
    """The first ``n`` OpenI reports in torchxrayvision's NLMCXR_reports.tgz, as section dicts."""
    import torchxrayvision as xrv

    out = []
    with tarfile.open(Path(xrv.__file__).parent / "data" / "NLMCXR_reports.tgz") as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            sections = {a.get("Label"): (a.text or "") for a in root.iter("AbstractText")}
            if sections.get("FINDINGS") and sections.get("IMPRESSION"):
                out.append(sections)
            if len(out) >= n:
                break
    return out


# ----------------------------------------------------------------------------- reports


def test_real_openi_reports_keep_findings_and_impression_only():
    reps = nlm_reports(60)
    assert len(reps) == 60
    for sec in reps:
        text = "\n".join(f"{k}: {v}" for k, v in sec.items())  # INDICATION, COMPARISON, ... too
        caps = report_captions(text)
        assert caps, text
        assert all("XXXX" not in c and "INDICATION" not in c and "COMPARISON" not in c for c in caps)
        whole = caps[0]
        first = re.split(r"(?<=\.)\s", sec["FINDINGS"])[0].strip()
        if "XXXX" not in first:
            assert first.rstrip(".") in whole
        if sec.get("INDICATION") and len(sec["INDICATION"]) > 25 and sec["INDICATION"] not in sec["FINDINGS"]:
            assert sec["INDICATION"] not in whole


def test_openi_placeholders_drop_their_sentence_and_fix_x_ray():
    caps = report_captions(
        "FINDINGS: Heart size normal. There are no XXXX of a pleural effusion. IMPRESSION: Normal chest x-XXXX."
    )
    assert caps[0] == "Heart size normal. Normal chest x-ray."


def test_sections_and_template_noise():
    text = (
        "FINAL REPORT\nEXAMINATION: CHEST (PA AND LAT)\nINDICATION: ___F with cough\n"
        "FINDINGS:   Lungs are clear.\n\n  No effusion.\nIMPRESSION: No acute process.\n"
        "I have personally reviewed the images for this examination.\n"
        "Electronically signed by: Jones, Mary on 2020-01-02"
    )
    sections = split_sections(text)
    assert {"EXAMINATION", "INDICATION", "FINDINGS", "IMPRESSION"} <= set(sections)
    assert report_captions(text) == [
        "Lungs are clear. No effusion. No acute process.",
        "Lungs are clear. No effusion.",
        "No acute process.",
    ]
    assert report_captions("Small left pleural effusion.") == ["Small left pleural effusion."]
    assert report_captions("FINDINGS: XXXX XXXX. IMPRESSION: ___") == []


PLANTED = [
    ("Findings discussed with Dr. Gregory Houseman at 10:30 AM.", ["Gregory", "Houseman", "10:30"]),
    ("Called to nurse Kelly Brightwater, pager 555-123-4567.", ["Kelly", "Brightwater", "555-123-4567"]),
    ("Patient name: Jane Quinlan-Doe. MRN: 12345678. Accession # A1234567.", ["Quinlan", "12345678", "A1234567"]),
    (
        "Compared with the study of 03/14/2021, 2019-02-01, March 3rd, 2018 and 5 Jan 2017.",
        ["03/14/2021", "2019-02-01", "March 3rd", "2018", "Jan 2017"],
    ),
    ("A 93-year-old man, aged 95; age: 101. The 45 year old sister.", ["93", "95", "101"]),
    ("Seen at Springfield General Hospital, 1234 Evergreen Terrace Road.", ["Springfield", "Evergreen"]),
    (
        "Contact mary.jones@example.org or (555) 987-6543 ext 12; SSN 123-45-6789.",
        ["mary.jones", "987-6543", "123-45-6789"],
    ),
    ("Electronically signed by: Robert Paulson, MD", ["Robert", "Paulson"]),
    ("Mr. Brown was informed. Ms. Li agreed.", ["Brown", "Li "]),
]


@pytest.mark.parametrize("text,phi", PLANTED)
def test_planted_phi_is_removed(text, phi):
    out = clean_text(text)
    for p in phi:
        assert p not in out, (p, out)


def test_scrubber_keeps_clinical_content():
    text = (
        "A 45 year old woman. 5 mm nodule at T12-L1 in the right upper lobe. "
        "Heart size is normal, cardiothoracic ratio 0.5. Patient is rotated. PA and lateral views."
    )
    assert scrub(text) == text


# ----------------------------------------------------------------------------- manifests


def test_csv_jsonl_manifests_with_captions_reports_and_labels(tmp_path, helpers):
    data = tmp_path / "pmc"
    a, b, c = (_png(data / "images" / f"{k}.png", i, rgb=True) for i, k in enumerate("abc"))
    with open(data / "pmc.csv", "w") as fh:
        fh.write("image,caption,modality\n")
        fh.write('images/a.png,"CT of the abdomen, seen 03/14/2021 by Dr. Houseman.",CT\n')
        fh.write("images/a.png,Axial contrast CT of the liver.,ct\n")  # same image: one sample, two captions
        fh.write("images/b.png,Chest radiograph with a right pleural effusion.,X-ray\n")
        fh.write("images/missing.png,A caption for a missing image.,ct\n")
    with open(data / "reports.jsonl", "w") as fh:
        fh.write(
            json.dumps(
                {
                    "image": str(c),
                    "report": "FINDINGS: Small effusion. IMPRESSION: Effusion.",
                    "labels": ["Effusion"],
                    "modality": "xray",
                }
            )
            + "\n"
        )
    summary = helpers.convert([data], tmp_path / "out")  # the folder: manifests and the images they list
    samples = {tuple(s["captions"][:1]): s for s in helpers.read(tmp_path / "out")}
    assert summary["images"] == 3 and summary["modality"] == {"ct": 1, "xray": 2}
    a_s = samples[("CT of the abdomen, seen ___ by ___.",)]
    assert a_s["captions"] == ["CT of the abdomen, seen ___ by ___.", "Axial contrast CT of the liver."]
    assert a_s["source"] == "local" and a_s["labels"] == []  # never the folder name
    c_s = samples[("Small effusion. Effusion.",)]
    assert c_s["labels"] == ["Effusion"] and len(c_s["captions"]) > 3  # report first, then label captions
    rj = helpers.rejects(tmp_path / "out")
    assert len(rj) == 1 and rj[0]["path"].endswith("missing.png") and "not found" in rj[0]["reason"]


def test_parquet_manifest_with_sectioned_report_columns(tmp_path, helpers):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    _png(tmp_path / "cxr" / "s1.png", 1)
    table = pa.table(
        {
            "image": ["s1.png"],
            "findings": ["No effusion. Called Dr. Kim at 10:15."],
            "impression": ["Normal."],
            "modality": ["xray"],
        }
    )
    pq.write_table(table, tmp_path / "cxr" / "mimic.parquet")
    helpers.convert([tmp_path / "cxr" / "mimic.parquet"], tmp_path / "out")
    (s,) = helpers.read(tmp_path / "out")
    assert s["captions"][0] == "No effusion. Called ___ at ___. Normal."


def test_dicom_image_in_a_manifest_goes_through_the_dicom_path(tmp_path, helpers):
    src = tmp_path / "in"
    src.mkdir()
    helpers.plant(pydicom_dir() / "CT_small.dcm", src / "ct.dcm")
    helpers.plant(pydicom_data_dir() / "US1_UNCR.dcm", src / "us.dcm")  # no BurnedInAnnotation NO: gated
    with open(src / "m.csv", "w") as fh:
        fh.write(
            "image,report\nct.dcm,FINDINGS: Liver lesion. Patient name: Zyxwv Plantedname.\nus.dcm,Thyroid nodule.\n"
        )
    helpers.convert([src / "m.csv"], tmp_path / "out")
    (s,) = helpers.read(tmp_path / "out")
    assert s["modality"] == "ct" and s["captions"][0] == "Liver lesion. ___."
    assert s["meta"]["dicom_modality"] == "CT" and "window" in s["meta"]
    (rj,) = helpers.rejects(tmp_path / "out")
    assert rj["path"].endswith("us.dcm") and "BurnedInAnnotation" in rj["reason"]
    blob = helpers.written_bytes(tmp_path / "out")
    for value in helpers.PHI.values():
        assert value.encode() not in blob
    assert b"Plantedname" not in blob and b"Zyxwv" not in blob


def test_inspect_draws_the_balance_chart(tmp_path, helpers):
    from PIL import Image

    from unimed.ingest.inspect import inspect

    for k in range(3):
        _png(tmp_path / "a" / f"{k}.png", k)
    _png(tmp_path / "b" / "0.png", 9, rgb=True)
    helpers.convert([tmp_path / "a"], tmp_path / "out", modality="xray", source_name="setA")
    info = inspect(str(tmp_path / "out"))
    assert info["modality"] == {"xray": 3} and info["chart"].endswith("balance.png")
    with Image.open(info["chart"]) as im:
        assert im.width == 720 and im.height > 60 and len(im.getcolors(100000)) > 2
