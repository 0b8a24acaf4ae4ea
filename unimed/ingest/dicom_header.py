"""A fast reader of DICOM headers and native pixel data for the common little-endian syntaxes.

Planning parses each header once with :func:`read_header`, which keeps what conversion needs (the
tags in :data:`KEYWORDS`, as pydicom's ``Dataset.get`` gives them) and where the pixels lie; the
writer then reads only those bytes (:func:`read_native`), never the header again. It walks the
elements of Implicit and Explicit VR Little Endian files (and the header of encapsulated ones, whose
pixels pydicom decodes), skipping every value it does not need, sequences included.

Anything unusual gives ``None`` and pydicom reads the file instead: no preamble, big-endian or
deflated syntaxes, a VR other than the dictionary's for a tag it reads, a value it cannot parse, a
damaged element. Pure Python on purpose: a C parser that crashes on a damaged file would take its
worker process down with it (dicomsdl 0.109 segfaults on some truncated files).
``tests/ingest/test_hotpath.py`` checks values and pixels against pydicom on every test file.
"""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["Header", "KEYWORDS", "READER_ENV", "UIDStr", "read_header", "read_native"]

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_ENCAPSULATED_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")

#: tag -> (keyword, VR) of every element the converter reads from a header.
_TAGS: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x00100020: ("PatientID", "LO"),  # with its issuer and the study: keyed hashes only (deid.subject)
    0x00100021: ("IssuerOfPatientID", "LO"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00185101: ("ViewPosition", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200062: ("ImageLaterality", "CS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280006: ("PlanarConfiguration", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280102: ("HighBit", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00280301: ("BurnedInAnnotation", "CS"),
    0x00281050: ("WindowCenter", "DS"),
    0x00281051: ("WindowWidth", "DS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00281056: ("VOILUTFunction", "CS"),
}
#: Sequences whose presence sends a file to pydicom for conversion (their items are not read here).
_SEQUENCES: dict[int, str] = {
    0x00283000: "ModalityLUTSequence",
    0x00283010: "VOILUTSequence",
    0x52009229: "SharedFunctionalGroupsSequence",
    0x52009230: "PerFrameFunctionalGroupsSequence",
}
KEYWORDS = frozenset([k for k, _ in _TAGS.values()] + list(_SEQUENCES.values()))
_PIXEL_DATA = 0x7FE00010
_OTHER_PIXELS = (0x7FE00008, 0x7FE00009)  # float and double float pixel data
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_VR_BYTES = {vr: vr.encode() for _, vr in _TAGS.values()}
_EXPLICIT, _IMPLICIT, _U32 = struct.Struct("<HH2sH"), struct.Struct("<HHI"), struct.Struct("<I")
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class Header(dict):
    """The header facts of one file, keyword -> value as pydicom's ``Dataset.get`` returns them.

    Asking for a keyword this reader does not read is a bug (a new tag read by the converter or the
    de-identification allow-list must be added to :data:`KEYWORDS`), not a silent ``None``.
    ``native`` is ``(offset, length)`` of uncompressed pixel data this module can read (``layout``:
    its dtype, shape and unused high bits), else None; ``stamp`` is (path, size, mtime) of the file read.
    """

    def __init__(self, values: dict[str, Any], ts: str, native: tuple[int, int] | None, stamp: tuple) -> None:
        super().__init__(values)
        self.file_meta = SimpleNamespace(TransferSyntaxUID=_uid(ts))
        self.native = native
        self.stamp = stamp
        self.layout = _native_dtype(values, native[1]) if native is not None else None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key not in KEYWORDS:
            raise KeyError(f"the fast DICOM reader does not read {key}; add it to dicom_header._TAGS")
        return super().get(key, default)

    def fresh(self, path: str) -> bool:
        """Whether ``path`` is still the file this header was read from (same size and mtime)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (path, st.st_size, st.st_mtime_ns) == self.stamp


class _Short(Exception):
    """The buffer ends inside the header: read more of the file."""


class _Odd(Exception):
    """Something this reader leaves to pydicom."""


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, header size) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _Short
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = group << 16 | elem
    if not explicit or group == 0xFFFE:
        return tag, None, struct.unpack_from("<I", buf, pos + 4)[0], 8
    vr = buf[pos + 4 : pos + 6]
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Odd
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Short
        return tag, vr, struct.unpack_from("<I", buf, pos + 8)[0], 12
    return tag, vr, struct.unpack_from("<H", buf, pos + 6)[0], 8


def _skip_sequence(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> tuple[int, int]:
    """Skip an undefined-length sequence's items from ``pos``; return (position after it, item count)."""
    if depth > 16:
        raise _Odd
    items = 0
    while True:
        tag, _, length, size = _element(buf, pos, False)
        pos += size
        if tag == _SEQ_END:
            return pos, items
        if tag != _ITEM:
            raise _Odd
        items += 1
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimiter
            tag, vr, length, size = _element(buf, pos, explicit)
            pos += size
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                pos, _ = _skip_sequence(buf, pos, explicit and vr != b"UN", depth + 1)
            else:
                pos += length
        if pos > len(buf):
            raise _Short


class UIDStr(str):
    """A UID whose ``.name`` comes from pydicom's dictionary only when asked for (pydicom's import is
    0.2 s a process; a run of uncompressed files never needs it otherwise)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        known = _TS_NAMES.get(self)
        if known is not None:
            return known
        from pydicom.uid import UID

        return UID(str(self)).name


#: pydicom's names of the syntaxes whose pixels this module reads (a test checks them against pydicom).
_TS_NAMES = {IMPLICIT_LE: "Implicit VR Little Endian", EXPLICIT_LE: "Explicit VR Little Endian"}


def _uid(text: str) -> UIDStr:
    """One :class:`UIDStr` per distinct value."""
    uid = _UIDS.get(text)
    if uid is None:
        if len(_UIDS) > 4096:
            _UIDS.clear()
        uid = _UIDS[text] = UIDStr(text)
    return uid


_UIDS: dict[str, UIDStr] = {}


def _value(vr: str, raw: bytes) -> Any:
    if vr == "US":
        if len(raw) == 2:
            return raw[0] | raw[1] << 8
        if len(raw) % 2:
            raise _Odd
        vals = list(struct.unpack(f"<{len(raw) // 2}H", raw))
        return vals or None
    text = raw.decode("ascii").rstrip("\x00 ")
    if vr != "UI":
        text = text.lstrip(" ")
    if text == "":
        return None if vr in ("DS", "IS") else ""
    if "\\" not in text:  # one value, the common case
        return float(text) if vr == "DS" else _integer(text) if vr == "IS" else text.strip(" ")
    parts = [p.strip(" ") for p in text.split("\\")]
    if vr == "DS":
        return [float(p) for p in parts]
    if vr == "IS":
        return [_integer(p) for p in parts]
    return parts


def _integer(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise _Odd
    return int(value)


def _parse(buf: bytes) -> tuple[dict[str, Any], str, tuple[int, int] | None] | None:
    if buf[128:132] != b"DICM":
        return None
    pos, ts = 132, None
    while True:  # file meta information: explicit VR little endian, group 2
        tag, vr, length, size = _element(buf, pos, True)
        if tag >> 16 != 2:
            break
        if length == _UNDEFINED:
            raise _Odd
        if tag == 0x00020010:
            ts = buf[pos + size : pos + size + length].decode("ascii").rstrip("\x00 ")
        pos += size + length
    if ts not in (IMPLICIT_LE, EXPLICIT_LE) and not (ts or "").startswith(_ENCAPSULATED_PREFIXES):
        return None
    explicit = ts != IMPLICIT_LE
    values: dict[str, Any] = {}
    pixels: tuple[int, int, bytes | None] | None = None
    last, n = -1, len(buf)
    while pos < n:
        if pos + 8 > n:
            raise _Short
        if explicit:
            group, elem, vr, length = _EXPLICIT.unpack_from(buf, pos)
            if vr in _LONG_VRS:
                if pos + 12 > n:
                    raise _Short
                length, size = _U32.unpack_from(buf, pos + 8)[0], 12
            elif vr in _SHORT_VRS:
                size = 8
            else:
                raise _Odd
        else:
            group, elem, length = _IMPLICIT.unpack_from(buf, pos)
            vr, size = None, 8
        tag = group << 16 | elem
        if tag <= last:
            raise _Odd  # out of order (or an item at the top level): a damaged file, pydicom decides
        last = tag
        if tag == _PIXEL_DATA:
            pixels = (pos + size, length, vr)
            break
        if tag in _OTHER_PIXELS:
            break
        if length == _UNDEFINED:
            if explicit and vr not in (b"SQ", b"UN"):
                raise _Odd
            pos, items = _skip_sequence(buf, pos + size, explicit and vr != b"UN")
            if tag in _SEQUENCES and items:
                values[_SEQUENCES[tag]] = True
            continue
        end = pos + size + length
        if end > n:
            raise _Short
        known = _TAGS.get(tag)
        if known is not None:
            keyword, want = known
            if vr is not None and vr != _VR_BYTES[want]:
                raise _Odd
            value = _value(want, buf[pos + size : end])
            if value is not None:
                values[keyword] = _uid(value) if keyword == "SOPClassUID" else value
        elif tag in _SEQUENCES and length:
            values[_SEQUENCES[tag]] = True
        pos = end
    native = None
    if pixels is not None and ts in (IMPLICIT_LE, EXPLICIT_LE) and pixels[1] != _UNDEFINED:
        native = (pixels[0], pixels[1])
    return values, ts, native


READER_ENV = "UNIMED_DICOM_READER"


def read_header(path: str) -> Header | None:
    """The header of a DICOM file, or None where pydicom should read it (or ``$UNIMED_DICOM_READER=pydicom``)."""
    if os.environ.get(READER_ENV) == "pydicom":
        return None
    try:
        st = os.stat(path)
        size = 1 << 14
        with open(path, "rb") as fh:
            buf = fh.read(size)
            while True:
                try:
                    parsed = _parse(buf)
                    break
                except _Short:
                    if len(buf) >= st.st_size:
                        return None  # the file ends inside its header: damaged
                    size *= 8
                    fh.seek(0)
                    buf = fh.read(size)
    except (_Odd, OSError, ValueError, UnicodeDecodeError, struct.error):
        return None
    if parsed is None:
        return None
    values, ts, native = parsed
    if native is not None and native[0] + native[1] > st.st_size:
        return None  # pixel data cut short: pydicom reads (and rejects) the file
    header = Header(values, ts, native, (path, st.st_size, st.st_mtime_ns))
    if header.layout is None:
        header.native = None
    return header


def _native_dtype(values: dict[str, Any], length: int) -> tuple[str, tuple[int, ...], int] | None:
    """dtype, shape and unused high bits of pixel data this module reads the way pydicom does, else None."""
    try:
        rows, cols = int(values["Rows"]), int(values["Columns"])
        spp = int(values.get("SamplesPerPixel", 1))
        bits, stored = int(values["BitsAllocated"]), int(values.get("BitsStored", values["BitsAllocated"]))
        signed = int(values.get("PixelRepresentation", 0))
        photometric = str(values.get("PhotometricInterpretation", ""))
        frames = int(values.get("NumberOfFrames", 1) or 1)
        planar = int(values.get("PlanarConfiguration", 0) or 0)
    except (KeyError, TypeError, ValueError):
        return None
    if frames != 1 or bits not in (8, 16, 32) or not 0 < stored <= bits or signed not in (0, 1):
        return None
    if not (
        (spp == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"))
        or (spp == 3 and photometric == "RGB" and bits == 8 and planar == 0)
    ):
        return None
    if rows < 1 or cols < 1 or any(k in values for k in _SEQUENCES.values()):
        return None
    expected = rows * cols * spp * bits // 8
    if length not in (expected, expected + 1):
        return None
    shape = (rows, cols) if spp == 1 else (rows, cols, spp)
    return f"<{'i' if signed else 'u'}{bits // 8}", shape, bits - stored  # a str: it pickles in a tenth of the time


def read_native(path: str, header: Header) -> np.ndarray:
    """The pixels of a file whose header has ``native`` set, as ``pydicom``'s ``pixel_array`` gives them.

    Bits above Bits Stored are cleared (unsigned) or the sign extended (signed), as pydicom does.
    """
    assert header.native is not None and header.layout is not None
    name, shape, unused = header.layout
    dtype = np.dtype(name)
    count = int(np.prod(shape))
    arr = np.fromfile(path, dtype=dtype, count=count, offset=header.native[0])
    if arr.size != count:
        raise ValueError("pixel data shorter than the header says")
    arr = arr.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    if unused:
        np.left_shift(arr, unused, out=arr)
        np.right_shift(arr, unused, out=arr)
    return arr
