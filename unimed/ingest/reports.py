"""Free-text reports and captions: section extraction, template-noise removal and a PHI scrubber.

Every free text that becomes a caption (a report, a manifest caption) goes through :func:`clean_text`
in one of two modes:

* ``"scrub"`` (default): :func:`scrub` removes what the HIPAA Safe Harbor list names in free text.
  Patterns find dates (every element but the year; bare years are removed too, erring on the side of
  removal), times, ages over 89 in digits or words, phone and fax numbers, e-mail and web addresses,
  IP addresses, SSNs, record, accession, account, health-plan, licence, vehicle and device numbers
  with or without a label, long numbers and letter-digit codes, street addresses, ZIP codes and
  institution names; dictionaries find personal names with or without a title, in any case, and
  initials, and US cities and counties (:mod:`unimed.ingest.names`). Clinical words and eponyms
  are never taken for names unless a title or name field stands before them.
* ``"findings"``: keeps only the sentences made entirely of clinical vocabulary (the lexicon in
  ``vocab/``, the caption banks, function words), with numbers only as measurements (``3 cm``),
  vertebral levels (``C5-6``), grades and scores; every other sentence is dropped, and what is kept
  is scrubbed as well.

Removed text becomes ``___`` (the placeholder MIMIC-CXR uses), so sentences keep their shape.
:func:`report_captions` keeps the FINDINGS and IMPRESSION sections of a radiology report.
"""

from __future__ import annotations

import re

from unimed.ingest import lexicon as lx
from unimed.ingest.names import TITLES, name_spans

__all__ = [
    "PLACEHOLDER",
    "MODES",
    "scrub",
    "scrub_spans",
    "clean_text",
    "findings_only",
    "split_sections",
    "report_captions",
]

PLACEHOLDER = "___"
MODES = ("scrub", "findings")

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_TITLES = (
    r"(?:(?:dr|drs|mr|mrs|ms|mx|prof)\.?|(?:doctor|miss|professor|nurse|rn|np|pa-c|md|"
    r"radiologist|resident|fellow|attending|technologist|tech)(?!\.))"
)
_NAME_FIELDS = r"(?:patient(?:'s)?\s+name|name)"  # removed with the name
_NAME_VERBS = (
    r"(?:signed\s+by|electronically\s+signed(?:\s+by)?|dictated\s+by|transcribed\s+by|reported\s+by|"
    r"read\s+by|reviewed\s+by|verified\s+by|approved\s+by|referring\s+(?:physician|doctor)|"
    r"ordering\s+(?:physician|provider|doctor)|physician|provider|discussed\s+with|d/w|communicated\s+to|"
    r"notified|called\s+to|paged)"
)  # kept before the removed name
_NAME = r"(?:[A-Z][A-Za-z'\-]+|[A-Z]\.)"  # a capitalized word or an initial
_ID_LABELS = (
    r"(?:mrn|medical\s+record|accession|acc(?:\.|\s)?(?:no|#)|ssn|social\s+security|patient\s+id|pid|id|"
    r"case|study\s+id|record|account|acct|encounter|visit|unit\s+no|fin|csn|order|member|subscriber|"
    r"policy|(?:insurance|plan)\s+group|health\s+plan|insurance|medicaid|medicare|beneficiary|claim|"
    r"licen[cs]e|lic|dea|npi|certificate|badge|employee|passport|driver'?s?\s+licen[cs]e|dl|"
    r"(?:license\s+)?plate|vin|vehicle|serial|s/n|sn|lot|device|implant|udi|imei|barcode|requisition|"
    r"specimen|confirmation|reference|ref)"
)
_NUMBER_WORDS = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
)
_OLD_WORDS = (
    rf"(?:ninety(?:[\s-]+{_NUMBER_WORDS})?|(?:one|a)[\s-]+hundred(?:[\s-]+(?:and[\s-]+)?{_NUMBER_WORDS}"
    rf"(?:[\s-]+{_NUMBER_WORDS})?)?|hundred)"
)
_AGE_UNIT = r"(?:[\s-]*(?:years?|yrs?|y/?o|yo|y\.o\.?|year-old|years-old|yr-old|-?year|-?yr))"
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Way|Court|Ct|Place|Pl|Highway|Hwy|"
    r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Square|Sq|Trail|Trl|Pike|Alley|Row|Crescent|Close|Plaza|Loop|"
    r"Turnpike|Expressway|Freeway)"
)
_INSTITUTION = (
    r"(?:Hospitals?|Medical\s+Cent(?:er|re)|Health\s+(?:Cent(?:er|re)|System|Care|Services)|Healthcare|"
    r"Clinics?|Infirmary|Cancer\s+(?:Cent(?:er|re)|Institute)|Nursing\s+Home|Hospice|Medical\s+Group|"
    r"Sanatorium|Rehabilitation\s+(?:Cent(?:er|re)|Hospital)|Imaging\s+(?:Cent(?:er|re)|Associates)|"
    r"Radiology\s+(?:Associates|Group|Partners)|Surgical\s+Cent(?:er|re)|Urgent\s+Care)"
)
_I = re.IGNORECASE

_DIGIT, _MASKED = re.compile(r"\d"), re.compile(r"_+")
_DIGITS = ("<digit>",)  # the gate of patterns that need a digit


def _gated(
    gate: tuple[str, ...] | None, pattern: str, flags: int = 0
) -> tuple[re.Pattern[str], tuple[str, ...] | None]:
    """A pattern and the strings one of which the lower-cased text must hold for it to be tried (speed)."""
    return re.compile(pattern, flags), gate


#: Applied in this order; each match is removed.
_PATTERNS: list[tuple[re.Pattern[str], tuple[str, ...] | None]] = [
    # e-mail, web and IP addresses
    _gated(("@",), r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    _gated(("http", "www", "ftp"), r"\b(?:https?://|ftp://|www\.)\S+", _I),
    _gated(
        None,
        r"\b(?:[a-z0-9-]+\.)+(?:com|org|net|edu|gov|mil|int|io|info|biz|health|us|uk|ca|de|fr|au|in|"
        r"nl|ch|it|es)\b(?:/\S*)?",
        _I,
    ),
    _gated(_DIGITS, r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
    _gated(_DIGITS, r"\b[0-9a-f]{1,4}(?::[0-9a-f]{0,4}){3,7}\b|\b(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}\b", _I),
    # identifiers with a field name: MRN, accession, plan, licence, plate, serial ... (one to three parts)
    _gated(
        _DIGITS,
        rf"\b{_ID_LABELS}(?:\s+(?:number|no\.?|num|#|id|identifier|code))*\s*[:#=]?\s*#?\s*"
        r"(?P<v>(?:[A-Z]{1,4}[\s-])?(?=[A-Z0-9\-/.]*\d)[A-Z0-9][A-Z0-9\-/.]{2,}[A-Z0-9](?:[\s-]\d(?:[A-Z0-9\-/.]*[A-Z0-9])?){0,2})",
        _I,
    ),
    _gated(_DIGITS, r"\b\d{3}-\d{2}-\d{4}\b|\b\d{3}\s\d{2}\s\d{4}\b"),  # SSN
    _gated(_DIGITS, r"\b\d[A-Z][A-Z0-9]\d-?[A-Z][A-Z0-9]\d-?[A-Z]{2}\d{2}\b"),  # Medicare beneficiary identifier
    # street addresses (before dates and years: "2098 Maple Avenue")
    _gated(
        _DIGITS,
        rf"\b\d{{1,6}}[A-Z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z0-9][\w'’.-]*\s+){{1,4}}{_STREET}\b\.?"
        r"(?:,?\s*(?i:apt|apartment|suite|ste|unit|fl|floor|rm|room|#)\.?\s*#?\s*[\w-]+)?",
    ),
    _gated(_DIGITS, r"\b\d{1,6}\s+(?:[a-z]+\s+){1,3}(?:street|avenue|ave|boulevard|blvd|road)\b\.?"),
    # phone and fax numbers
    _gated(
        _DIGITS, r"(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s*|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b(?:\s*(?:ext\.?|x)\s*\d{1,5})?", _I
    ),
    _gated(_DIGITS, r"\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}\b"),
    _gated(
        _DIGITS,
        r"\b(?:tel|phone|fax|pager|beeper|cell|mobile|ext|extension)\b\.?\s*(?:number|no\.?|#)?\s*[:#]?\s*"
        r"(?P<v>\+?[\d()\s.\-]{3,}\d)",
        _I,
    ),
    # dates: numeric, ISO, with month names, holidays; then times; then bare years and decades
    _gated(_DIGITS, r"\b\d{1,4}([/.\-])\d{1,2}\1\d{1,4}\b"),
    _gated(_DIGITS, rf"\b\d{{1,2}}(?:st|nd|rd|th)?(?:\s+of)?[\s\-./]+{_MONTHS}\.?,?(?:[\s\-./]+'?\d{{2,4}})?\b", _I),
    _gated(_DIGITS, rf"\b{_MONTHS}\.?[\s\-./]+\d{{1,2}}(?:st|nd|rd|th)?\b(?:,?[\s\-./]+'?\d{{2,4}}\b)?", _I),
    _gated(_DIGITS, rf"\b{_MONTHS}\.?,?\s+(?:of\s+)?'?\d{{2,4}}\b", _I),
    _gated(
        None,
        r"\b(?:christmas|thanksgiving|easter|halloween|new\s+year'?s?(?:\s+(?:day|eve))?|"
        r"independence\s+day|memorial\s+day|labor\s+day|veterans\s+day|hanukkah|ramadan|diwali)(?:\s+(?:day|eve))?\b",
        _I,
    ),
    _gated(_DIGITS, r"(?<![\d./-])\d{1,2}/\d{2,4}\b(?!\.\d)"),  # month/year
    _gated(_DIGITS, r"(?<![\d./-])(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])\b(?![/.]\d|\s+of\b)"),  # month/day
    _gated(_DIGITS, r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*(?:[ap]\.?m\.?|hrs?|hours)(?![^\W_]))?", _I),
    _gated(_DIGITS, r"\b\d{3,4}\s*(?:hrs|hours|h)\b", _I),
    _gated(_DIGITS, r"\b(?:18|19|20)\d{2}(?:'?s)?\b"),
    # ages over 89, in digits or in words (ages up to 89 may stay under Safe Harbor)
    _gated(_DIGITS, rf"\b(?:9\d|1[0-4]\d)(?={_AGE_UNIT}|\s*(?:yo)?\s*(?:[MF]|male|female|man|woman)\b)", _I),
    _gated(_DIGITS, r"\b(?:aged?|age\s+of)\s*:?\s*(?P<v>9\d|1[0-4]\d)\b", _I),
    _gated(("ninet", "hundred"), rf"\b{_OLD_WORDS}(?={_AGE_UNIT}|\s+(?:years?|yrs?)\b)", _I),
    _gated(("ninet", "hundred"), rf"\b(?:aged?|age\s+of)\s*:?\s*(?P<v>{_OLD_WORDS})\b", _I),
    _gated(
        ("9", "ninet", "genarian", "tenarian"),
        r"\b(?:in\s+(?:his|her|their)\s+(?:early\s+|mid\s*-?\s*|late\s+)?(?:9\d's?|nineties)|nonagenarian|"
        r"centenarian)\b",
        _I,
    ),
    # names after titles and name fields
    _gated(None, rf"\b(?i:{_TITLES})\s+(?-i:{_NAME}(?:\s+{_NAME}){{0,2}})(?:\s*,\s*(?:MD|DO|PhD|RN|NP|PA)\b\.?)?"),
    _gated(None, rf"\b(?i:{_NAME_FIELDS})\s*[:\-]?\s*(?:(?i:{_TITLES})\s+)?(?-i:{_NAME}(?:\s+{_NAME}){{0,2}})"),
    _gated(None, rf"\b(?i:{_NAME_VERBS})\s*[:\-]?\s*(?P<v>(?:(?i:{_TITLES})\s+)?(?-i:{_NAME}(?:\s+{_NAME}){{0,2}}))"),
    _gated(None, rf"\b{_NAME}(?:\s+{_NAME}){{0,2}},\s*(?:MD|DO|PhD|RN|NP|PA-C|FRCR|FRCPC)\b\.?"),
    # places: street addresses, PO boxes, ZIP codes, counties, institutions with a proper name
    _gated(None, r"\b(?:[A-Z][a-z]+\s+){1,3}(?:Street|Avenue|Boulevard|Road|Lane|Drive|Terrace|Parkway)\b"),
    _gated(_DIGITS, r"\bP\.?\s?O\.?\s+Box\s+\d+\b", _I),
    _gated(_DIGITS, r"\b\d{5}-\d{4}\b"),
    _gated(None, r"\b(?:[A-Z][a-z]+\s+){1,2}(?:County|Parish|Borough)\b"),
    _gated(
        None,
        rf"\b(?:(?:St|Mt|Ft)\.?\s+|(?:Saint|Mount|Fort)\s+)?(?:[A-Z][\w'’.&-]*\s+(?:(?:of|for|and|the|&)\s+)*)"
        rf"{{1,6}}{_INSTITUTION}\b(?:\s+(?:of|for|at)\s+(?:the\s+)?(?:[A-Z][\w'’.-]*\s*){{1,4}})?",
    ),
    _gated(
        None,
        rf"\b(?:{_INSTITUTION}|University|Institute|College)\s+(?:of|for|at)\s+(?:the\s+)?"
        r"(?:[A-Z][\w'’.-]*(?:\s+(?:of|the)(?=\s+[A-Z]))*\s*){1,5}",
    ),
    # any remaining long digit run (record numbers, ZIP codes, pager numbers) and letter-digit codes
    _gated(_DIGITS, r"\b(?=(?:[A-Z\-]*\d){4})(?=[A-Z0-9\-]*[A-Z])[A-Z0-9][A-Z0-9\-]{5,}\b"),
    _gated(_DIGITS, r"\b\d{5,}\b"),
    _gated(_DIGITS, r"\b(?=(?:-?\d){6})\d+(?:-\d+)+\b"),  # hyphenated number groups (case and specimen numbers)
]

#: Placeholders of upstream de-identification: a sentence holding one lost a word and is dropped.
_UPSTREAM = re.compile(r"\[\*\*[^\]]*\*\*\]|\bX{3,}\b|_{2,}")
_DROPPED = "\x00"

#: Template debris, removed before scrubbing.
_NOISE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bx-(?:XXXX|___)", _I), "x-ray"),
    (re.compile(r"\b(?:FINAL REPORT|PRELIMINARY REPORT|WET READ(?: VERSION)?|ADDENDUM)\b:?", _I), " "),
    (re.compile(r"\bEND OF (?:IMPRESSION|REPORT)\b\.?", _I), " "),
    (re.compile(r"(?:^|(?<=[.\n]))\s*I have (?:personally )?reviewed the images[^.]*\.", _I), " "),
    (re.compile(r"(?:electronically\s+)?signed(?:\s+by)?\s*:?[^\n]*$", _I | re.M), " "),
    (re.compile(r"(?:dictated|transcribed)\s+by\s*:?[^\n]*$", _I | re.M), " "),
    (re.compile(r"(?:^|\n)\s*[-=*_#]{3,}\s*(?=\n|$)"), "\n"),
]

#: Section headers of radiology reports, as written in MIMIC-CXR, OpenI and hospital templates.
_SECTIONS = (
    "FINDINGS",
    "IMPRESSION",
    "CONCLUSION",
    "CONCLUSIONS",
    "SUMMARY",
    "INDICATION",
    "INDICATIONS",
    "HISTORY",
    "CLINICAL HISTORY",
    "CLINICAL INFORMATION",
    "REASON FOR EXAM",
    "REASON FOR EXAMINATION",
    "COMPARISON",
    "COMPARISONS",
    "TECHNIQUE",
    "EXAMINATION",
    "EXAM",
    "PROCEDURE",
    "NOTIFICATION",
    "RECOMMENDATION",
    "RECOMMENDATIONS",
    "OPINION",
    "REPORT",
)
_HEADER = re.compile(r"(?:^|(?<=\s))(" + "|".join(sorted(_SECTIONS, key=len, reverse=True)) + r")\s*:", _I)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_IMPRESSION = ("IMPRESSION", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "OPINION")

#: Findings mode: the numbers a findings sentence may hold, and the words before a bare grade or score.
_UNIT = (
    r"(?:mm|cm|m|ml|mL|cc|l|%|percent|hu|HU|mmhg|mmHg|mg|g|kg|mcg|mci|mCi|msv|mSv|mgy|mGy|degrees?|°|"
    r"cm/s|m/s|ml/min|x|mm2|cm2|mm3|cm3|weeks?|days?|hours?|months?)"
)
_MEASURE = re.compile(
    rf"(?<![\w.])\d+(?:\.\d+)?(?:\s*(?:-|to|x|×)\s*\d+(?:\.\d+)?)*\s*{_UNIT}(?![\w])"
    r"|(?<![\w.])\.\d+\s*(?:mm|cm)\b"
)
_LEVEL = re.compile(
    r"(?<![\w.])(?:[CTLS]\d{1,2}(?:\s*-\s*[CTLS]?\d{1,2})?|[pcy]?T[0-4][a-d]?(?:N[0-3][a-c]?)?"
    r"(?:M[01][a-c]?)?|\d{1,2}(?:st|nd|rd|th))(?![\w])"
)
_SCALE = frozenset(
    """grade group stage category score class type level segment zone series image gleason bosniak
    birads bi-rads lirads li-rads tirads ti-rads pirads pi-rads lung-rads ratio index suv suvmax ki-67 ki67 view
    pattern figure ao weber salter harris tier phase size number times""".split()
)
_TERMS = re.compile(r"\b(?:covid-19|sars-cov-2|ki-67|her-2|ttf-1|d2-40|ae1/ae3|cam5\.2|3d|2d|4d)\b", _I)
_FWORD = re.compile(r"[^\W_]*[^\W\d_](?:[^\W_]|['’](?=[^\W\d_]))*|\d+|_+|[^\w\s]")


def _mask(m: re.Match[str]) -> str:
    """The match with its identifier (group ``v`` when there is one, else all of it) as underscores."""
    if "v" not in m.re.groupindex or m.start("v") < 0:
        return "_" * len(m.group())
    a, b = m.start("v") - m.start(), m.end("v") - m.start()
    return m.group()[:a] + "_" * (b - a) + m.group()[b:]


def scrub_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` that :func:`scrub` removes, sorted and merged."""
    work, low = text, text.lower()
    digits = _DIGIT.search(text) is not None
    for pattern, gate in _PATTERNS:
        if gate is None or (digits if gate is _DIGITS else any(g in low for g in gate)):
            work = pattern.sub(_mask, work)
    spans = [m.span() for m in _MASKED.finditer(work)]  # what the patterns took, and upstream "___"
    spans += name_spans(text)  # on the original: a pattern may have taken part of a name
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def scrub(text: str) -> str:
    """Replace protected health information in free text with ``___`` (see the module docstring)."""
    out, last = [], 0
    for a, b in scrub_spans(text):
        out += [text[last:a], PLACEHOLDER]
        last = b
    out.append(text[last:])
    return re.sub(r"___(?:[\s,/\-]*___)+", PLACEHOLDER, "".join(out))


def _findings_sentence(sentence: str, lex: lx.Lexicon) -> bool:
    """Whether every word of ``sentence`` is clinical vocabulary and every number a measurement or level."""
    masked = _LEVEL.sub(" ", _MEASURE.sub(" ", _TERMS.sub(" ", sentence)))
    prev, prev_function = "", True
    for m in _FWORD.finditer(masked):
        tok = m.group()
        if tok[0].isdigit():
            if prev not in _SCALE or len(tok) > 3:  # "grade 2", "Gleason 3+4=7"; not "MRN 12345"
                return False
        elif tok[0] == "_":
            return False  # a placeholder: this sentence lost a word already
        elif tok[0].isalpha():
            if len(tok) == 1:
                if tok.isupper() and tok != "A" and prev_function:  # "Kerley B", "zone A"; not "by J."
                    return False
            elif not lx.in_vocab(tok, lex) or (lx.key(tok) in TITLES and not tok.isupper()):
                return False  # a word outside the vocabulary, or a title ("Dr", not "DR")
            prev = lx.key(tok)
            prev_function = len(tok) == 1 or bool(lex.get(prev) & lx.FUNC)
    return True


def findings_only(text: str) -> str:
    """The sentences of ``text`` made entirely of clinical vocabulary (see the module docstring)."""
    lex = lx.lexicon()
    return " ".join(s for s in _SENTENCE.split(text) if s.strip() and _findings_sentence(s, lex))


def clean_text(text: str, mode: str = "scrub") -> str:
    """Remove template noise and upstream placeholders, then scrub PHI (``mode="scrub"``) or keep only
    findings sentences and scrub those (``mode="findings"``), and tidy whitespace."""
    if mode not in MODES:
        raise ValueError(f"text mode {mode!r} is not one of {', '.join(MODES)}")
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    text = _UPSTREAM.sub(_DROPPED, text)
    if _DROPPED in text:
        text = " ".join(s for s in _SENTENCE.split(text) if _DROPPED not in s)
    if mode == "findings":
        text = findings_only(text)
    return _tidy(scrub(text))


def _tidy(text: str) -> str:
    """Collapse whitespace and the punctuation debris that removals leave."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    text = re.sub(r"([.,;:])(?:\s*[.,;:])+", r"\1", text)
    text = re.sub(r"(?:^|(?<=\s))\d+\.\s*(?=\d+\.|$)", "", text)  # empty list items
    text = re.sub(r"\(\s*\)", "", text)
    return re.sub(r"\s+", " ", text).strip(" ,;:")


def split_sections(text: str) -> dict[str, str]:
    """The report's sections by upper-case header (text before the first header under ``""``)."""
    parts: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    head = text[: matches[0].start()] if matches else text
    if head.strip():
        parts[""] = head
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = re.sub(r"\s+", " ", m.group(1)).upper()
        body = text[m.end() : end]
        parts[name] = (parts.get(name, "") + " " + body).strip() if name in parts else body
    return parts


def report_captions(text: str, max_chars: int = 1200, mode: str = "scrub") -> list[str]:
    """Captions from one report: findings with impression, and each alone; cleaned in ``mode``.

    A report with neither section (a caption, a note without headers) gives its whole cleaned text.
    Empty results (a report that was only boilerplate, or had no findings sentence) give an empty list.
    """
    sections = split_sections(text)
    findings = clean_text(sections.get("FINDINGS", ""), mode)
    impression = clean_text(" ".join(sections[k] for k in _IMPRESSION if k in sections), mode)
    if findings or impression:
        both = f"{findings} {impression}".strip() if findings and impression else findings or impression
        caps = [both, findings, impression]
    else:
        body = sections.get("", "") if len(sections) > 1 else text
        caps = [clean_text(body, mode)]
    out = []
    for c in caps:
        c = c[:max_chars].rsplit(" ", 1)[0] if len(c) > max_chars else c
        if len(re.sub(r"[\W_]+", "", c)) >= 3:  # more than debris
            out.append(c)
    return list(dict.fromkeys(out))
