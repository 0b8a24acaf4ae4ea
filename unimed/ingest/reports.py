"""Free-text reports and captions: section extraction, template-noise removal and a PHI scrubber.

Every free text that becomes a caption (a report, a manifest caption) goes through :func:`scrub`,
which removes what the HIPAA Safe Harbor list names where a pattern can find it: dates (all but a
bare year are identifying; bare years are removed too, erring on the side of removal), times,
names after titles and name fields, identifiers (record, accession and other long numbers, mixed
letter-digit codes), phone and fax numbers, e-mail and web addresses, street addresses, ages over
89. Removed text becomes ``___`` (the placeholder MIMIC-CXR uses), so sentences keep their shape.

Names *without* a title or field label cannot be found by patterns; reports from an archive that
writes them so need a de-identification tool upstream. :func:`report_captions` keeps the FINDINGS
and IMPRESSION sections of a radiology report, which rarely hold names.
"""

from __future__ import annotations

import re

__all__ = ["PLACEHOLDER", "scrub", "clean_text", "split_sections", "report_captions"]

PLACEHOLDER = "___"

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_TITLES = (r"(?:(?:dr|drs|mr|mrs|ms|mx|prof)\.?|(?:doctor|miss|professor|nurse|rn|np|pa-c|md|"
           r"radiologist|resident|fellow|attending|technologist|tech)(?!\.))")
_NAME_FIELDS = (r"(?:patient(?:'s)?\s+name|name|signed\s+by|electronically\s+signed(?:\s+by)?|dictated\s+by|"
                r"transcribed\s+by|reported\s+by|read\s+by|reviewed\s+by|verified\s+by|approved\s+by|"
                r"referring\s+(?:physician|doctor)|ordering\s+(?:physician|provider|doctor)|physician|"
                r"provider|discussed\s+with|d/w|communicated\s+to|notified|called\s+to|paged)")
_NAME = r"(?:[A-Z][A-Za-z'\-]+|[A-Z]\.)"  # a capitalized word or an initial
_I = re.IGNORECASE

#: (pattern, flags) in the order applied; each match becomes the placeholder.
_PATTERNS: list[re.Pattern[str]] = [
    # e-mail and web addresses
    re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    re.compile(r"\b(?:https?://|www\.)\S+", _I),
    # identifiers with a field name: MRN, accession, ID, SSN ...
    re.compile(r"\b(?:mrn|medical\s+record(?:\s+(?:number|no\.?))?|accession(?:\s+(?:number|no\.?))?|acc(?:\.|\s)?(?:no|#)|"
               r"ssn|social\s+security(?:\s+number)?|patient\s+id|pid|id|case|study\s+id|record|account|acct|"
               r"encounter|visit|unit\s+no|fin|csn|order)\s*(?:number|no\.?|#)?\s*[:#=]?\s*[A-Z0-9][A-Z0-9\-/.]*\d[A-Z0-9\-/.]*",
               _I),
    re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),  # SSN
    # phone and fax numbers
    re.compile(r"(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s*|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b(?:\s*(?:ext\.?|x)\s*\d{1,5})?", _I),
    re.compile(r"\b(?:tel|phone|fax|pager|beeper|cell|mobile)\b\.?\s*[:#]?\s*\+?[\d()\s.\-]{4,}\d", _I),
    # dates: numeric, ISO, with month names; then times; then bare years
    re.compile(r"\b\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4}\b"),
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?(?:\s+of)?[\s\-]+{_MONTHS}\.?,?(?:[\s\-]+\d{{2,4}})?\b", _I),
    re.compile(rf"\b{_MONTHS}\.?[\s\-]+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{2,4}})?\b", _I),
    re.compile(rf"\b{_MONTHS}\.?,?\s+(?:of\s+)?\d{{4}}\b", _I),
    re.compile(r"\b\d{1,2}/\d{2,4}\b"),  # month/year
    re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?|hrs?|hours)?\b", _I),
    re.compile(r"\b\d{3,4}\s*(?:hrs|hours)\b", _I),
    re.compile(r"\b(?:18|19|20)\d{2}\b"),
    # names after titles and name fields
    re.compile(rf"\b(?i:{_TITLES})\s+(?-i:{_NAME}(?:\s+{_NAME}){{0,2}})(?:\s*,\s*(?:MD|DO|PhD|RN|NP|PA)\b\.?)?"),
    re.compile(rf"\b(?i:{_NAME_FIELDS})\s*[:\-]?\s*(?:(?i:{_TITLES})\s+)?(?-i:{_NAME}(?:\s+{_NAME}){{0,2}})"),
    re.compile(rf"\b{_NAME}(?:\s+{_NAME}){{0,2}},\s*(?:MD|DO|PhD|RN|NP|PA-C|FRCR|FRCPC)\b\.?"),
    # places: street addresses, institutions with a proper name
    re.compile(r"\b\d{1,6}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|"
               r"Way|Court|Ct|Place|Pl|Highway|Hwy)\b\.?"),
    re.compile(r"\b(?:[A-Z][a-z]+\s+){1,4}(?:Hospital|Medical\s+Center|Clinic|Health\s+System|Infirmary|"
               r"University\s+Hospital)\b"),
    # ages over 89 (ages up to 89 may stay under Safe Harbor)
    re.compile(r"\b(?:9\d|1[0-4]\d)(?=\s*(?:-|\s)?\s*(?:years?|yrs?|y/?o|yo|year-old|years-old|-year|-yr|y\.o\.)\b)", _I),
    re.compile(r"\baged?\s*:?\s*(?:9\d|1[0-4]\d)\b", _I),
    # any remaining long digit run (record numbers, zip codes, pager numbers)
    re.compile(r"\b\d{5,}\b"),
    re.compile(r"\b(?=(?:[A-Z\-]*\d){4})(?=[A-Z0-9\-]*[A-Z])[A-Z0-9][A-Z0-9\-]{5,}\b"),
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
_SECTIONS = ("FINDINGS", "IMPRESSION", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "INDICATION", "INDICATIONS",
             "HISTORY", "CLINICAL HISTORY", "CLINICAL INFORMATION", "REASON FOR EXAM", "REASON FOR EXAMINATION",
             "COMPARISON", "COMPARISONS", "TECHNIQUE", "EXAMINATION", "EXAM", "PROCEDURE", "NOTIFICATION",
             "RECOMMENDATION", "RECOMMENDATIONS", "OPINION", "REPORT")
_HEADER = re.compile(r"(?:^|(?<=\s))(" + "|".join(sorted(_SECTIONS, key=len, reverse=True)) + r")\s*:", _I)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_IMPRESSION = ("IMPRESSION", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "OPINION")


def _tidy(text: str) -> str:
    """Collapse whitespace and the punctuation debris that removals leave."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    text = re.sub(r"([.,;:])(?:\s*[.,;:])+", r"\1", text)
    text = re.sub(r"(?:^|(?<=\s))\d+\.\s*(?=\d+\.|$)", "", text)  # empty list items
    text = re.sub(r"\(\s*\)", "", text)
    return re.sub(r"\s+", " ", text).strip(" ,;:")


def scrub(text: str) -> str:
    """Replace protected health information in free text with ``___`` (see the module docstring)."""
    out = text
    for pattern in _PATTERNS:
        out = pattern.sub(PLACEHOLDER, out)
    out = re.sub(r"___(?:[\s,/\-]*___)+", PLACEHOLDER, out)
    return out


def clean_text(text: str) -> str:
    """Remove template noise and upstream placeholders, scrub PHI, and tidy whitespace."""
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    text = _UPSTREAM.sub(_DROPPED, text)
    if _DROPPED in text:
        text = " ".join(s for s in _SENTENCE.split(text) if _DROPPED not in s)
    return _tidy(scrub(text))


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
        body = text[m.end():end]
        parts[name] = (parts.get(name, "") + " " + body).strip() if name in parts else body
    return parts


def report_captions(text: str, max_chars: int = 1200) -> list[str]:
    """Captions from one report: findings with impression, and each alone; cleaned and scrubbed.

    A report with neither section (a caption, a note without headers) gives its whole cleaned text.
    Empty results (a report that was only boilerplate) give an empty list.
    """
    sections = split_sections(text)
    findings = clean_text(sections.get("FINDINGS", ""))
    impression = clean_text(" ".join(sections[k] for k in _IMPRESSION if k in sections))
    if findings or impression:
        both = f"{findings} {impression}".strip() if findings and impression else findings or impression
        caps = [both, findings, impression]
    else:
        body = sections.get("", "") if len(sections) > 1 else text
        caps = [clean_text(body)]
    out = []
    for c in caps:
        c = c[:max_chars].rsplit(" ", 1)[0] if len(c) > max_chars else c
        if len(re.sub(r"[\W_]+", "", c)) >= 3:  # more than debris
            out.append(c)
    return list(dict.fromkeys(out))
