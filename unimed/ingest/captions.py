"""Captions from labels through caption banks (data files, not code).

A bank is a YAML file per modality (``unimed/ingest/banks/<modality>.yaml``) with: ``names``
(phrases for the modality), ``classes`` (full-sentence phrasings per class), ``findings`` (for
classes given as noun phrases and an anatomy: ``{anatomy: knee, say: [a torn ACL, ...]}``, turned
into sentences by ``templates`` / ``anatomy_templates``), ``templates`` (also for a class with no
entry; ``{label}``), ``anatomy_templates`` (``{label}`` and ``{anatomy}``), ``multi`` (several
findings; ``{findings}``), ``negative`` (only negative findings; ``{negatives}``), ``negative_clause``
(a sentence appended to positive captions), ``unlabeled`` / ``unlabeled_no_anatomy`` (images
without labels; ``{anatomy}`` comes from allow-listed header fields), and ``aliases``.

Labels: ``Name`` is a positive finding, ``-Name`` a negative one (CheXpert's explicit 0), and
``anatomy/Name`` names the anatomy too (RadImageNet-style ``knee/acl_pathology``). An extra bank (one
written by hand or produced offline by a language model) may be partial: ``modality`` and
``classes`` suffice, the rest comes from the shipped bank of that modality (or the generic one).
Every sample keeps all its captions; training picks one per epoch.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from unimed.errors import UserError

__all__ = [
    "Bank",
    "Finding",
    "BANK_DIR",
    "NEGATIVE",
    "load_bank",
    "default_banks",
    "split_label",
    "CaptionEngine",
    "fix_articles",
]

BANK_DIR = Path(__file__).parent / "banks"
NEGATIVE = "-"  # prefix of a negative finding in a label list
_REQUIRED = ("names", "templates", "multi", "unlabeled", "unlabeled_no_anatomy")
_LISTS = (
    "names",
    "templates",
    "anatomy_templates",
    "multi",
    "negative",
    "negative_clause",
    "unlabeled",
    "unlabeled_no_anatomy",
)


@dataclass
class Finding:
    """A class given as noun phrases (and the anatomy it belongs to), phrased by the bank's templates."""

    say: list[str]
    anatomy: str | None = None


def _norm(label: str) -> str:
    return re.sub(r"[\s_]+", " ", str(label)).strip().lower()


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
    findings: dict[str, Finding] = field(default_factory=dict)
    anatomy_templates: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    negative_clause: list[str] = field(default_factory=list)

    def resolve(self, label: str) -> str | None:
        """The bank's class or finding for a label (case, spaces and underscores ignored; aliases), or None."""
        key = _norm(label)
        key = _norm(self._alias_map.get(key, key))
        return self._index_map.get(key)

    @functools.cached_property
    def _index_map(self) -> dict[str, str]:
        """Normalized name -> class or finding; built once per bank (``resolve`` runs per sample)."""
        return {_norm(k): k for k in [*self.findings, *self.classes]}

    @functools.cached_property
    def _alias_map(self) -> dict[str, str]:
        return {_norm(k): v for k, v in self.aliases.items()}


def _finding(name: str, value: Any, path: Path) -> Finding:
    if isinstance(value, str):
        return Finding([value])
    if isinstance(value, list):
        return Finding([str(v) for v in value])
    if isinstance(value, dict) and value.get("say"):
        say = value["say"]
        return Finding([str(v) for v in (say if isinstance(say, list) else [say])], value.get("anatomy"))
    raise UserError(f"{path}: finding {name!r} needs 'say' (noun phrases) and optionally 'anatomy'")


def load_bank(path: str | Path, partial: bool = False) -> Bank:
    """Load and check one bank file; ``partial`` allows a bank of classes only (its base fills the rest)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read caption bank ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or "modality" not in doc:
        raise UserError(f"{path}: a caption bank is a mapping with a 'modality' key")
    missing = [k for k in _REQUIRED if not doc.get(k)]
    if missing and not partial:
        raise UserError(f"{path}: caption bank lacks {', '.join(missing)}")
    classes = doc.get("classes") or {}
    if not isinstance(classes, dict) or not all(isinstance(v, list) and v for v in classes.values()):
        raise UserError(f"{path}: 'classes' maps each class to a list of phrasings")
    return Bank(
        modality=str(doc["modality"]),
        **{k: [str(v) for v in doc.get(k) or []] for k in _LISTS},
        classes={str(k): [str(p) for p in v] for k, v in classes.items()},
        aliases={str(k): str(v) for k, v in (doc.get("aliases") or {}).items()},
        findings={str(k): _finding(str(k), v, path) for k, v in (doc.get("findings") or {}).items()},
    )


def _merge(base: Bank, extra: Bank) -> Bank:
    """``extra`` over ``base``: its lists replace the base's where given; classes and aliases add up."""
    lists = {k: getattr(extra, k) or getattr(base, k) for k in _LISTS}
    return replace(
        base,
        modality=extra.modality,
        **lists,
        classes={**base.classes, **extra.classes},
        aliases={**base.aliases, **extra.aliases},
        findings={**base.findings, **extra.findings},
    )


@functools.lru_cache(maxsize=1)
def default_banks() -> dict[str, Bank]:
    """The banks shipped with unimed, by modality (lists a bank leaves out come from ``other``)."""
    banks = {}
    for p in sorted(BANK_DIR.glob("*.yaml")):
        bank = load_bank(p)
        banks[bank.modality] = bank
    generic = banks["other"]
    return {m: _merge(generic, b) for m, b in banks.items()}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _join(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def _label_text(label: str) -> str:
    return label.replace("_", " ").strip().lower()


def split_label(label: str) -> tuple[bool, str | None, str]:
    """``(negative, anatomy, name)`` of a label such as ``-Edema`` or ``knee/acl_pathology``."""
    label = str(label).strip()
    negative = label.startswith(NEGATIVE)
    label = label[len(NEGATIVE) :].strip() if negative else label
    anatomy = None
    if "/" in label:
        anatomy, label = (part.strip() for part in label.rsplit("/", 1))
        anatomy = anatomy.rsplit("/", 1)[-1].replace("_", " ").lower() or None
    return negative, anatomy, label


def _split(bank: Bank, label: str) -> tuple[bool, str | None, str]:
    """:func:`split_label`, except that a label the bank knows whole (``Nodule/Mass``) is not split."""
    negative, anatomy, name = split_label(label)
    whole = str(label).strip()[len(NEGATIVE) :].strip() if negative else str(label).strip()
    if anatomy is not None and bank.resolve(whole) is not None:
        return negative, None, whole
    return negative, anatomy, name


class _Fields(dict):
    def __missing__(self, key: str) -> str:  # a phrasing naming a field this caption lacks keeps it visible
        return "{" + key + "}"


#: Letters whose spoken name starts with a vowel sound ("an MRI", "an X-ray", "an H&E stain").
_VOWEL_LETTERS = frozenset("AEFHILMNORSX")
#: Vowel-initial words spoken with a consonant sound, and consonant-initial ones spoken with a vowel.
_A_WORDS = ("uni", "use", "usu", "uro", "ure", "uri", "ute", "uti", "uve", "eu", "one", "once", "ubiq")
_AN_WORDS = ("hour", "honest", "heir")
_ARTICLE = re.compile(r"\b([Aa]n?) ([\w&\-]+)")


def _article(word: str) -> str:
    """``a`` or ``an`` before ``word``, by its sound: initialisms by letter name, words by spelling."""
    head = re.split(r"[\-&]", word, maxsplit=1)[0]
    if len(head) >= 2 and head.isupper() and head.isalpha() and head not in ("FLAIR", "DWI"):
        return "an" if head[0] in _VOWEL_LETTERS else "a"  # CT, MRI, X, US: letters spoken one by one
    if len(head) == 1 and head.isalpha():  # "X-ray", "T2-weighted"
        return "an" if head.upper() in _VOWEL_LETTERS else "a"
    low = word.lower()
    if low.startswith(_AN_WORDS):
        return "an"
    if low.startswith(_A_WORDS):
        return "a"
    return "an" if low[:1] in "aeiou" else "a"


def fix_articles(text: str) -> str:
    """Choose ``a``/``an`` by the next word ("A MRI scan" -> "An MRI scan"), keeping the capital."""

    def repl(m: re.Match[str]) -> str:
        art = _article(m.group(2))
        return f"{art.capitalize() if m.group(1)[0] == 'A' else art} {m.group(2)}"

    return _ARTICLE.sub(repl, text)


def _fmt(template: str, **kw: str) -> str:
    return fix_articles(template.format_map(_Fields(kw)))


class CaptionEngine:
    """Turns (modality, labels, anatomy) into the list of captions a sample stores."""

    def __init__(self, extra_banks: list[str | Path] | None = None) -> None:
        self.banks = dict(default_banks())
        for p in extra_banks or []:
            bank = load_bank(p, partial=True)
            # A user bank adds to (and overrides) the shipped one of its modality, or the generic one.
            self.banks[bank.modality] = _merge(self.banks.get(bank.modality) or self.banks["other"], bank)

    def bank(self, modality: str) -> Bank:
        """The bank of a modality, or the generic one."""
        return self.banks.get(modality) or self.banks["other"]

    @staticmethod
    def _negative(bank: Bank, label: str) -> bool:
        """``-Name``, or ``no Name`` where only ``Name`` is in the bank (REFUGE's "no glaucoma")."""
        negative, _, name = _split(bank, label)
        if not negative and name.lower().startswith("no ") and bank.resolve(name) is None:
            return bank.resolve(name[3:]) is not None
        return negative

    def _text(self, bank: Bank, label: str) -> tuple[str, str | None]:
        """The noun phrase of one label and its anatomy (for multi-finding and negative captions)."""
        _, anatomy, name = _split(bank, label)
        cls = bank.resolve(name)
        if cls is None and name.lower().startswith("no "):
            name = name[3:]
            cls = bank.resolve(name)
        if cls in bank.findings:
            f = bank.findings[cls]
            return f.say[0], anatomy or f.anatomy
        if cls is not None and _norm(cls) not in _norm(name):  # an alias ("2", "Normal"): the class says more
            name = cls
        return _label_text(name), anatomy

    def _single(self, bank: Bank, label: str) -> list[str]:
        _, anatomy, name = _split(bank, label)
        cls = bank.resolve(name)
        names, out = bank.names, []
        if cls in bank.classes:  # full sentences; a generated bank's may name {modality} or {anatomy}
            return [
                _fmt(p, modality=names[i % len(names)], anatomy=anatomy or "") if "{" in p else p
                for i, p in enumerate(bank.classes[cls])
            ]
        finding = bank.findings.get(cls) if cls else None
        say = finding.say if finding else [_label_text(name)]
        anat = anatomy or (finding.anatomy if finding else None)
        templates = bank.anatomy_templates if anat and bank.anatomy_templates else bank.templates
        for i, t in enumerate(templates):
            m, lab = names[i % len(names)], say[i % len(say)]
            out.append(_fmt(t, modality=m, modality_cap=_cap(m), label=lab, label_cap=_cap(lab), anatomy=anat or ""))
        return out

    def captions(self, modality: str, labels: list[str], anatomy: str | None = None) -> list[str]:
        """All captions of one sample, de-duplicated, in a stable order."""
        bank = self.bank(modality)
        names = bank.names
        negative = [self._negative(bank, lab) for lab in labels]
        positives = [lab for lab, neg in zip(labels, negative) if not neg]
        # A negated "No Finding" (CheXpert's 0 in that column) says only that there are findings: dropped.
        negatives = [
            lab for lab, neg in zip(labels, negative) if neg and not self._text(bank, lab)[0].lower().startswith("no ")
        ]
        # "No Finding" beside findings (CheXpert marks support devices so): said apart, never joined
        # into "showing no finding and support devices".
        nothing = [lab for lab in positives if self._text(bank, lab)[0].lower().startswith("no ")]
        rest = [lab for lab in positives if lab not in nothing]
        if nothing and rest:
            said = _cap(self._text(bank, nothing[0])[0])
            return [f"{c} {said} otherwise." for c in self.captions(modality, rest + negatives, anatomy)]
        out: list[str] = []
        if not labels:
            if anatomy:
                anat = anatomy.replace("_", " ").lower()
                for i, t in enumerate(bank.unlabeled):
                    m = names[i % len(names)]
                    out.append(_fmt(t, modality=m, modality_cap=_cap(m), anatomy=anat))
            else:
                out.extend(bank.unlabeled_no_anatomy)
        elif len(positives) == 1:
            out = self._single(bank, positives[0])
        elif positives:
            findings = _join([self._text(bank, lab)[0] for lab in positives])
            for i, t in enumerate(bank.multi):
                m = names[i % len(names)]
                out.append(_fmt(t, modality=m, modality_cap=_cap(m), findings=findings, findings_cap=_cap(findings)))
        if negatives:
            negs = _join([self._text(bank, lab)[0] for lab in negatives], "or")
            if out:
                clauses = bank.negative_clause
                out = [
                    f"{c} {_fmt(clauses[i % len(clauses)], negatives=negs, negatives_cap=_cap(negs))}"
                    for i, c in enumerate(out)
                ]
            else:
                for i, t in enumerate(bank.negative):
                    m = names[i % len(names)]
                    out.append(_fmt(t, modality=m, modality_cap=_cap(m), negatives=negs, negatives_cap=_cap(negs)))
        if not out and labels:  # only labels that say nothing (a lone "-No Finding"): phrased as unlabeled
            return self.captions(modality, [], anatomy)
        return list(dict.fromkeys(out))

    def unknown_classes(self, modality: str, labels: list[str]) -> list[str]:
        """Labels that have no entry (class or finding) in the modality's bank."""
        bank = self.bank(modality)
        out = []
        for lab in labels:
            name = _split(bank, lab)[2]
            if bank.resolve(name) is None and not (name.lower().startswith("no ") and bank.resolve(name[3:])):
                out.append(lab)
        return out
