"""The long commands' terminal output (convert, verify, inspect, merge, split): a progress line with
its rate, reject lines, and the batching through which worker processes report both.

On a terminal the line is redrawn at most four times a second; when stderr is not a terminal (a log
file, a CI job) a plain line is written every few seconds instead of ``\\r`` frames, so a log of a
run over a million files holds a line per ``LOG_EVERY_S``, not one per file. Workers send their
counts in batches (at most a few messages a second each), so the parent's share of the CPU stays
negligible however small the images.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from unimed.errors import shown_path

__all__ = ["Progress", "Batcher", "progress_bar", "tick", "reject_line"]

REDRAW_S = 0.25  # a terminal line is redrawn at most this often
LOG_EVERY_S = 5.0  # without a terminal, one line this often
BATCH_S = 0.2  # a worker reports at most this often (and at the end of each chunk)


def reject_line(r: dict, show_paths: bool = False) -> str:
    """One stderr line for a reject: by keyed uid (paths are in the report folder), or by path if asked."""
    return f"reject {shown_path(r['path']) if show_paths else r['uid']}: {r['reason']}"


class Progress:
    """Items done of ``total`` and a second count with its rate (``convert``: files, and images written),
    on ``stream`` (default stderr). ``what`` names the command, ``unit`` the items, ``count`` the second
    count (None: the rate is of the items)."""

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        what: str = "convert",
        unit: str = "files",
        count: str | None = "img",
    ) -> None:
        self.total, self.enabled = total, enabled
        self.what, self.unit, self.count = what, unit, count
        self.stream = stream or sys.stderr
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.files = self.images = 0
        self.t0 = self.last = time.perf_counter()
        self.shown = False  # a frame is on the terminal line

    def _text(self) -> str:
        secs = max(time.perf_counter() - self.t0, 1e-9)
        left = (self.total - self.files) * secs / self.files if self.files else 0.0
        done = f"{self.what} {self.files}/{self.total} {self.unit}"
        if self.count is None:
            done += f", {self.files / secs:.1f}/s"
        else:
            done += f", {self.images} {self.count}, {self.images / secs:.1f} {self.count}/s"
        return done + (
            f", {int(left) // 60}:{int(left) % 60:02d} left" if self.files and self.files < self.total else ""
        )

    def update(self, files: int, images: int = 0) -> None:
        """Count ``files`` more items and ``images`` more of the second count; redraw if it is time."""
        self.files += files
        self.images += images
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last >= (REDRAW_S if self.tty else LOG_EVERY_S):
            self.last = now
            self._draw()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self._text())
            self.shown = True
        else:
            self.stream.write(self._text() + "\n")
        self.stream.flush()

    def write(self, line: str) -> None:
        """Print a line above the progress line."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.shown = False
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the last frame (on a terminal) and end the line."""
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def progress_bar(enabled: bool, total: int) -> Progress:
    """The progress display of a run over ``total`` inputs (silent when not ``enabled``)."""
    return Progress(total, enabled)


def tick(bar: Progress, files: int, images: int, rejects: list[dict], echo: Any, show_paths: bool = False) -> None:
    """Count finished inputs and print their reject lines (above the progress line, or by ``echo``)."""
    bar.update(files, images)
    for r in rejects:
        line = reject_line(r, show_paths)
        if bar.enabled:
            bar.write(line)
        else:
            echo(line)


class Batcher:
    """In a worker: gather per-input reports and send them through ``send`` at most every ``BATCH_S``."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.files = self.images = 0
        self.rejects: list[dict] = []
        self.last = time.perf_counter()

    def __call__(self, images: int, rejects: list[dict]) -> None:
        self.files += 1
        self.images += images
        self.rejects.extend(rejects)
        if time.perf_counter() - self.last >= BATCH_S:
            self.flush()

    def flush(self) -> None:
        """Send what has gathered (if anything)."""
        if self.files or self.rejects:
            self.send((self.files, self.images, self.rejects))
            self.files = self.images = 0
            self.rejects = []
        self.last = time.perf_counter()
