"""A planted-PHI report corpus: realistic radiology and pathology sentences with known identifiers.

Used by ``benchmarks/scrub.py`` and the scrubber's tests. Every sentence comes from a hand-written
template; the identifiers planted in it are recorded as character spans with their HIPAA Safe
Harbor category. Names and places are drawn from lists that are *not* the scrubber's dictionaries:
a hand-written list of names of many origins and the name lists of ``faker`` (several locales), and
hand-written US and foreign places, so the recall measured on them is the recall on names the
scrubber has not been tuned on. Sentences without PHI measure how many clinical words are lost.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sentence", "CATEGORIES", "CLINICAL", "corpus", "score", "removed_chars"]

#: Planted categories; ``name`` has the sub-forms title / plain / lower / caps / initials.
CATEGORIES = (
    "name",
    "address",
    "city",
    "zip",
    "institution",
    "date",
    "age",
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
)


@dataclass
class Sentence:
    """One sentence, its planted spans ``(start, end, category, form)`` and spans to ignore (states)."""

    text: str
    spans: list[tuple[int, int, str, str]] = field(default_factory=list)
    neutral: list[tuple[int, int]] = field(default_factory=list)


_FIRST = """Gregory Kelly Maria Oluwaseun Ngozi Chukwuemeka Adaeze Tesfaye Abebe Meseret Keoni Leilani Kealoha
    Siosaia Mele Anh Thuy Minh Quang Ji-woo Seo-yeon Min-jun Haruto Yui Sakura Wei Jing Xiaoming Mei Priya
    Ananya Venkat Lakshmi Arjun Fatima Yusuf Omar Layla Khadija Dariush Shirin Farhad Svetlana Dmitri Olga
    Bogdan Agnieszka Wojciech Eleni Georgios Dimitra Siobhan Padraig Aoife Niamh Tadhg Dolores Guadalupe
    Xochitl Ximena Joaquin Itzel Tsosie Naalnish Ayita Kiona Tuan Hoang Bich Precious Blessing Thandiwe Sipho
    Nomvula Bongani Abdirahman Hodan Ayaan Mariam Jean-Pierre Marie-Claire Anneliese Joerg Bjorn Sigrid
    Astrid Lars Kalani Makoa Tevita Losaline Rahel Yonas Chidi Ifeoma Emeka Amara""".split()
_LAST = """Houseman Brightwater Quinlan-Doe Okonkwo Nwachukwu Adeyemi Tesfaye Bekele Haile Kahananui Kealoha
    Fifita Tupou Nguyen Pham Tran Hoang Park Choi Jung Takahashi Nakamura Yamaguchi Zhou Xu Liang Venkataraman
    Chakraborty Iyer Subramanian Haddad Al-Masri Khalil Farahani Rostami Kuznetsova Wojciechowski Brzezinski
    Papadopoulos Georgiou Karagiannis O'Sullivan McGillicuddy Ni Bhriain Garcia Hernandez Villanueva
    Tlatelpa Begay Tsosie Yazzie Dimaculangan Macaraeg Bautista Abdirahman Warsame Xiong Vang Moua
    Szczepanski Oyelaran Mbeki Dlamini Zulu Van der Merwe De la Cruz Fitzgerald Whitfield Ashworth
    Pemberton Thistlewood Kowalczyk Lindqvist Haugland Bergstrom Castellanos Echeverria""".split()
_FAKER_LOCALES = (
    ("en_US", "first_names", "last_names"),
    ("es_MX", "first_names", "last_names"),
    ("en_IN", "first_names", "last_names"),
    ("fr_FR", "first_names", "last_names"),
    ("de_DE", "first_names", "last_names"),
    ("it_IT", "first_names", "last_names"),
    ("en_GB", "first_names", "last_names"),
    ("yo_NG", "first_names", "last_names"),
    ("pt_BR", "first_names", "last_names"),
    ("pl_PL", "first_names", "male_last_names"),
    ("nl_NL", "first_names", "last_names"),
    ("zh_CN", "first_romanized_names", "last_romanized_names"),
    ("ja_JP", "first_romanized_names", "last_romanized_names"),
    ("tr_TR", "first_names", "last_names"),
)
_CITIES = [
    ("Boston", "MA"),
    ("Tucson", "AZ"),
    ("Springfield", "Illinois"),
    ("Salt Lake City", "UT"),
    ("Duluth", "MN"),
    ("Bakersfield", "CA"),
    ("Worcester", "MA"),
    ("Albuquerque", "New Mexico"),
    ("Chattanooga", "TN"),
    ("Spokane", "WA"),
    ("Fort Wayne", "IN"),
    ("Scranton", "PA"),
    ("Cedar Rapids", "Iowa"),
    ("Flagstaff", "AZ"),
    ("San Antonio", "TX"),
    ("Ann Arbor", "MI"),
    ("Kalamazoo", "MI"),
    ("Poughkeepsie", "NY"),
    ("Gainesville", "FL"),
    ("St. Louis", "MO"),
    ("Eugene", "OR"),
    ("Bangor", "Maine"),
    ("Hilo", "HI"),
    ("Fargo", "ND"),
    ("Lowell", "MA"),
]
_FOREIGN = ["Lagos", "Mumbai", "Guadalajara", "Manila", "Kraków", "Addis Ababa", "Hanoi", "Toronto"]
_STREETS = [
    "Evergreen Terrace Road",
    "Fruit St.",
    "Maple Avenue",
    "Oak Street",
    "Baker Street",
    "Elm Drive",
    "Willow Lane",
    "Commonwealth Ave",
    "Pine Court",
    "Harbor View Boulevard",
    "Kings Highway",
    "Sunset Blvd",
]
_INSTITUTIONS = [
    "St. Mary's Hospital",
    "Springfield General Hospital",
    "Mercy Medical Center",
    "Mayo Clinic",
    "Lakeside Imaging Center",
    "Hospital of the University of Pennsylvania",
    "Children's Hospital of Philadelphia",
    "Good Samaritan Hospital",
    "Riverside Radiology Associates",
    "Beth Israel Deaconess Medical Center",
    "Saint Luke's Health System",
    "Cedar Valley Clinic",
    "Northwestern Memorial Hospital",
    "Mount Sinai Hospital",
    "Brookdale Nursing Home",
]
_OLD_WORDS = ["ninety-three", "ninety three", "ninety-one", "one hundred and two", "ninety", "ninety-seven"]

#: Clinical sentences without PHI; eponyms and capitalized clinical words on purpose.
CLINICAL = [
    "No focal consolidation, pleural effusion or pneumothorax.",
    "The cardiomediastinal silhouette is within normal limits.",
    "There is a {size} spiculated nodule in the {lobe}.",
    "Findings are consistent with Hodgkin lymphoma involving the mediastinal nodes.",
    "History of Bell's palsy; the facial nerve enhances normally.",
    "Diffuse thyroid enlargement in keeping with Graves disease.",
    "Crohn disease with wall thickening of the terminal ileum.",
    "Symmetric basal ganglia signal abnormality, which may be seen in Wilson disease.",
    "Nigral hyperintensity is lost, as seen in Parkinson disease.",
    "A Baker cyst measuring {size} is present in the popliteal fossa.",
    "There is a Schatzki ring at the gastroesophageal junction.",
    "Kerley B lines and interstitial edema are noted.",
    "Salter-Harris II fracture of the distal radius.",
    "Prostatic adenocarcinoma, Gleason score 3+4=7, grade group 2.",
    "The Swan-Ganz catheter tip projects over the right pulmonary artery.",
    "Positive sonographic Murphy sign with gallbladder wall thickening.",
    "Small amount of free fluid in Morison pouch.",
    "The circle of Willis is patent without aneurysm.",
    "Mass effect on the right lateral ventricle with {size} of midline shift.",
    "Hill-Sachs lesion of the humeral head.",
    "Bosniak 2F cyst in the left kidney.",
    "Jones fracture at the base of the fifth metatarsal.",
    "Chiari I malformation with tonsillar ectopia of {size}.",
    "Reed-Sternberg cells are identified.",
    "Barrett esophagus without dysplasia.",
    "Hashimoto thyroiditis with a heterogeneous gland.",
    "Paget disease of the right hemipelvis.",
    "Non-Hodgkin lymphoma with bulky retroperitoneal adenopathy.",
    "Mild degenerative disc disease at C5-6 and C6-7.",
    "Compression fracture of T12 with {pct} loss of height.",
    "The liver measures {size} in craniocaudal dimension.",
    "A {size} stone at the left ureterovesical junction with mild hydronephrosis.",
    "Sections show invasive ductal carcinoma, Nottingham grade 2.",
    "Margins are negative; the closest margin is {size}.",
    "Tumor cells are positive for ER and PR and negative for HER2.",
    "Lymphovascular invasion is present.",
    "Heart size is normal. Mild Cardiomegaly is not excluded on this portable view.",
    "Endotracheal tube terminates {size} above the carina.",
    "Right Lower Lobe Pneumonia.",
    "Stable postoperative changes of Whipple procedure.",
    "Dobhoff tube courses below the diaphragm with the tip in the stomach.",
    "Healed Colles fracture of the left wrist.",
    "Pancoast tumor at the right apex with rib destruction.",
    "Hampton hump and Westermark sign raise concern for pulmonary infarction.",
    "Moderate Mass Effect on the fourth ventricle.",
]
_SIZES = ["3 mm", "5 mm", "1.2 cm", "2.5 cm", "4 x 3 cm", "8 mm", "14 mm", "0.9 cm", "3.4 x 2.1 x 2.0 cm"]
_LOBES = ["right upper lobe", "left lower lobe", "lingula", "right middle lobe", "left upper lobe"]


class _Draw:
    """Seeded draws of names, places and identifiers."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.first, self.last = list(_FIRST), list(_LAST)
        try:
            import importlib

            for locale, fa, la in _FAKER_LOCALES:
                provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
                self.first += [n for n in getattr(provider, fa) if n.isascii() or n.isalpha()][:300]
                self.last += [n for n in getattr(provider, la) if n.replace(" ", "").replace("-", "").isalpha()][:300]
        except ImportError:  # faker is a test dependency; without it the hand-written names serve alone
            pass

    def pick(self, seq: list) -> object:
        return self.r.choice(seq)

    def digits(self, n: int) -> str:
        return "".join(str(self.r.randint(0, 9)) for _ in range(n))

    def letters(self, n: int) -> str:
        return "".join(self.r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(n))

    def person(self) -> tuple[str, str]:
        return str(self.pick(self.first)), str(self.pick(self.last))


def _name(d: _Draw, form: str) -> list[tuple[str, str | None]]:
    """Pieces of a name in one form: (text, form) for planted text, (text, None) for the rest."""
    f, last = d.person()
    if form == "title":
        title = d.pick(["Dr. ", "Dr ", "Mr. ", "Ms. ", "Mrs. ", "Nurse ", "dr ", "Doctor "])
        name = d.pick([f"{f} {last}", last, f"{f[0]}. {last}"])
        return [(title, "neutral"), (name, form)]  # the title goes with the name; it is no clinical word
    if form == "plain":
        return [(f"{f} {last}", form)]
    if form == "lower":
        return [(f"{f} {last}".lower(), form)]
    if form == "caps":
        return [(d.pick([f"{last.upper()}, {f.upper()}", f"{last.upper()} {f.upper()}"]), form)]
    return [(d.pick([f"{f[0]}.{last[0]}.", f"{f[0]}. {last[0]}.", f"{f[0]}.{last[0]}.{d.letters(1)}."]), form)]


_NAME_TEMPLATES = {
    "title": [
        "Findings discussed with {n} at the time of the study.",
        "Results were called to {n} by telephone.",
        "Comparison is made to the outside study reviewed with {n}.",
        "{n} was notified of the pneumothorax.",
        "The referring physician, {n}, agrees with the plan.",
        "Preliminary read given to {n} in the emergency department.",
    ],
    "plain": [
        "Patient {n} presents with cough and fever.",
        "{n}, 67F, with shortness of breath.",
        "Mass in the right upper lobe ({n}).",
        "Findings discussed with {n} of the ICU team.",
        "{n} was informed of the results.",
        "Wife {n} at the bedside was updated.",
        "Study performed at the request of {n}.",
        "Images reviewed with {n}, who agrees.",
    ],
    "lower": [
        "pt {n} here for follow up of the lung nodule.",
        "discussed with {n} at 3 pm.",
        "{n} 54m with chest pain.",
        "called {n} with the critical result.",
    ],
    "caps": ["Pt: {n}", "PATIENT: {n} DOB ON FILE", "{n} - CT CHEST WITH CONTRAST", "Name: {n}"],
    "initials": [
        "Dictated by {n}.",
        "Read by {n}; no change from prior.",
        "Discussed with {n} of urology.",
        "Patient initials {n}, consent on file.",
    ],
}


def _phi(d: _Draw, cat: str) -> list[tuple[str, str | None]]:
    """Pieces of one planted identifier of category ``cat``."""
    p = d.pick
    if cat == "date":
        return [
            (
                p(
                    [
                        f"{d.r.randint(1, 12):02d}/{d.r.randint(1, 28):02d}/20{d.digits(2)}",
                        f"20{d.digits(2)}-0{d.r.randint(1, 9)}-1{d.r.randint(0, 9)}",
                        f"March {d.r.randint(1, 28)}th, 2018",
                        f"{d.r.randint(1, 28)} Jan 2017",
                        f"{d.r.randint(10, 28)}-Mar-2021",
                        f"Sept. {d.r.randint(1, 28)}",
                        f"{d.r.randint(1, 12)}/{d.r.randint(1, 28)}",
                        "3rd of March",
                        "March of 2019",
                        f"{d.r.randint(10, 28)}.0{d.r.randint(1, 9)}.2020",
                        "Christmas Day 2019",
                        f"{d.r.randint(1, 12)}/{d.r.randint(1, 28)}/19{d.digits(2)}",
                        "2019",
                    ]
                ),
                "date",
            )
        ]
    if cat == "age":
        return [(p([str(d.r.randint(90, 104)), *_OLD_WORDS]), "age")]
    if cat in ("phone", "fax"):
        a, b, c = d.r.randint(201, 989), d.r.randint(200, 999), d.digits(4)
        num = p([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"{a} {b} {c}"])
        return [(num, cat)]
    if cat == "email":
        f, last = d.person()
        return [
            (
                f"{f[0].lower()}.{re.sub(r'[^a-z]', '', last.lower())}@"
                f"{p(['mgh.harvard.edu', 'example.org', 'gmail.com', 'radpartners.com'])}",
                cat,
            )
        ]
    if cat == "ssn":
        return [(p([f"{d.digits(3)}-{d.digits(2)}-{d.digits(4)}", f"{d.digits(3)} {d.digits(2)} {d.digits(4)}"]), cat)]
    if cat == "mrn":
        return [
            (p([d.digits(8), f"{d.letters(1)}{d.digits(7)}", f"RAD-20{d.digits(2)}-{d.digits(6)}", d.digits(7)]), cat)
        ]
    if cat == "health_plan":
        return [
            (
                p(
                    [
                        f"{d.letters(3)}{d.digits(9)}",
                        f"{d.digits(1)}{d.letters(2)}{d.digits(1)}-{d.letters(2)}{d.digits(1)}-{d.letters(2)}{d.digits(2)}",
                        f"{d.letters(2)} {d.digits(8)}",
                        d.digits(10),
                    ]
                ),
                cat,
            )
        ]
    if cat == "account":
        return [(p([d.digits(10), f"{d.digits(5)}-{d.digits(3)}", f"{d.digits(4)}-{d.digits(4)}"]), cat)]
    if cat == "license":
        return [
            (
                p([f"MD-{d.digits(6)}", f"{d.letters(2)}{d.digits(7)}", d.digits(10), f"{d.letters(1)}{d.digits(7)}"]),
                cat,
            )
        ]
    if cat == "vehicle":
        return [
            (
                p(
                    [
                        f"{d.r.randint(1, 9)}{d.letters(3)}{d.digits(3)}",
                        f"1HG{d.letters(2)}{d.digits(5)}{d.letters(1)}{d.digits(6)}",
                        f"{d.letters(3)} {d.digits(4)}",
                    ]
                ),
                cat,
            )
        ]
    if cat == "device":
        return [
            (
                p(
                    [
                        f"{d.letters(3)}{d.digits(6)}",
                        f"{d.digits(5)}-{d.letters(3)}",
                        f"00{d.digits(12)}",
                        f"SN{d.digits(8)}",
                    ]
                ),
                cat,
            )
        ]
    if cat == "url":
        return [
            (
                p(
                    [
                        f"https://portal.example-health.org/records/{d.digits(6)}",
                        "www.stmaryshospital.org",
                        f"mychart.lakesidehealth.com/visit/{d.digits(5)}",
                        "http://10.2.3.4/pacs/viewer",
                    ]
                ),
                cat,
            )
        ]
    if cat == "ip":
        return [
            (
                p(
                    [
                        f"192.168.{d.r.randint(0, 255)}.{d.r.randint(1, 254)}",
                        f"10.{d.r.randint(0, 255)}.{d.r.randint(0, 255)}.{d.r.randint(1, 254)}",
                        "2001:db8:85a3::8a2e:370:7334",
                    ]
                ),
                cat,
            )
        ]
    if cat == "other_id":
        return [
            (
                p(
                    [
                        f"CT-20{d.digits(2)}-{d.digits(4)}",
                        f"S{d.digits(2)}-{d.digits(5)}",
                        f"{d.digits(2)}-{d.digits(5)}",
                        f"BB-{d.digits(4)}-{d.letters(2)}",
                        f"{d.digits(8)}",
                    ]
                ),
                cat,
            )
        ]
    if cat == "address":
        return [(f"{d.r.randint(1, 9999)} {p(_STREETS)}{p(['', '', ', Apt 4B', ' Suite 210'])}", cat)]
    if cat == "zip":
        return [(p([d.digits(5), f"{d.digits(5)}-{d.digits(4)}"]), cat)]
    if cat == "institution":
        return [(p(_INSTITUTIONS), cat)]
    raise ValueError(cat)


def _city(d: _Draw) -> list[tuple[str, str | None]]:
    city, state = d.pick(_CITIES)
    if d.r.random() < 0.15:
        return [(str(d.pick(_FOREIGN)), "city")]
    sep = d.pick([", ", " "]) if len(state) == 2 else ", "
    return [(city, "city"), (sep, None), (state, "neutral")]


_TEMPLATES: dict[str, list[str]] = {
    "date": [
        "Comparison is made to the prior study of {x}.",
        "Chest radiograph dated {x} shows interval improvement.",
        "Follow-up CT recommended after {x}.",
        "Stable since {x}; no new nodule.",
        "Seen on {x} with a smaller effusion.",
    ],
    "age": [
        "{x}-year-old woman with dyspnea.",
        "{x} year old man with a fall and hip pain.",
        "A {x} yo female with cough.",
        "History: aged {x}, syncope.",
        "{x} years old, evaluate for pneumonia.",
        "Patient is {x} years old with chest pain.",
    ],
    "phone": [
        "Please call the reading room at {x} with questions.",
        "Results phoned to the clinic, tel {x}.",
        "Contact the radiologist at {x} for the images.",
    ],
    "fax": ["Report faxed to {x}.", "Fax: {x}; attention pulmonary clinic."],
    "email": ["Images sent to {x} for review.", "Questions to {x}."],
    "ssn": ["SSN {x} on the requisition.", "Social security number: {x}."],
    "mrn": [
        "MRN: {x}. CT chest without contrast.",
        "Accession # {x}; bilateral lower extremity duplex.",
        "Medical record number {x}, prior MRI brain reviewed.",
    ],
    "health_plan": [
        "Medicaid ID {x}; chest X-ray for cough.",
        "Member ID: {x}.",
        "Medicare number {x} on file.",
        "Insurance policy number {x}.",
    ],
    "account": ["Account number {x}.", "Acct # {x}, outpatient ultrasound."],
    "license": ["Ordering provider license number {x}.", "DEA {x} on the order.", "NPI {x}."],
    "vehicle": [
        "Motor vehicle collision; license plate {x} recorded by EMS.",
        "Trauma, vehicle VIN {x} per police report.",
    ],
    "device": [
        "Pacemaker serial number {x}; leads in the right atrium and ventricle.",
        "Device ID {x}, MRI conditional.",
        "S/N {x} of the implanted port.",
    ],
    "url": ["Images available at {x}.", "See {x} for the full report."],
    "ip": ["Study pushed from workstation {x} to PACS.", "Modality IP {x} logged the transfer."],
    "other_id": [
        "Study ID {x}; CT abdomen and pelvis.",
        "Specimen {x}: core biopsy of the left breast.",
        "Case number {x}, bone marrow biopsy.",
    ],
    "address": ["Patient lives at {x} and fell at home.", "Home address {x}.", "Found down at {x}."],
    "zip": ["Resides in zip code {x}.", "ZIP {x} on the requisition."],
    "institution": [
        "Outside films from {x} were reviewed.",
        "Transferred from {x} for further care.",
        "Comparison with CT performed at {x}.",
        "Biopsy performed at {x} showed adenocarcinoma.",
    ],
    "city": [
        "Patient lives in {x} and works as a farmer.",
        "Transferred from {x} with a pelvic fracture.",
        "Recently traveled to {x}; evaluate for tuberculosis.",
        "Resident of {x}, former smoker.",
    ],
}
_NAME_FORMS = ("title", "plain", "lower", "caps", "initials")
_COUNTS = {
    "name": 250,
    "date": 60,
    "age": 30,
    "phone": 20,
    "fax": 10,
    "email": 15,
    "ssn": 15,
    "mrn": 25,
    "health_plan": 15,
    "account": 10,
    "license": 15,
    "vehicle": 10,
    "device": 15,
    "url": 12,
    "ip": 10,
    "other_id": 15,
    "address": 25,
    "zip": 15,
    "institution": 25,
    "city": 30,
}


def _fill(template: str, pieces: Callable[[], list[tuple[str, str | None]]], cat: str) -> Sentence:
    out, s = "", Sentence("")
    for i, part in enumerate(template.split("{x}") if "{x}" in template else template.split("{n}")):
        if i:
            for text, form in pieces():
                if form == "neutral":
                    s.neutral.append((len(out), len(out) + len(text)))
                elif form is not None:
                    s.spans.append((len(out), len(out) + len(text), cat, form))
                out += text
        out += part
    s.text = out
    return s


def corpus(seed: int = 0, scale: float = 1.0) -> tuple[list[Sentence], list[Sentence]]:
    """``(phi, clinical)``: planted-PHI sentences (about 600 at scale 1) and clinical sentences (about 250)."""
    d = _Draw(seed)
    phi: list[Sentence] = []
    for cat, n in _COUNTS.items():
        for k in range(max(2, round(n * scale))):
            if cat == "name":
                form = _NAME_FORMS[k % len(_NAME_FORMS)]
                phi.append(_fill(str(d.pick(_NAME_TEMPLATES[form])), lambda f=form: _name(d, f), "name"))
            elif cat == "city":
                phi.append(_fill(str(d.pick(_TEMPLATES[cat])), lambda: _city(d), cat))
            else:
                phi.append(_fill(str(d.pick(_TEMPLATES[cat])), lambda c=cat: _phi(d, c), cat))
    clinical = []
    for k in range(max(len(CLINICAL), round(250 * scale))):
        t = CLINICAL[k % len(CLINICAL)].replace("{size}", str(d.pick(_SIZES))).replace("{lobe}", str(d.pick(_LOBES)))
        clinical.append(Sentence(t.replace("{pct}", f"{d.r.randint(10, 60)}%")))
    return phi, clinical


_ALNUM = re.compile(r"[^\W_]+")


def removed_chars(spans: list[tuple[int, int]], a: int, b: int) -> int:
    """How many characters of ``[a, b)`` fall inside the removed ``spans``."""
    return sum(max(0, min(b, e) - max(a, s)) for s, e in spans)


def _caught(spans: list[tuple[int, int]], text: str, a: int, b: int) -> bool:
    """Whether none of the alphanumeric characters of ``text[a:b]`` survive."""
    return all(
        removed_chars(spans, m.start() + a, m.end() + a) == m.end() - m.start() for m in _ALNUM.finditer(text[a:b])
    )


def _clinical_tokens(s: Sentence) -> list[tuple[int, int]]:
    skip = [(a, b) for a, b, *_ in s.spans] + s.neutral
    return [(m.start(), m.end()) for m in _ALNUM.finditer(s.text) if not removed_chars(skip, m.start(), m.end())]


def score(phi: list[Sentence], clinical: list[Sentence]) -> dict[str, Any]:
    """Recall per category and name form, clinical words lost and clinical sentences kept, in both modes.

    Mode ``scrub``: a planted span is caught when none of its alphanumeric characters survive
    (:func:`~unimed.ingest.reports.scrub_spans`); a clinical word (an alphanumeric token outside the
    planted spans and titles) is lost when any of its characters is removed. Mode ``findings``: a span
    is caught when its sentence is dropped or the span removed.
    """
    from unimed.ingest import reports

    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    fhits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    lost, words, missed = 0, 0, []
    for s in phi + clinical:
        spans = reports.scrub_spans(s.text)
        kept = bool(reports.clean_text(s.text, mode="findings"))
        for a, b, cat, form in s.spans:
            ok = _caught(spans, s.text, a, b)
            for k in [cat, f"name:{form}"] if cat == "name" else [cat]:
                hits[k][0] += ok
                hits[k][1] += 1
                fhits[k][0] += ok or not kept
                fhits[k][1] += 1
            if not ok:
                missed.append(f"{s.text[a:b]}  |  {s.text}")
        toks = _clinical_tokens(s)
        lost += sum(1 for a, b in toks if removed_chars(spans, a, b))
        words += len(toks)
    kept_clinical = sum(bool(reports.clean_text(s.text, mode="findings")) for s in clinical)
    return {
        "recall": {k: round(v[0] / v[1], 4) for k, v in sorted(hits.items())},
        "spans": {k: v[1] for k, v in sorted(hits.items())},
        "findings_recall": {k: round(v[0] / v[1], 4) for k, v in sorted(fhits.items())},
        "clinical_words_lost": round(lost / max(words, 1), 4),
        "clinical_words": words,
        "findings_clinical_sentences_kept": round(kept_clinical / max(len(clinical), 1), 4),
        "missed": missed,
    }
