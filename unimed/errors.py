"""Errors meant for people: one line that names the file and the reason, no traceback."""

from __future__ import annotations

__all__ = ["UserError", "RejectError", "safe_reason"]


class UserError(Exception):
    """A mistake the user can fix (a bad flag, a missing folder); the CLI prints it in one line."""


class RejectError(Exception):
    """An input that cannot be converted; becomes one line in ``rejects.jsonl``.

    The reason must not carry header values that are not on the de-identification allow-list.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def safe_reason(exc: BaseException, limit: int = 160) -> str:
    """A one-line reason for an unexpected exception raised while reading an input.

    Library messages can quote raw header bytes, so only the exception type and the first line
    of its message, cut at ``limit`` characters, with quoted text removed, are kept.
    """
    if isinstance(exc, RejectError):
        return exc.reason
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Drop anything quoted: libraries quote values (names, ids) in their messages.
    out, quote = [], None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
                out.append("…")
            continue
        if ch in "'\"":
            quote = ch
            continue
        out.append(ch)
    text = "".join(out)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
