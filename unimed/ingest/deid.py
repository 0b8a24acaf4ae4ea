"""De-identification by allow-list.

Nothing from a DICOM header reaches a shard, a caption, ``summary.json``, ``rejects.jsonl`` or a log
unless it is read through :func:`allowed_meta` (or one of the structural attributes that decide how
pixels are decoded, which are not identifying). Private tags are never read. ``uid`` is a keyed hash
(HMAC-SHA256) of the image's identity, so it is stable across runs with the same key and cannot be
linked back to a UID without the key. ``patient`` and ``study`` are keyed hashes under the same key of
PatientID with IssuerOfPatientID and of StudyInstanceUID (:func:`subject`, :func:`keyed_patient`,
:func:`keyed_study`): the values themselves go nowhere, and each hash message carries its own prefix,
so a patient or study key never equals a uid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from unimed.errors import RejectError, UserError

__all__ = [
    "ALLOWED_TAGS",
    "BURNED_IN_PRONE_MODALITIES",
    "SECONDARY_CAPTURE_CLASSES",
    "allowed_meta",
    "check_burned_in",
    "load_uid_key",
    "keyed_uid",
    "keyed_patient",
    "keyed_study",
    "reject_uid",
    "subject",
    "coded_modality",
]

_CODE = re.compile(r"^[A-Z0-9 _\-]{1,32}$")


def _code(value: Any) -> str | None:
    """A short coded string (CS-like), or None when it looks like free text."""
    text = str(value).strip().upper()
    return text if _CODE.match(text) else None


#: Body parts (DICOM PS3.16 CID 4031, common subset) that may be stored; anything else is dropped,
#: since archives sometimes put free text in BodyPartExamined.
BODY_PARTS = frozenset(
    """ABDOMEN ABDOMENPELVIS ANKLE ARM BRAIN BREAST CHEST CHESTABDOMEN CHESTABDPELV CLAVICLE COCCYX CSPINE
    ELBOW EXTREMITY EYE FINGER FOOT FOREARM HAND HEAD HEADNECK HEART HIP HUMERUS JAW KIDNEY KNEE LEG LIVER
    LSPINE LUNG NECK ORBIT PANCREAS PELVIS PROSTATE RETINA RIB SACRUM SHOULDER SKULL SPINE TSPINE THORAX
    THYROID TOE UTERUS WHOLEBODY WRIST ZYGOMA""".split()
)
VIEW_POSITIONS = frozenset(
    {
        "AP",
        "PA",
        "LL",
        "RL",
        "LAT",
        "LLD",
        "RLD",
        "OBL",
        "LAO",
        "RAO",
        "LPO",
        "RPO",
        "CC",
        "MLO",
        "ML",
        "LM",
        "XCC",
        "AXIAL",
        "SAG",
        "COR",
    }
)
LATERALITIES = frozenset({"L", "R", "U", "B"})


#: Coded DICOM Modality values (PS3.3 C.7.3.1.1.1 defined terms, current and retired). Only these are
#: ever stored or echoed; a free-text Modality value is treated as missing.
DICOM_MODALITIES = frozenset(
    """AR ASMT AU BDUS BI BMD CD CF CP CR CS CT DD DF DG DM DOC DS DX EC ECG EPS ES FA FID FS GM HC HD IO IOL
    IVOCT IVUS KER KO LEN LP LS MA MG MR MS NM OAM OCT OP OPM OPR OPT OPTBSV OPTENF OPV OSS OT PLAN POS PR PT
    PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN
    SC TEXTUREMAP TG US VA VF XA XAPLAN XC""".split()
)


def coded_modality(value: Any) -> str | None:
    """The DICOM Modality value when it is a defined term, else None (free text is never echoed)."""
    text = str(value or "").strip().upper()
    return text if text in DICOM_MODALITIES else None


def _vocab(words: frozenset[str]) -> Any:
    def clean(value: Any) -> str | None:
        text = (_code(value) or "").replace(" ", "")
        return text if text in words else None

    return clean


def _floats(value: Any) -> list[float] | None:
    try:
        seq = list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
        return [round(float(v), 6) for v in seq][:3]
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


#: DICOM keyword -> (meta key, sanitizer). The only header attributes that reach a shard.
ALLOWED_TAGS: dict[str, tuple[str, Any]] = {
    "Modality": ("dicom_modality", coded_modality),
    "BodyPartExamined": ("body_part", _vocab(BODY_PARTS)),
    "ViewPosition": ("view_position", _vocab(VIEW_POSITIONS)),
    "ImageLaterality": ("laterality", _vocab(LATERALITIES)),
    "PhotometricInterpretation": (
        "photometric",
        _vocab(
            frozenset(
                {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTECOLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
            )
        ),
    ),
    "BitsStored": ("bits_stored", _int),
    "Rows": ("rows", _int),
    "Columns": ("columns", _int),
    "PixelSpacing": ("pixel_spacing", _floats),
    "SliceThickness": ("slice_thickness", _floats),
}

#: Modalities whose images commonly carry burned-in text (PHI) in the pixels.
BURNED_IN_PRONE_MODALITIES = frozenset({"US", "OT", "SC", "XA", "RF", "ES", "GM", "XC", "DOC", "IVUS", "ECG"})

#: SOP classes of secondary captures (screenshots, scanned documents, exported images).
SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
        "1.2.840.10008.5.1.4.1.1.104.1",  # encapsulated PDF
    }
)


def allowed_meta(ds: Any) -> dict[str, Any]:
    """The allow-listed, sanitized header facts of a dataset (never private tags, never free text)."""
    meta: dict[str, Any] = {}
    for keyword, (key, clean) in ALLOWED_TAGS.items():
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        cleaned = clean(value)
        if cleaned is not None:
            meta[key] = cleaned
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        meta["transfer_syntax"] = str(ts.name) if hasattr(ts, "name") else str(ts)
    return meta


def check_burned_in(ds: Any, allow: bool) -> None:
    """Reject a file that has, or may have, text burned into its pixels.

    BurnedInAnnotation YES is always rejected unless ``allow``; secondary captures and modalities
    prone to burned-in text are rejected unless the file states BurnedInAnnotation NO.
    """
    if allow:
        return
    flag = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if flag == "YES":
        raise RejectError("BurnedInAnnotation is YES (pixels carry text); pass --allow-burned-in if cleaned")
    if flag == "NO":
        return
    sop = str(ds.get("SOPClassUID", ""))
    modality = coded_modality(ds.get("Modality", "")) or ""
    if sop in SECONDARY_CAPTURE_CLASSES:
        raise RejectError(
            "secondary capture without BurnedInAnnotation NO (may carry burned-in text); "
            "pass --allow-burned-in if the archive was cleaned"
        )
    if modality in BURNED_IN_PRONE_MODALITIES:
        raise RejectError(
            f"{modality} image without BurnedInAnnotation NO (may carry burned-in text); "
            "pass --allow-burned-in if the archive was cleaned"
        )


#: The shortest uid key accepted, in bytes (a generated key is 64 hex characters).
_MIN_KEY_BYTES = 32


def _new_key_file(key_file: Path) -> bool:
    """Create ``key_file`` with a new random key, mode 0600 from its first byte; False if another process won.

    The key is written under a temporary name opened with ``O_CREAT|O_EXCL`` and mode 0600 (the umask
    can only clear bits; ``fchmod`` then sets exactly 0600) and hard-linked to ``key_file``, which fails
    when that name exists: of two processes creating at once, one key is kept and both read it.
    """
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, key_file)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _checked_key(key: bytes, source: str, key_file: Path | None = None) -> bytes:
    """``key``, refused when shorter than 32 bytes; a ``key_file`` open to group or others is warned about."""
    if key_file is not None:
        mode = key_file.stat().st_mode & 0o777
        if mode & 0o077:
            print(
                f"unimed: warning: uid key file {key_file} is open to group or others (mode {mode:03o}): "
                f"run chmod 600 {key_file}",
                file=sys.stderr,
            )
    if len(key) < _MIN_KEY_BYTES:
        raise UserError(
            f"{source}: the uid key is {len(key)} bytes, shorter than {_MIN_KEY_BYTES}: "
            "make one with `openssl rand -hex 32`"
        )
    return key


def load_uid_key(path: str | None = None) -> bytes:
    """The secret key of the keyed uid hash.

    From ``path`` (``--uid-key-file``), else ``$UNIMED_UID_KEY`` (hex or text), else a per-user key
    file ``~/.config/unimed/uid.key`` created on first use (mode 0600, with a one-line note on stderr).
    Keep it out of the shards: whoever has it can test a guessed identifier against a uid. Share it
    between machines of one split job. A key shorter than 32 bytes is refused (a ``UserError`` naming
    where it came from); a key file that group or others can open is warned about on stderr.
    """
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: uid key file not found")
        return _checked_key(p.read_bytes().strip(), path, p)
    env = os.environ.get("UNIMED_UID_KEY")
    if env:
        return _checked_key(env.encode(), "$UNIMED_UID_KEY")
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "unimed"
    key_file = home / "uid.key"
    if not key_file.exists() and _new_key_file(key_file):
        print(
            f"unimed: created the uid key {key_file}; a split job needs this same key on every machine", file=sys.stderr
        )
    return _checked_key(key_file.read_bytes().strip(), str(key_file), key_file)


def keyed_uid(key: bytes, identity: str) -> str:
    """A 32-hex-digit keyed hash of an image identity (stable, unique, not reversible without key)."""
    return hmac.new(key, identity.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:32]


def reject_uid(key: bytes, path: str) -> str:
    """The keyed uid by which the dataset names a rejected input (its path stays in the report)."""
    return keyed_uid(key, "input:" + path)


#: Message prefixes of the patient and study hashes. A uid's message starts with a source's name
#: (``dicom:``, ``nifti:``, ``input:``, ...) and never with these, so the three kinds never coincide.
_PATIENT_DOMAIN = "unimed-patient\x00"
_STUDY_DOMAIN = "unimed-study\x00"


def _text(value: Any) -> str:
    """A header value as one string (values of a multi-valued one joined by ``\\``), padding stripped."""
    if value is None:
        return ""
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def subject(ds: Any) -> tuple[str, str]:
    """(patient, study) of a DICOM header as the messages :func:`keyed_patient` and :func:`keyed_study` hash.

    The patient is PatientID within its IssuerOfPatientID (one ID may name two people at two issuers);
    ``""`` where the header has no PatientID, or no StudyInstanceUID. Raw values: they are handed to the
    writer in memory and hashed there, never stored, logged or put in a reason.
    """
    patient_id = _text(ds.get("PatientID"))
    patient = json.dumps([_text(ds.get("IssuerOfPatientID")), patient_id]) if patient_id else ""
    return patient, _text(ds.get("StudyInstanceUID"))


def keyed_patient(key: bytes, patient: str) -> str:
    """The 32-hex-digit keyed hash of a patient from :func:`subject` (``""`` for an unknown patient)."""
    return keyed_uid(key, _PATIENT_DOMAIN + patient) if patient else ""


def keyed_study(key: bytes, study: str) -> str:
    """The 32-hex-digit keyed hash of a StudyInstanceUID (``""`` for an unknown study)."""
    return keyed_uid(key, _STUDY_DOMAIN + study) if study else ""
