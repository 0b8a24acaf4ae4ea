"""The free-text PHI scrubber: names without titles, places, written-out ages, clinical eponyms kept,
findings mode, and the goals on a run of the planted corpus and on real OpenI reports."""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from unimed.ingest import lexicon, phi_corpus
from unimed.ingest.reports import PLACEHOLDER, clean_text, report_captions, scrub, scrub_spans

MISSES = [  # the cases the pattern-only scrubber let through
    ("Patient John Smith presents with cough.", ["John", "Smith"], ["presents", "cough"]),
    ("Maria Garcia, 67F, with dyspnea.", ["Maria", "Garcia"], ["67F", "dyspnea"]),
    ("Spiculated mass in the left breast (Jane Doe).", ["Jane", "Doe"], ["Spiculated", "mass", "breast"]),
    ("Pt: SMITH, JOHN", ["SMITH", "JOHN"], ["Pt"]),
    ("discussed with john doe at the bedside", ["john", "doe"], ["discussed", "bedside"]),
    ("dr smith agrees with the plan", ["smith"], ["agrees", "plan"]),
    ("Read by J.D. this morning.", ["J.D"], ["Read", "morning"]),
    ("Outside films from St. Mary's Hospital were reviewed.", ["Mary", "Hospital"], ["Outside", "films"]),
    ("Patient lives in Boston MA and works as a farmer.", ["Boston"], ["lives", "farmer"]),
    ("Transferred from Springfield, Illinois with a pelvic fracture.", ["Springfield"], ["pelvic", "fracture"]),
    ("A ninety-three year old man with a fall.", ["ninety"], ["year", "old", "fall"]),
    ("One hundred and two year old woman, aged ninety-one.", ["hundred", "ninety"], ["woman", "aged"]),
    ("Kelly Brightwater was informed of the pneumothorax.", ["Kelly", "Brightwater"], ["pneumothorax"]),
    ("Findings discussed with Dimitra Durmuş of the ICU team.", ["Dimitra", "Durmu", "ş"], ["ICU", "team"]),
    ("Wife Oluwaseun at the bedside was updated.", ["Oluwaseun"], ["Wife", "bedside"]),
    ("Mary Wilson, 92 yo, with chest pain.", ["Mary", "Wilson", "92"], ["chest", "pain"]),
    ("Images pushed from 10.2.3.4 and 2001:db8:85a3::8a2e:370:7334.", ["10.2", "2001", "7334"], ["Images"]),
    (
        "Medicare number 1EG4-TE5-MK73; license plate 7ABC123; VIN 1HGCM82633A004352.",
        ["1EG4", "MK73", "7ABC123", "1HGCM"],
        ["Medicare", "plate", "VIN"],
    ),
    ("Pacemaker serial number PJN123456; specimen S21-04512.", ["PJN123456", "S21", "04512"], ["Pacemaker"]),
    (
        "Home address 221B Baker Street, Apt 4B; PO Box 1123; ZIP 02114-2696.",
        ["221B", "Baker", "4B", "1123", "02114", "2696"],
        ["Home", "address"],
    ),
    (
        "Compared with 03/14/2021, 3/14, Sept. 26, the 3rd of March and Christmas Day 2019.",
        ["03/14", "3/14", "26", "3rd", "March", "Christmas", "2019"],
        ["Compared"],
    ),
]


def test_names_places_ages_and_identifiers_are_removed():  # one test: the suite's fixtures cost 0.5 s a test
    for text, phi, kept in MISSES:
        out = scrub(text)
        assert not [p for p in phi if p in out], out
        assert not [k for k in kept if k not in out], out


EPONYMS = [
    "History of Bell's palsy; the facial nerve enhances normally.",
    "Graves disease, Hodgkin lymphoma, Parkinson disease, Crohn disease and Wilson disease.",
    "Mass effect on the fourth ventricle. Moderate Mass Effect.",
    "Baker cyst; Schatzki ring; Kerley B lines; Salter-Harris II fracture; Hill-Sachs lesion.",
    "Positive Murphy sign. Fluid in Morison pouch. The circle of Willis is patent.",
    "The Swan-Ganz catheter tip and the Dobhoff tube are in good position.",
    "Non-Hodgkin lymphoma. Reed-Sternberg cells. Gleason score 3+4=7. Sister Mary Joseph nodule.",
    "Jones fracture and a healed Colles fracture. Chiari I malformation. Paget disease of bone.",
]


def test_clinical_eponyms_and_capitalized_clinical_words_are_kept():
    for text in EPONYMS:
        assert scrub(text) == text


def test_eponyms_next_to_a_name_or_title_are_removed():
    assert scrub("Discussed with Dr. Wilson.") == f"Discussed with {PLACEHOLDER}."
    assert "Wilson" not in scrub("Patient Mary Wilson has Wilson disease.").split("has")[0]
    assert scrub("Patient Mary Wilson has Wilson disease.").endswith("has Wilson disease.")


def test_scrub_removes_exactly_the_spans():
    text = "MRN: 12345678. Discussed with Dr. Kim at 10:15 on 03/14/2021. Small effusion."
    spans = scrub_spans(text)
    assert spans == sorted(spans) and all(a < b for a, b in spans)
    kept = "".join(text[b:a] for (_, b), (a, _) in zip([(0, 0), *spans], [*spans, (len(text), 0)]))
    assert "Small effusion." in kept and "12345678" not in kept and "MRN:" in kept
    assert scrub(text) == "MRN: ___. Discussed with ___ at ___ on ___. Small effusion."


def test_findings_mode_keeps_only_clinical_sentences():
    text = (
        "There is a 5 mm nodule in the right upper lobe. Findings discussed with Maria Garcia. "
        "Mild degenerative changes at C5-6 and T12. Compared with 03/14/2021. Gleason score 3+4=7."
    )
    assert clean_text(text, mode="findings") == (
        "There is a 5 mm nodule in the right upper lobe. "
        "Mild degenerative changes at C5-6 and T12. Gleason score 3+4=7."
    )
    assert clean_text("Patient John Smith, 45 year old.", mode="findings") == ""
    assert clean_text("A 93 yo woman. No pneumothorax.", mode="findings") == "No pneumothorax."
    caps = report_captions(
        "FINDINGS: Lungs are clear. Called to Dr. Kim at 10:15. IMPRESSION: No acute process.", mode="findings"
    )
    assert caps == ["Lungs are clear. No acute process.", "Lungs are clear.", "No acute process."]
    with pytest.raises(ValueError, match="findings"):
        clean_text("Lungs are clear.", mode="strict")


def test_word_lists_load_once_and_normalize():
    lex = lexicon.lexicon()
    assert lexicon.lexicon() is lex
    assert lexicon.key("Durmuş's") == "durmus" and lexicon.key("O'Brien") == "obrien"
    assert lex.get("smith") & lexicon.LAST and lex.get("effusion") & lexicon.CLIN
    assert lex.get("hodgkin") & lexicon.EPON and "boston" in lex.places
    assert lexicon.in_vocab("nodules", lex) and lexicon.in_vocab("nonenhancing", lex)
    assert not lexicon.in_vocab("Brightwater", lex)


def test_planted_corpus_meets_the_goals():
    phi, clinical = phi_corpus.corpus(seed=7, scale=0.4)
    assert len(phi) + len(clinical) >= 300
    figs = phi_corpus.score(phi, clinical)
    recall = figs["recall"]
    assert recall["name"] >= 0.99, figs["missed"]
    for cat in (
        "date",
        "phone",
        "fax",
        "email",
        "ssn",
        "mrn",
        "health_plan",
        "account",
        "license",
        "vehicle",
        "device",
        "url",
        "ip",
        "other_id",
        "address",
        "zip",
        "age",
    ):
        assert recall[cat] == 1.0, (cat, [m for m in figs["missed"]])
    assert min(figs["findings_recall"].values()) >= 0.99
    assert figs["clinical_words_lost"] <= 0.05
    assert figs["findings_clinical_sentences_kept"] >= 0.8


def test_real_openi_reports_lose_almost_no_words():
    import torchxrayvision as xrv

    sentences = []
    with tarfile.open(Path(xrv.__file__).parent / "data" / "NLMCXR_reports.tgz") as tar:
        for k, member in enumerate(m for m in tar if m.name.endswith(".xml")):
            if k >= 400:
                break
            root = ET.parse(tar.extractfile(member)).getroot()
            for a in root.iter("AbstractText"):
                sentences += [s for s in re.split(r"(?<=[.;])\s+", a.text or "") if s and "XXXX" not in s]
    words = removed = 0
    for s in sentences:
        spans = scrub_spans(s)
        for m in re.finditer(r"[^\W_]+", s):
            words += 1
            removed += phi_corpus.removed_chars(spans, m.start(), m.end()) > 0
    assert words > 5000 and removed / words < 0.005
    kept = sum(bool(clean_text(s, mode="findings")) for s in sentences)
    assert kept / len(sentences) > 0.8
