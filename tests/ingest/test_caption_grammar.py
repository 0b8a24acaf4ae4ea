"""Captions of every bank class read as English: articles by sound, no broken joins, no template debris."""

from __future__ import annotations

import re

import pytest

from unimed.ingest.captions import CaptionEngine, default_banks, fix_articles

#: The article each word takes, written by hand (not derived from the engine's rule).
SPOKEN = {
    "MRI": "an",
    "MR": "an",
    "CT": "a",
    "X-ray": "an",
    "H&E": "an",
    "US": "a",
    "FLAIR": "a",
    "OCT": "an",
    "magnetic": "a",
    "ultrasound": "an",
    "unremarkable": "an",
    "image": "an",
    "axial": "an",
    "one": "a",
    "urinary": "a",
    "uterine": "a",
    "eye": "an",
    "uniform": "a",
    "hour": "an",
    "endoscopic": "an",
    "abdominal": "an",
}


@pytest.mark.parametrize(
    "text,want",
    [
        ("A MRI scan of the head.", "An MRI scan of the head."),
        ("An magnetic resonance image.", "A magnetic resonance image."),
        ("a X-ray", "an X-ray"),
        ("An CT slice", "A CT slice"),
        ("A H&E stained slide", "An H&E stained slide"),
        ("An one-sided effusion", "A one-sided effusion"),
        ("A unremarkable study", "An unremarkable study"),
    ],
)
def test_articles_follow_the_sound(text, want):
    assert fix_articles(text) == want


def _label_sets(bank):
    names = [*bank.classes, *bank.findings]
    for i, name in enumerate(names):
        yield [name]
        yield [f"-{name}"]
        if len(names) > 1:
            yield [name, names[(i + 1) % len(names)]]


@pytest.mark.parametrize("modality", sorted(default_banks()))
def test_every_bank_class_reads_well(modality):
    engine = CaptionEngine()
    bank = default_banks()[modality]
    caps = [*engine.captions(modality, [], "chest"), *engine.captions(modality, [])]
    for labels in _label_sets(bank):
        caps += engine.captions(modality, labels)
        caps += engine.captions(modality, labels, "knee")
    assert caps
    for c in caps:
        assert c[0].isupper() and c.endswith("."), c
        assert "{" not in c and "  " not in c and " ." not in c and " ," not in c, c
        assert not re.search(r"\b(no no|and and|or or|the the|a a|an an)\b", c, re.I), c
        assert "showing no finding and" not in c.lower(), c
        for art, word in re.findall(r"\b([Aa]n?) ([\w&\-]+)", c):
            if word in SPOKEN:
                assert art.lower() == SPOKEN[word], c


def test_no_finding_beside_findings_is_said_apart():
    caps = CaptionEngine().captions("xray", ["No Finding", "Support Devices"])
    assert caps and all(c.endswith("No finding otherwise.") and "no finding and" not in c.lower() for c in caps)


def test_a_lone_negated_no_finding_still_gets_captions():
    caps = CaptionEngine().captions("xray", ["-No Finding"])
    assert caps and not any("no no" in c.lower() for c in caps)
