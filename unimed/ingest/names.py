"""Personal names and places in free text, found with the scrubber's word lists (:mod:`.lexicon`).

A word is taken for part of a name when it is a known name that is not an ordinary word ("Smith",
"Kelly"), when it is capitalized and in no list at all ("Brightwater"), or when it stands in a run of
such words ("Mary Wilson", "john doe", "de la Torre", "SMITH, JOHN", "(Jane Doe)", "Sil Ciampi, 67F").
After a title ("Dr.", "Mr."), a name field ("Patient", "Pt:", "wife") or a phrase that introduces a
person ("discussed with", "called", "read by") the next words are taken whatever their case. Clinical
words and eponyms are kept otherwise ("Wilson disease", "Bell's palsy", "Sister Mary Joseph nodule").
A known US place is taken before a state ("Boston, MA") or after a word of residence ("lives in
Boston"), any capitalized word after a phrase of travel or origin ("transferred from Hanoi").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unimed.ingest.lexicon import CLIN, EPON, FUNC, NAME, WORD, Lexicon, in_vocab, key, lexicon

__all__ = ["TITLES", "name_spans"]

# token classes of the name pass
STRONG, AMBIG, WEAK, UNKNOWN, INITIAL, OTHER = range(6)

TITLES = frozenset("dr drs doctor mr mrs ms miss mx messrs prof professor sir dame rev reverend".split())
_PARTICLES = frozenset(
    "van von de der den del della di da du la le des dos das al el bin ibn ben ter ten zu y mac mc ap".split()
)  # inside names: "de la Torre", "van der Merwe"
_SOFT = frozenset(
    """patient pt pts name named patients nurse rn np pa-c tech technologist radiologist
    resident fellow attending physician surgeon wife husband son daughter mother father brother sister
    spouse partner friend caregiver guardian aunt uncle niece nephew grandson granddaughter grandmother
    grandfather mom dad sibling cousin neighbor colleague initials""".split()
)
_LOCATIVE = frozenset(
    """from in at to near lives living live resides residing resident native born moved
    visiting transferred relocated traveled travelled returned town city village""".split()
)
_STATES = {
    "AL": "Alabama",
    "AK": "Alaska",
    "AZ": "Arizona",
    "AR": "Arkansas",
    "CA": "California",
    "CO": "Colorado",
    "CT": "Connecticut",
    "DE": "Delaware",
    "DC": "District of Columbia",
    "FL": "Florida",
    "GA": "Georgia",
    "HI": "Hawaii",
    "ID": "Idaho",
    "IL": "Illinois",
    "IN": "Indiana",
    "IA": "Iowa",
    "KS": "Kansas",
    "KY": "Kentucky",
    "LA": "Louisiana",
    "ME": "Maine",
    "MD": "Maryland",
    "MA": "Massachusetts",
    "MI": "Michigan",
    "MN": "Minnesota",
    "MS": "Mississippi",
    "MO": "Missouri",
    "MT": "Montana",
    "NE": "Nebraska",
    "NV": "Nevada",
    "NH": "New Hampshire",
    "NJ": "New Jersey",
    "NM": "New Mexico",
    "NY": "New York",
    "NC": "North Carolina",
    "ND": "North Dakota",
    "OH": "Ohio",
    "OK": "Oklahoma",
    "OR": "Oregon",
    "PA": "Pennsylvania",
    "RI": "Rhode Island",
    "SC": "South Carolina",
    "SD": "South Dakota",
    "TN": "Tennessee",
    "TX": "Texas",
    "UT": "Utah",
    "VT": "Vermont",
    "VA": "Virginia",
    "WA": "Washington",
    "WV": "West Virginia",
    "WI": "Wisconsin",
    "WY": "Wyoming",
    "PR": "Puerto Rico",
    "GU": "Guam",
    "VI": "Virgin Islands",
    "AS": "American Samoa",
    "MP": "Northern Mariana Islands",
}
_STATE_ABBR = re.compile(rf"\s*,?\s*(?:(?:{'|'.join(_STATES)})\b|(?:{'|'.join(_STATES.values())})\b)")
_LETTERS = r"[^\W\d_](?:[^\W\d_]|[\u0300-\u036f])*"  # letters, with combining accents ("i̇hsanoğlu")
_TOKEN = re.compile(rf"(?P<ini>\b[^\W\d_]\.(?:\s?[^\W\d_]\.){{0,2}}(?![^\W\d_]))|(?P<w>{_LETTERS}(?:['’]{_LETTERS})*)")
_TRAILER = re.compile(
    r"\s*,?\s*(?:\(?(?:\d{1,3}\s*(?:y/?o\b|yo\b|y\.o\.|years?\b|yrs?\b|-?year)|\d{2,3}\s*[MFmf]\b|"
    r"(?:MD|M\.D\.|DO|RN|NP|PA-C|PhD|MBBS|FRCR|FRCPC)\b))"
)
_VERBAL = re.compile(
    r"\b(?:(?:discussed|spoke|spoken|conferred|reviewed|consulted)\s+with|d/w|(?:communicated|called|"
    r"reported|given|relayed|faxed|sent|paged|forwarded)(?:\s+to)?|notified|informed|attn|"
    r"(?:seen|read|reviewed|dictated|signed|examined|performed|verified|approved|interpreted|"
    r"referred|ordered|transcribed)\s+by)\s*[:\-]?\s*$",
    re.I,
)
_MOVED = re.compile(
    r"\b(?:(?:transferred|travell?ed|moved|returned|immigrated|emigrated|relocated|visiting|flew|"
    r"arrived|came|coming|lives|living|resides|residing|born|raised|works|working|vacationing|"
    r"vacation|trip)\s+(?:back\s+)?(?:from|to|in|at|near)|(?:resident|native|citizen)\s+of|"
    r"immigrant\s+from)\s+$",
    re.I,
)
_VERBAL_LAST = frozenset(
    "with w to called reported given relayed faxed sent paged forwarded notified informed attn by".split()
)
_MOVED_LAST = frozenset("from to in at near of".split())
_UPPER, _LOWER = re.compile(r"[A-Z]"), re.compile(r"[a-z]")
_JOIN = re.compile(r"[ \t]+|-|[ \t]*,[ \t]*|[ \t]*&[ \t]*")


@dataclass
class _Tok:
    start: int
    end: int
    text: str
    key: str
    cls: int
    cap: bool
    named: bool = False  # in the name dictionaries
    initials: int = 0  # letters of an initials token ("J." 1, "J.D." 2)
    plain: bool = False  # an ordinary English word, not a clinical or function word
    unknown: bool = False  # in no list
    fixed: bool = False  # part of a fixed eponym phrase
    particle: bool = False  # "de", "van": joins the words of a name, never makes one


def _classify(text: str, ini: bool, lex: Lexicon, upper_text: bool) -> _Tok:
    k = key(text)
    cap = text[0].isupper()
    if ini:
        return _Tok(0, 0, text, k, INITIAL, True, True, sum(c.isalpha() for c in text))
    f = lex.get(k)
    if not text.isascii() and not f & (NAME | EPON) and len(k) > 2 and not in_vocab(text.lower(), lex, EPON):
        # "Löwer", "Colón": an accented word that folds into an English one is a name
        return _Tok(0, 0, text, k, WEAK if text.isupper() or upper_text else UNKNOWN, cap, False, unknown=True)
    named = f & NAME
    short_caps = text.isupper() and len(text) <= 4
    if len(k) < 2 or (f & FUNC and not (cap and named)):
        cls = OTHER
    elif f & (CLIN | EPON) or (named and in_vocab(k, lex, CLIN | EPON)):
        cls = WEAK if named or f & EPON else OTHER
    elif named:
        cls = AMBIG if f & WORD or short_caps or in_vocab(k, lex, WORD, prefixes=False) else STRONG
    elif f & WORD or in_vocab(k, lex, WORD | CLIN | EPON | FUNC):
        plain = not (f & (CLIN | EPON | FUNC) or in_vocab(k, lex))
        return _Tok(0, 0, text, k, OTHER, cap, False, plain=plain)
    else:
        cls = WEAK if text.isupper() or upper_text else UNKNOWN  # capitals: a typo as often as a name
        return _Tok(0, 0, text, k, cls, cap, False, unknown=True)
    return _Tok(0, 0, text, k, cls, cap, bool(named))


def _tokens(text: str, lex: Lexicon) -> list[_Tok]:
    upper, lower = len(_UPPER.findall(text)), len(_LOWER.findall(text))
    upper_text = upper + lower > 20 and upper > 4 * lower  # a text in capitals: capitals say nothing
    toks = []
    for m in _TOKEN.finditer(text):
        ini = m.group("ini")
        t = _classify(m.group(), ini is not None and ini.replace(".", "").replace(" ", "").isupper(), lex, upper_text)
        t.start, t.end = m.start(), m.end()
        t.particle = t.key in _PARTICLES
        toks.append(t)
    for i, t in enumerate(toks):  # fixed eponym phrases ("Sister Mary Joseph") are clinical words
        for phrase in lex.phrases.get(t.key, ()):
            if tuple(x.key for x in toks[i : i + len(phrase)]) == phrase:
                for x in toks[i : i + len(phrase)]:
                    x.cls, x.fixed, x.plain, x.particle = OTHER, True, False, False
                break
    return toks


def _namelike(t: _Tok) -> bool:
    """Whether ``t`` may be part of a name: any capitalized word but a clinical or function word, a name, an
    unknown word."""
    return (
        t.cls in (STRONG, INITIAL)
        or t.particle
        or (t.cap and t.cls in (AMBIG, WEAK, UNKNOWN))
        or (not t.cap and t.cls in (AMBIG, UNKNOWN))
    )


def _joined(text: str, a: _Tok, b: _Tok) -> bool:
    sep = text[a.end : b.start]
    if not _JOIN.fullmatch(sep) or ("," in sep and not (a.cap and b.cap)):
        return False
    if _namelike(a) and _namelike(b):
        return True
    if " " not in sep and "," not in sep:
        return False
    if a.cap and b.cap:  # "Bas Black", "Van Wessex Maria": a capitalized ordinary word in a name
        return (b.plain and _namelike(a)) or (
            a.plain and b.cls in (STRONG, UNKNOWN) and ("," in sep or not _initial_word(text, a))
        )
    return not a.cap and not b.cap and STRONG in (a.cls, b.cls) and WEAK in (a.cls, b.cls)  # "bobby wilson"


def _initial_word(text: str, t: _Tok) -> bool:
    """Whether ``t`` begins a sentence (or the text)."""
    before = text[: t.start].rstrip()
    return not before or before[-1] in ".!?:;\n"


def _before_name(text: str, toks: list[_Tok], i: int) -> bool:
    """Whether ``toks[i]``, an ordinary word or a name, stands before a name word ("pt mirco payne")."""
    t, nxt = toks[i], toks[i + 1] if i + 1 < len(toks) else None
    return (
        nxt is not None
        and (t.plain or t.named)
        and (nxt.named or nxt.unknown)
        and re.fullmatch(r"[ \t]+", text[t.end : nxt.start]) is not None
    )


def _forced(text: str, toks: list[_Tok], lex: Lexicon) -> set[int]:
    """Tokens taken for a name by context: after a title, after a name field, after "discussed with"."""
    out: set[int] = set()
    for i, (t, nxt) in enumerate(zip(toks, toks[1:])):
        if t.fixed or nxt.fixed or not re.fullmatch(r"\.?[ \t]*[:#]?[ \t]*", text[t.end : nxt.start]):
            continue
        word = len(nxt.key) > 1 or nxt.cls == INITIAL
        if t.key in TITLES:
            take = nxt.cap or nxt.cls != OTHER or not in_vocab(nxt.key, lex, FUNC | CLIN)
        elif t.key in _SOFT:
            take = (
                (nxt.cap and word and (nxt.cls != OTHER or not in_vocab(nxt.key, lex)))
                or nxt.cls in (STRONG, UNKNOWN)
                or _before_name(text, toks, i + 1)
            )
        else:
            take = (
                word
                and t.key in _VERBAL_LAST
                and (
                    nxt.named or nxt.cls == UNKNOWN or (nxt.cap and nxt.cls != OTHER) or _before_name(text, toks, i + 1)
                )
                and _VERBAL.search(text, max(0, nxt.start - 40), nxt.start) is not None
            )
        if not take:
            continue
        out.add(i + 1)
        for j in range(i + 2, min(i + 5, len(toks))):  # the rest of the name
            a, b = toks[j - 1], toks[j]
            lower_surname = (
                j == i + 2
                and t.key not in TITLES
                and not a.cap
                and not b.cap
                and len(b.key) > 1
                and not in_vocab(b.key, lex, FUNC)
            )  # "discussed with john black"
            if _JOIN.fullmatch(text[a.end : b.start]) and (
                b.cap and (b.cls != OTHER or b.plain) or _namelike(b) or lower_surname
            ):
                out.add(j)
            else:
                break
    return out


def name_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of personal names and US places in ``text`` (see the module docstring)."""
    lex = lexicon()
    toks = _tokens(text, lex)
    taken = _forced(text, toks, lex)
    groups: list[list[int]] = []
    for i, t in enumerate(toks):
        if i and _joined(text, toks[i - 1], t):
            if groups and groups[-1][-1] == i - 1:
                groups[-1].append(i)
            else:
                groups.append([i - 1, i])
        elif _namelike(t):
            groups.append([i])
    for g in groups:
        members = [toks[i] for i in g]
        if all(m.particle for m in members):
            continue
        caps = [m for m in members if m.cap and not m.particle]
        sure = any(
            (m.cls == STRONG and (m.cap or len(g) > 1)) or (m.cls == UNKNOWN and m.cap) or m.initials >= 2
            for m in members
        )
        comma = len(g) == 2 and "," in text[members[0].end : members[1].start]  # "LOSEKANN, ADEKITAN"
        pair = len(caps) >= 2 and (
            any(m.cls in (AMBIG, INITIAL) for m in caps)
            or comma
            or (any(m.named for m in caps) and any(m.unknown for m in caps))
        )
        trailer = any(m.cls != WEAK for m in members) and _TRAILER.match(text, members[-1].end)
        nxt = toks[g[-1] + 1] if g[-1] + 1 < len(toks) else None
        if (
            not trailer
            and nxt is not None
            and not nxt.cap
            and not members[-1].cap
            and len(nxt.key) > 1
            and re.fullmatch(r"[ \t]+", text[members[-1].end : nxt.start])
            and _TRAILER.match(text, nxt.end)
            and not in_vocab(nxt.key, lex, FUNC)
        ):
            g, trailer = [*g, g[-1] + 1], True  # "gilberto glasses 54m"
        enclosed = (
            len(caps) >= 2
            and text[: members[0].start].rstrip().endswith("(")
            and text[members[-1].end :].lstrip().startswith(")")
        )  # "(Antoni Dias)"
        before = toks[g[0] - 1] if g[0] else None
        if (
            trailer
            and before is not None
            and before.cap
            and before.plain
            and re.fullmatch(r"[ \t]+", text[before.end : members[0].start])
        ):
            g = [g[0] - 1, *g]  # "Sil Ciampi, 67F"
        if sure or pair or trailer or enclosed or taken & set(g):
            taken.update(g)
    spans = [(toks[i].start, toks[i].end) for i in sorted(taken)]
    return spans + _place_spans(text, toks, taken, lex)


def _place_spans(text: str, toks: list[_Tok], taken: set[int], lex: Lexicon) -> list[tuple[int, int]]:
    spans = []
    for i, t in enumerate(toks):
        if i in taken or not t.cap:
            continue
        if (
            i
            and toks[i - 1].key in _MOVED_LAST
            and _MOVED.search(text, max(0, t.start - 30), t.start)
            and not in_vocab(t.key, lex)
        ):  # "moved from Hanoi"
            run = [t]
            for nxt in toks[i + 1 : i + 3]:
                if nxt.cap and re.fullmatch(r"\.?[ \t]+", text[run[-1].end : nxt.start]) and not in_vocab(nxt.key, lex):
                    run.append(nxt)
                else:
                    break
            spans.append((t.start, run[-1].end))
            continue
        if t.key not in lex.places:
            continue
        for place in lex.places[t.key]:
            run = toks[i : i + len(place)]
            if (
                len(run) < len(place)
                or tuple(x.key for x in run) != place
                or any(not re.fullmatch(r"\.?[ \t]+", text[a.end : b.start]) for a, b in zip(run, run[1:]))
            ):
                continue
            end = run[-1].end
            clinical = all(x.cls in (OTHER, WEAK) and in_vocab(x.key, lex) for x in run)
            state = _STATE_ABBR.match(text, end)
            after = toks[i + len(place)] if i + len(place) < len(toks) else None
            before = toks[i - 1] if i else None
            if state and not (clinical and "," not in state.group()):
                spans.append((t.start, state.end()))
            elif (
                before is not None
                and before.key in _LOCATIVE
                and not clinical
                and re.fullmatch(r"[ \t]+", text[before.end : t.start])
                and not (after is not None and in_vocab(after.key, lex, CLIN) and after.start - end <= 1)
            ):
                spans.append((t.start, end))
            else:
                continue
            break
    return spans
