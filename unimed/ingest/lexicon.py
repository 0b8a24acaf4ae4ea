"""Word lists of the free-text PHI scrubber, loaded once per process on first use.

* personal names and ordinary words: the dictionaries of UCSF's Philter de-identifier, shipped in the
  ``philter-lite`` package (97k first names, 161k surnames, and 195k English and medical words that
  Philter's authors judged are not names);
* US places: every city, town and county of the US Postal Service's ZIP code list, taken from the
  ``zipcodes`` package into ``vocab/us_places.txt`` (:func:`refresh_us_places` rewrites it);
* clinical vocabulary: ``vocab/clinical.txt`` (a radiology and pathology lexicon), ``vocab/eponyms.txt``
  and ``vocab/function.txt``, written for unimed, plus every word of the caption banks.

:mod:`unimed.ingest.names` finds names and places with them; findings mode of
:mod:`unimed.ingest.reports` keeps sentences whose words are all clinical vocabulary (:func:`in_vocab`).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "Lexicon",
    "lexicon",
    "key",
    "in_vocab",
    "refresh_us_places",
    "FIRST",
    "LAST",
    "WORD",
    "CLIN",
    "EPON",
    "FUNC",
    "NAME",
]

VOCAB_DIR = Path(__file__).parent / "vocab"
BANK_DIR = Path(__file__).parent / "banks"

FIRST, LAST, WORD, CLIN, EPON, FUNC = 1, 2, 4, 8, 16, 32
NAME = FIRST | LAST

_CONTRACTION = re.compile(r"'(?:s|re|ll|ve|d|m)$|n't$")
_SUFFIXES = (
    ("ies", "y"),
    ("es", ""),
    ("s", ""),
    ("ed", ""),
    ("ed", "e"),
    ("ing", ""),
    ("ing", "e"),
    ("ly", ""),
    ("ally", ""),
    ("'s", ""),
)
_PREFIXES = (
    "non",
    "un",
    "re",
    "sub",
    "peri",
    "para",
    "intra",
    "inter",
    "post",
    "pre",
    "hyper",
    "hypo",
    "micro",
    "macro",
    "multi",
    "bi",
    "semi",
    "trans",
    "supra",
    "infra",
    "retro",
    "extra",
    "pseudo",
    "mid",
    "pan",
    "neo",
    "de",
    "dis",
    "co",
    "in",
    "over",
    "under",
    "anti",
)


@dataclass(frozen=True)
class Lexicon:
    """The loaded word lists: flags per lower-case word, fixed eponym phrases, US places."""

    flags: dict[str, int]
    phrases: dict[str, tuple[tuple[str, ...], ...]]  # first word -> phrases starting with it
    places: dict[str, tuple[tuple[str, ...], ...]]  # first word -> place names starting with it

    def get(self, word: str) -> int:
        """Flags of ``word`` (lower case, accents and apostrophes removed), 0 when it is in no list."""
        return self.flags.get(word, 0)


def key(word: str) -> str:
    """The form a word is looked up under: lower case, no accents, no possessive, no apostrophes."""
    w = word.lower()
    if not w.isascii():
        w = unicodedata.normalize("NFKD", w).encode("ascii", "ignore").decode()
    if "'" in w or "’" in w:
        w = _CONTRACTION.sub("", w.replace("’", "'")).replace("'", "")
    return w


def _words(path: Path) -> list[str]:
    return [w for line in path.read_text(encoding="utf-8").splitlines() for w in line.split("#")[0].split()]


def _philter_sets() -> dict[str, list[str]]:
    spec = importlib.util.find_spec("philter_lite")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the PHI scrubber needs the package philter-lite for its name dictionaries (pip install philter-lite)"
        )
    text = (Path(list(spec.submodule_search_locations)[0]) / "filters" / "set.toml").read_text(encoding="utf-8")
    sets = {}
    for line in text.splitlines():
        m = re.match(r"(\w+) = \[", line)
        if m:
            sets[m.group(1)] = re.findall(r'"([^"]*)"', line)
    return sets


def _bank_words() -> list[str]:
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            out.extend(re.findall(r"[^\W\d_]+", re.sub(r"\{[^}]*\}", " ", node)))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in sorted(BANK_DIR.glob("*.yaml")):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return out


def _us_places() -> list[str]:
    return [
        line
        for line in (VOCAB_DIR / "us_places.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]


def refresh_us_places(path: Path = VOCAB_DIR / "us_places.txt") -> int:
    """Rewrite ``vocab/us_places.txt`` from the ``zipcodes`` package; return the number of places.

    The list is shipped as a file because ``zipcodes`` builds 42,000 records (150 MB) to list them.
    """
    import zipcodes  # a maintenance dependency: pip install zipcodes

    names: set[str] = set()
    for z in zipcodes.filter_by():
        names.update([z["city"], *z.get("acceptable_cities", [])])
        if z.get("county"):
            names.add(re.sub(r"\s+(?:County|Parish|Borough|Municipio|Census Area|City and Borough)$", "", z["county"]))
    places = sorted(n for n in names if n and not re.search(r"\d", n))
    header = (
        f"# US cities, towns and counties of the USPS ZIP code list: zipcodes {zipcodes.__version__}, "
        "written by unimed.ingest.lexicon.refresh_us_places().\n"
    )
    path.write_text(header + "\n".join(places) + "\n", encoding="utf-8")
    return len(places)


def _index(names: list[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
    index: dict[str, list[tuple[str, ...]]] = {}
    for name in names:
        words = tuple(key(w) for w in re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)*", name))
        if words:
            index.setdefault(words[0], []).append(words)
    return {k: tuple(sorted(set(v), key=len, reverse=True)) for k, v in index.items()}


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """Load the word lists (about half a second, once per process)."""
    flags: dict[str, int] = {}
    sets = _philter_sets()
    for name, flag in (("firstnames", FIRST), ("lastnames", LAST), ("nonames", WORD)):
        for w in sets.get(name, ()):
            flags[w] = flags.get(w, 0) | flag
    for w in _words(VOCAB_DIR / "clinical.txt") + _bank_words():
        for part in re.split(r"[-/]", key(w)):
            if part:
                flags[part] = flags.get(part, 0) | CLIN
    phrases = []
    for line in (VOCAB_DIR / "eponyms.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if " " in line:
            phrases.append(line)  # its words are clinical only together
            continue
        for part in key(line).split("-"):
            if part:
                flags[part] = flags.get(part, 0) | EPON
    for w in _words(VOCAB_DIR / "function.txt"):
        flags[key(w)] = flags.get(key(w), 0) | FUNC
    return Lexicon(flags, _index(phrases), _index(_us_places()))


def in_vocab(word: str, lex: Lexicon, mask: int = CLIN | EPON | FUNC, prefixes: bool = True) -> bool:
    """Whether ``word`` (any case) or a regular inflection (or prefixed form) of it has a flag in ``mask``."""
    w = key(word)
    if lex.get(w) & mask:
        return True
    for suffix, repl in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 4 and lex.get(w[: -len(suffix)] + repl) & mask:
            return True
    if prefixes and len(w) >= 7:
        for p in _PREFIXES:
            if w.startswith(p) and len(w) - len(p) >= 5 and in_vocab(w[len(p) :], lex, mask, False):
                return True
    return False
