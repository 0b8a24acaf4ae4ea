"""Captions from labels through caption banks (data files, not code).

A bank is a YAML file per modality (``unimed/ingest/banks/<modality>.yaml``) with: ``names``
(phrases for the modality), ``classes`` (several phrasings per class), ``templates`` (for a class
with no phrasings of its own; ``{label}``), ``multi`` (several findings; ``{findings}``),
``unlabeled`` / ``unlabeled_no_anatomy`` (images without labels; ``{anatomy}`` comes from
allow-listed header fields), and ``aliases`` (label spellings that map to a class).
Every sample keeps all its captions; training picks one per epoch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unimed.errors import UserError

__all__ = ["Bank", "BANK_DIR", "load_bank", "default_banks", "CaptionEngine"]

BANK_DIR = Path(__file__).parent / "banks"
_REQUIRED = ("names", "templates", "multi", "unlabeled", "unlabeled_no_anatomy")


@dataclass
class Bank:
    """The caption bank of one modality."""

    modality: str
    names: list[str]
    templates: list[str]
    multi: list[str]
    unlabeled: list[str]
    unlabeled_no_anatomy: list[str]
    classes: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, label: str) -> str | None:
        """The bank's class for a label (case-insensitive, through aliases), or None."""
        lowered = {k.lower(): k for k in self.classes}
        key = self.aliases.get(label, label)
        return lowered.get(str(key).lower())


def load_bank(path: str | Path) -> Bank:
    """Load and check one bank file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read caption bank ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or "modality" not in doc:
        raise UserError(f"{path}: a caption bank is a mapping with a 'modality' key")
    missing = [k for k in _REQUIRED if not doc.get(k)]
    if missing:
        raise UserError(f"{path}: caption bank lacks {', '.join(missing)}")
    return Bank(
        modality=str(doc["modality"]),
        names=list(doc["names"]),
        templates=list(doc["templates"]),
        multi=list(doc["multi"]),
        unlabeled=list(doc["unlabeled"]),
        unlabeled_no_anatomy=list(doc["unlabeled_no_anatomy"]),
        classes={str(k): list(v) for k, v in (doc.get("classes") or {}).items()},
        aliases={str(k): str(v) for k, v in (doc.get("aliases") or {}).items()},
    )


@functools.lru_cache(maxsize=1)
def default_banks() -> dict[str, Bank]:
    """The banks shipped with unimed, by modality."""
    banks = {}
    for p in sorted(BANK_DIR.glob("*.yaml")):
        bank = load_bank(p)
        banks[bank.modality] = bank
    return banks


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _label_text(label: str) -> str:
    return label.replace("_", " ").strip().lower()


class CaptionEngine:
    """Turns (modality, labels, anatomy) into the list of captions a sample stores."""

    def __init__(self, extra_banks: list[str | Path] | None = None) -> None:
        self.banks = dict(default_banks())
        for p in extra_banks or []:
            bank = load_bank(p)
            base = self.banks.get(bank.modality)
            if base is not None:  # a user bank adds to (and overrides) the shipped one
                bank = Bank(
                    modality=bank.modality,
                    names=bank.names,
                    templates=bank.templates,
                    multi=bank.multi,
                    unlabeled=bank.unlabeled,
                    unlabeled_no_anatomy=bank.unlabeled_no_anatomy,
                    classes={**base.classes, **bank.classes},
                    aliases={**base.aliases, **bank.aliases},
                )
            self.banks[bank.modality] = bank

    def bank(self, modality: str) -> Bank:
        """The bank of a modality, or the generic one."""
        return self.banks.get(modality) or self.banks["other"]

    def captions(self, modality: str, labels: list[str], anatomy: str | None = None) -> list[str]:
        """All captions of one sample, de-duplicated, in a stable order."""
        bank = self.bank(modality)
        out: list[str] = []
        names = bank.names
        if not labels:
            if anatomy:
                anat = anatomy.replace("_", " ").lower()
                for i, t in enumerate(bank.unlabeled):
                    m = names[i % len(names)]
                    out.append(t.format(modality=m, modality_cap=_cap(m), anatomy=anat))
            else:
                out.extend(bank.unlabeled_no_anatomy)
        elif len(labels) == 1:
            cls = bank.resolve(labels[0])
            if cls is not None:
                out.extend(bank.classes[cls])
            else:
                lab = _label_text(labels[0])
                for i, t in enumerate(bank.templates):
                    m = names[i % len(names)]
                    out.append(t.format(modality=m, modality_cap=_cap(m), label=lab, label_cap=_cap(lab)))
        else:
            texts = []
            for label in labels:
                cls = bank.resolve(label)
                texts.append(_label_text(cls if cls is not None else label))
            findings = _join(texts)
            for i, t in enumerate(bank.multi):
                m = names[i % len(names)]
                out.append(t.format(modality=m, modality_cap=_cap(m), findings=findings, findings_cap=_cap(findings)))
        return list(dict.fromkeys(out))

    def unknown_classes(self, modality: str, labels: list[str]) -> list[str]:
        """Labels that have no phrasings of their own in the modality's bank."""
        bank = self.bank(modality)
        return [lab for lab in labels if bank.resolve(lab) is None]
