"""The evaluation catalog and the prompt sets: data files in the package, one small loader each.

``catalog.yaml`` lists the reference system's 21 zero-shot sets by modality with their class names
(plus the demo's modality set); ``prompts/<name>.yaml`` holds several prompts per class. Adding a
set or a phrasing touches no code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unimed.errors import UserError

__all__ = ["EvalSetSpec", "load_catalog", "load_prompts", "prompts_for", "normalize_class", "PROMPTS_DIR"]

_HERE = Path(__file__).parent
PROMPTS_DIR = _HERE / "prompts"


def normalize_class(name: str) -> str:
    """Compare class names loosely: lower case, ``_``/``-`` as spaces, single spaces."""
    return re.sub(r"\s+", " ", str(name).lower().replace("_", " ").replace("-", " ")).strip()


@dataclass(frozen=True)
class EvalSetSpec:
    """One evaluation set: its classes in order (the label of index i is ``classes[i]``)."""

    name: str
    modality: str
    classes: tuple[str, ...]
    title: str = ""
    prompts: str = ""  # a prompts file name (or path)
    binary: bool = False
    target: str = "labels"  # the shard column holding the class: labels | modality
    aliases: dict[str, str] = field(default_factory=dict)  # folder name -> class name
    reference: bool = True  # one of the reference system's 21

    def class_index(self, value: str) -> int | None:
        """Index of the class a shard value names (aliases and loose spelling allowed), else None."""
        key = normalize_class(value)
        lookup = {normalize_class(a): c for a, c in self.aliases.items()}
        key = normalize_class(lookup.get(key, key))
        for i, c in enumerate(self.classes):
            if normalize_class(c) == key:
                return i
        return None


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, EvalSetSpec]:
    """The sets of ``catalog.yaml`` (or of ``path``), by name."""
    with open(path or _HERE / "catalog.yaml") as fh:
        doc = yaml.safe_load(fh)
    out = {}
    for name, entry in (doc.get("sets") or {}).items():
        entry = dict(entry)
        entry["classes"] = tuple(str(c) for c in entry["classes"])
        entry["aliases"] = {str(k): str(v) for k, v in (entry.get("aliases") or {}).items()}
        out[name] = EvalSetSpec(name=name, **entry)
    return out


def load_prompts(name_or_path: str) -> dict:
    """A prompt set: a file in ``unimed/train/prompts`` by name (``xray``) or any YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
        raise UserError(f"prompt set {name_or_path!r} not found; bundled ones: {known}")
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    unknown = set(doc) - {"templates", "classes"}
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; a prompt set has 'templates' and 'classes'")
    return doc


def prompts_for(doc: dict, classname: str) -> list[str]:
    """The prompts of one class: its own list, plus the templates filled in unless it replaces them."""
    classes = {normalize_class(k): v for k, v in (doc.get("classes") or {}).items()}
    own = classes.get(normalize_class(classname)) or {}
    if isinstance(own, list):
        own = {"prompts": own}
    prompts = list(own.get("prompts") or [])
    if not own.get("replace"):
        prompts += [t.format(c=classname) for t in doc.get("templates") or []]
    if not prompts:
        raise UserError(f"no prompt for class {classname!r}: add it under 'classes' or give 'templates'")
    return prompts
