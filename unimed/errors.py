"""Errors meant for people: one line that names the file and the reason, no traceback."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn

__all__ = [
    "UserError",
    "RejectError",
    "ArgumentParser",
    "safe_reason",
    "clean_message",
    "shown_path",
    "yaml_error",
    "stdout_closed",
]


class UserError(ValueError):
    """A mistake the user can fix (a bad flag, a missing folder); the CLI prints it in one line.

    A ``ValueError``, as mosaicml-streaming's style has bad input be, so library callers that catch
    ``ValueError`` keep working; every CLI catches ``UserError``.
    """


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is one line (the problem and where the help is), not the
    usage block above it: the line that says what to fix stays the one the user reads."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def stdout_closed() -> bool:
    """After a BrokenPipeError in a CLI: True if it was stdout's pipe that closed early (``| head``), which
    is then pointed at devnull (Python's advice: the flush at exit must not raise again); False if the
    error came from elsewhere (a worker's pipe: a bug, to re-raise)."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        closed = any(ev & select.POLLERR for _, ev in poll.poll(0))  # a pipe whose reader has gone
    except (AttributeError, OSError, ValueError):
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return closed


def yaml_error(path: object, exc: Exception) -> UserError:
    """The one line for a YAML file that does not parse: the file, line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return UserError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}")


class RejectError(Exception):
    """An input that cannot be converted; becomes one line in ``rejects.jsonl``.

    The reason must not carry header values that are not on the de-identification allow-list.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: Words that may stand capitalized or in capitals in a library's message (everything lower-case and
#: purely alphabetic is kept as well); any other token becomes "…". Library messages quote header
#: values, paths and names, with or without quotes, so the reason keeps only this vocabulary.
_MESSAGE_WORDS = frozenset(
    """A An The This No Not Unable Cannot Could Expected Invalid Unknown Unsupported Missing Failed Incomplete
    Truncated Error Errno Bad Buffer Data Pixel Pixels File Image Frame Frames Header Tag Value Length Offset End
    Reading Read Decoding Decode Decompression Encoding Premature Unexpected Corrupt Corrupted Broken
    DICOM JPEG JPEG-LS JPEG2000 RLE UID VR LUT VOI PNG TIFF NIfTI GDCM JPEG-2000 EOF CRC OK
    AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV""".split()
)
_TOKEN = re.compile(r"\w[\w\-.]*\w|\w|\S")
_KEEP_PUNCT = set("()[],.:;-=<>!?/")


def safe_reason(exc: BaseException, limit: int = 160) -> str:
    """A one-line reason for an unexpected exception raised while reading an input.

    Library messages can quote raw header bytes, names and paths, quoted or not, so only the exception
    type and the words of its first line that are on an allow-list (lower-case words, short numbers,
    the vocabulary above) are kept; everything quoted, and every other token, becomes "…".
    """
    if isinstance(exc, RejectError):
        return exc.reason
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = clean_message(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def clean_message(text: str) -> str:
    """The allow-listed words of a library message (see :func:`safe_reason`)."""
    # Quoted spans go whole: from an opening quote to the last quote of the same kind, so an
    # apostrophe inside a quoted value (O'BRIEN) cannot end the span early.
    for q in ("'", '"'):
        first, last = text.find(q), text.rfind(q)
        if first != -1:
            text = text[:first] + " \x00 " + (text[last + 1 :] if last > first else "")
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        keep = (
            (tok.isascii() and tok.isalpha() and tok.islower())
            or tok in _MESSAGE_WORDS
            or (tok.isdigit() and len(tok) <= 3)
            or tok in _KEEP_PUNCT
        )
        piece = tok if keep else "…"
        if piece == "…" and out and out[-1] == "…":
            continue
        out.append(piece)
    joined = " ".join(out)
    return re.sub(r"\s+([,.:;)\]])", r"\1", re.sub(r"([(\[])\s+", r"\1", joined)).strip()


def shown_path(path: str) -> str:
    """A path as printable text: bytes that are not UTF-8 shown as escapes, never an encoding error."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
