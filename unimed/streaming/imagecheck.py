"""Cheap structural checks of encoded images, so a broken one never reaches the decoder.

Why here and not in the batch: one undecodable image makes a DALI batch fail as a whole, which
would kill the epoch. Checking headers in the dataset costs microseconds (no pixel is decoded), and
a failed image is *replaced* by a tiny valid placeholder and flagged ``valid=False`` rather than
dropped, so the sample order (and hence exact resumption) is unchanged; the trainer masks it out.

JPEG: SOI, a walk over the marker segments up to SOS with bounds checked, a Huffman frame header
(SOF0/1/2, the processes nvJPEG and libjpeg-turbo decode) with non-zero size and 1 or 3 components,
and EOI at the end. PNG: signature, every chunk's length and CRC, IHDR first and IEND last. Damage
inside JPEG entropy-coded data passes (decoders conceal it and do not fail).
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

__all__ = ["check_image", "placeholder_image", "sniff_codec"]

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_SOF_OK = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive (Huffman)
_SOF_ANY = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_codec(data: bytes) -> str | None:
    """``"jpeg"`` or ``"png"`` from the magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIG:
        return "png"
    return None


def _check_jpeg(data: bytes) -> str | None:
    end = len(data.rstrip(b"\x00"))
    if data[end - 2 : end] != b"\xff\xd9":
        return "jpeg: no end-of-image marker (truncated)"
    pos, frame = 2, False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return f"jpeg: bad marker at byte {pos}"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > end:
            return f"jpeg: segment 0x{marker:02X} overruns the file"
        if marker in _SOF_ANY:
            if marker not in _SOF_OK:
                return f"jpeg: unsupported coding process SOF{marker - 0xC0}"
            if length < 8:
                return "jpeg: short frame header"
            height, width, comps = struct.unpack_from(">HHB", data, pos + 5)
            if height == 0 or width == 0 or comps not in (1, 3):
                return f"jpeg: frame {width}x{height} with {comps} components"
            frame = True
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return None if frame else "jpeg: scan before any frame header"
        pos += 2 + length
    return "jpeg: no start-of-scan"


def _check_png(data: bytes) -> str | None:
    pos, first, n, view = 8, True, len(data), memoryview(data)
    while pos + 12 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 12 + length
        if stop > n:
            return f"png: chunk {kind!r} overruns the file (truncated)"
        (crc,) = struct.unpack_from(">I", data, stop - 4)
        if zlib.crc32(view[pos + 4 : stop - 4]) != crc:
            return f"png: CRC mismatch in chunk {kind!r}"
        if first:
            if kind != b"IHDR" or length != 13:
                return "png: first chunk is not IHDR"
            width, height, depth = struct.unpack_from(">IIB", data, pos + 8)
            if width == 0 or height == 0 or depth not in (1, 2, 4, 8, 16):
                return f"png: header {width}x{height} at depth {depth}"
            first = False
        if kind == b"IEND":
            return None
        pos = stop
    return "png: no IEND chunk (truncated)"


def check_image(data: bytes | memoryview) -> str | None:
    """Return why ``data`` cannot be decoded, or None when its structure is sound."""
    data = bytes(data) if isinstance(data, memoryview) else data
    codec = sniff_codec(data)
    if codec == "jpeg":
        return _check_jpeg(data)
    if codec == "png":
        return _check_png(data)
    return "neither JPEG nor PNG" if data else "empty"


@lru_cache(maxsize=1)
def placeholder_image() -> bytes:
    """A 16x16 mid-grey JPEG that every decoder accepts: the stand-in for a broken image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
