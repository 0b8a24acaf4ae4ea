"""The shard schema shared by every stage: MDS column encodings and the modality vocabulary.

See ``DESIGN.md`` (the shard schema). ``ingest`` writes these columns; ``unimed.streaming`` reads them.
"""

from __future__ import annotations

__all__ = ["COLUMNS", "MODALITIES", "CODECS", "check_sample"]

#: MDS column name -> mosaicml-streaming encoding.
COLUMNS: dict[str, str] = {
    "image": "bytes",  # encoded image: JPEG (8-bit) or PNG (8/16-bit); codec in meta["codec"]
    "captions": "json",  # list[str], at least one
    "modality": "str",  # one of MODALITIES
    "labels": "json",  # list[str], possibly empty
    "source": "str",  # dataset name
    "uid": "str",  # keyed hash, stable and unique, no patient identifier
    "meta": "json",  # allow-listed, non-identifying facts
}

#: The six modalities of the reference system, plus ``other``.
MODALITIES: tuple[str, ...] = ("xray", "ct", "mri", "ultrasound", "pathology", "fundus", "other")

#: Image codecs a shard may hold.
CODECS: tuple[str, ...] = ("jpeg", "png")


def check_sample(sample: dict) -> list[str]:
    """Return the schema faults of one decoded sample (empty when it conforms)."""
    faults: list[str] = []
    for column in COLUMNS:
        if column not in sample:
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
    return faults
