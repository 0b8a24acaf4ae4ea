"""The evaluation catalog and the prompt sets: data files in the package, one small loader each.

``catalog.yaml`` lists the reference system's 21 zero-shot sets by modality with their class names, the
label names of each set's public release (aliases), the labels a release holds that are not part of
the set (exclude) or are not scored (known), and the protocol (task, select, per_class, negatives);
``prompts/<name>.yaml`` holds several prompts per class (and, for multi-label sets, per absent
finding). Adding a set, an alias or a phrasing touches no code.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unimed.errors import UserError, yaml_error

__all__ = [
    "EvalSetSpec",
    "Resolved",
    "load_catalog",
    "load_prompts",
    "prompts_for",
    "normalize_class",
    "PROMPTS_DIR",
    "CATALOG_PATH",
]

_HERE = Path(__file__).parent
PROMPTS_DIR = _HERE / "prompts"
CATALOG_PATH = _HERE / "catalog.yaml"
NEGATIVE = "-"  # prefix of an explicit negative finding (ingest's label tables write `-Edema`)
_SEP = re.compile(r"[\s_\-:/]+")
_TASKS = ("multiclass", "multilabel")
_KEYS = {
    "modality",
    "title",
    "prompts",
    "binary",
    "target",
    "aliases",
    "reference",
    "classes",
    "task",
    "exclude",
    "known",
    "select",
    "per_class",
    "view",
    "negatives",
}


@functools.cache
def _spellings() -> dict[str, str]:
    with open(CATALOG_PATH) as fh:
        return {str(k): str(v) for k, v in (yaml.safe_load(fh).get("spellings") or {}).items()}


def normalize_class(name: str) -> str:
    """Compare labels loosely: lower case, ``_ - : /`` as spaces, one spelling (tumour = tumor)."""
    words = _SEP.sub(" ", str(name).lower()).split()
    spell = _spellings()
    return " ".join(spell.get(w, w) for w in words)


@dataclass(frozen=True)
class Resolved:
    """What one label of a sample means for a set: ``kind`` is class, negative, exclude, known or unknown."""

    kind: str
    index: int | None = None


@dataclass(frozen=True)
class EvalSetSpec:
    """One evaluation set: its classes in order (class ``i`` is ``classes[i]``) and how labels map to them."""

    name: str
    modality: str
    classes: tuple[str, ...]
    title: str = ""
    prompts: str = ""  # a prompts file name (or path)
    binary: bool = False
    target: str = "labels"  # the shard column holding the class: labels | modality
    aliases: dict[str, str] = field(default_factory=dict)  # release label -> class name
    reference: bool = True  # one of the reference system's 21
    task: str = "multiclass"  # multiclass | multilabel
    exclude: tuple[str, ...] = ()  # release labels outside this set: left out, counted
    known: tuple[str, ...] = ()  # labels that may appear and are not scored
    select: str = ""  # "" | one-positive
    per_class: int | None = None
    view: str = ""  # "" | frontal: samples whose meta.view is another projection are left out, counted
    negatives: str = "explicit"  # multilabel: explicit | implicit

    @functools.cached_property
    def _lookup(self) -> dict[str, Resolved]:
        table: dict[str, Resolved] = {}
        for key in self.known:
            table[normalize_class(key)] = Resolved("known")
        for key in self.exclude:
            table[normalize_class(key)] = Resolved("exclude")
        for i, c in enumerate(self.classes):
            table[normalize_class(c)] = Resolved("class", i)
        for alias, target in self.aliases.items():
            hit = table.get(normalize_class(target))
            if hit is None or hit.kind != "class":
                raise UserError(
                    f"{CATALOG_PATH}: set {self.name!r}: alias {alias!r} names {target!r}, not one of "
                    f"its classes {list(self.classes)}"
                )
            table.setdefault(normalize_class(alias), hit)
        return table

    def resolve(self, label: str) -> Resolved:
        """The meaning of ``label`` (``-Name`` an explicit negative of a class, or known)."""
        text = str(label).strip()
        if text.startswith(NEGATIVE) and len(text) > 1:
            hit = self._lookup.get(normalize_class(text[1:]))
            if hit is None or hit.kind == "unknown":
                return Resolved("unknown")
            return Resolved("negative", hit.index) if hit.kind == "class" else Resolved("known")
        return self._lookup.get(normalize_class(text), Resolved("unknown"))

    def class_index(self, value: str) -> int | None:
        """Index of the class a label names (aliases and loose spelling allowed), else None."""
        hit = self.resolve(value)
        return hit.index if hit.kind == "class" else None


def _spec(name: str, entry: dict, where: str) -> EvalSetSpec:
    unknown = set(entry) - _KEYS
    if unknown:
        raise UserError(f"{where}: set {name!r} has unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    entry = dict(entry)
    entry["classes"] = tuple(str(c) for c in entry["classes"])
    entry["aliases"] = {str(k): str(v) for k, v in (entry.get("aliases") or {}).items()}
    for key in ("exclude", "known"):
        entry[key] = tuple(str(x) for x in entry.get(key) or ())
    if entry.get("task", "multiclass") not in _TASKS:
        raise UserError(f"{where}: set {name!r}: task must be one of {_TASKS}")
    if entry.get("select", "") not in ("", "one-positive") or entry.get("negatives", "explicit") not in (
        "explicit",
        "implicit",
    ):
        raise UserError(f"{where}: set {name!r}: select is one-positive (or absent), negatives explicit|implicit")
    if entry.get("view", "") not in ("", "frontal", "lateral"):
        raise UserError(f"{where}: set {name!r}: view is frontal or lateral (or absent)")
    spec = EvalSetSpec(name=name, **entry)
    spec._lookup  # noqa: B018 - check the aliases now, not at the first sample
    return spec


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, EvalSetSpec]:
    """The sets of ``catalog.yaml`` (or of ``path``), by name."""
    where = str(path or CATALOG_PATH)
    with open(where) as fh:
        doc = yaml.safe_load(fh) or {}
    return {name: _spec(name, entry, where) for name, entry in (doc.get("sets") or {}).items()}


def load_prompts(name_or_path: str) -> dict:
    """A prompt set: a file in ``unimed/train/prompts`` by name (``xray``) or any YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
        raise UserError(f"prompt set {name_or_path!r} not found; bundled ones: {known}")
    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a prompt set is a YAML mapping with 'templates', 'classes' and 'negatives'")
    unknown = set(doc) - {"templates", "classes", "negatives"}
    if unknown:
        raise UserError(
            f"{path}: unknown keys {sorted(unknown)}; a prompt set has 'templates', 'classes' and 'negatives'"
        )
    for key in ("templates", "negatives"):
        templates = doc.get(key) or []
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise UserError(f"{path}: '{key}' is a list of strings such as 'a chest X-ray showing {{c}}'")
        for t in templates:
            try:
                t.format(c="x")
            except (KeyError, IndexError, ValueError):
                raise UserError(f"{path}: {key} entry {t!r}: the class goes in as {{c}}; no other braces") from None
    if not isinstance(doc.get("classes") or {}, dict):
        raise UserError(f"{path}: 'classes' maps each class name to its prompts")
    return doc


def prompts_for(doc: dict, classname: str, negative: bool = False) -> list[str]:
    """The prompts of one class: its own list, plus the templates filled in unless it replaces them.

    ``negative``: the prompts saying the finding is absent (the set's ``negatives`` templates, or a
    class's own ``negative`` list), for multi-label scoring.
    """
    classes = {normalize_class(k): v for k, v in (doc.get("classes") or {}).items()}
    own = classes.get(normalize_class(classname)) or {}
    if isinstance(own, list):
        own = {"prompts": own}
    if negative:
        prompts = list(own.get("negative") or []) + [t.format(c=classname) for t in doc.get("negatives") or []]
        if not prompts:
            raise UserError(f"no negative prompt for {classname!r}: add 'negatives' templates to the prompt set")
        return prompts
    prompts = list(own.get("prompts") or [])
    if not own.get("replace"):
        prompts += [t.format(c=classname) for t in doc.get("templates") or []]
    if not prompts:
        raise UserError(f"no prompt for class {classname!r}: add it under 'classes' or give 'templates'")
    return prompts
