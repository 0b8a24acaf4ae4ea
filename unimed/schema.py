"""The shard schema shared by every stage: MDS column encodings and the modality vocabulary.

See ``DESIGN.md`` (the shard schema). ``ingest`` writes these columns; ``unimed.streaming`` reads them.
"""

from __future__ import annotations

__all__ = ["COLUMNS", "LATER_COLUMNS", "MODALITIES", "CODECS", "check_sample", "check_columns", "shard_columns"]

#: MDS column name -> mosaicml-streaming encoding.
COLUMNS: dict[str, str] = {
    "image": "bytes",  # encoded image: JPEG (8-bit) or PNG (8/16-bit); codec in meta["codec"]
    "captions": "json",  # list[str], at least one
    "modality": "str",  # one of MODALITIES
    "labels": "json",  # list[str], possibly empty
    "source": "str",  # dataset name
    "uid": "str",  # keyed hash, stable and unique, no patient identifier
    "patient": "str",  # keyed hash of PatientID and IssuerOfPatientID (same key as uid); "" when unknown
    "study": "str",  # keyed hash of StudyInstanceUID (same key); "" when unknown
    "meta": "json",  # allow-listed, non-identifying facts
}

#: Columns added after the first datasets were written, and what a sample of an older folder (which
#: lacks them) means by their absence: no patient or study known. Readers take such folders as they are.
LATER_COLUMNS: dict[str, str] = {"patient": "", "study": ""}

#: The six modalities of the reference system, plus ``other``.
MODALITIES: tuple[str, ...] = ("xray", "ct", "mri", "ultrasound", "pathology", "fundus", "other")

#: Image codecs a shard may hold.
CODECS: tuple[str, ...] = ("jpeg", "png")


def _keyed(value: object) -> bool:
    """Whether ``value`` is a keyed hash as the converter writes one (32 lower-case hex digits) or ``""``."""
    return isinstance(value, str) and (
        value == "" or (len(value) == 32 and all(c in "0123456789abcdef" for c in value))
    )


def check_columns(names: list[str]) -> str | None:
    """What is wrong with a shard's column names (None when they are the schema's, or an older folder's:
    the schema without some of :data:`LATER_COLUMNS`)."""
    have, want = set(names), set(COLUMNS)
    if have <= want and want - have <= set(LATER_COLUMNS):
        return None
    faults = []
    if want - have - set(LATER_COLUMNS):
        faults.append(f"missing {sorted(want - have - set(LATER_COLUMNS))}")
    if have - want:
        faults.append(f"not in the schema {sorted(have - want)}")
    return "; ".join(faults)


def shard_columns(shards: list[dict]) -> dict[str, str]:
    """The schema columns (name -> encoding) that every one of these index entries holds."""
    have = set(COLUMNS)
    for shard in shards:
        have &= set(shard.get("column_names") or [])
    return {c: e for c, e in COLUMNS.items() if c in have}


def check_sample(sample: dict) -> list[str]:
    """Return the schema faults of one decoded sample (empty when it conforms).

    A sample of a folder written before :data:`LATER_COLUMNS` existed may lack them.
    """
    faults: list[str] = []
    for column in COLUMNS:
        if column not in sample and column not in LATER_COLUMNS:
            faults.append(f"missing column {column!r}")
    if faults:
        return faults
    if not isinstance(sample["image"], bytes | bytearray) or not sample["image"]:
        faults.append("image is not non-empty bytes")
    caps = sample["captions"]
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c for c in caps):
        faults.append("captions is not a non-empty list of strings")
    if sample["modality"] not in MODALITIES:
        faults.append(f"modality {sample['modality']!r} not in {MODALITIES}")
    if not isinstance(sample["labels"], list):
        faults.append("labels is not a list")
    if not isinstance(sample["meta"], dict) or sample["meta"].get("codec") not in CODECS:
        faults.append("meta.codec missing or unknown")
    if not sample["uid"]:
        faults.append("uid is empty")
    for column in LATER_COLUMNS:
        if column in sample and not _keyed(sample[column]):
            faults.append(f"{column} is not a keyed hash (32 hex digits) or empty")
    return faults
