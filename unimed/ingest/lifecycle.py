"""What keeps a conversion run safe around its output: one run per folder, workers that die with
their parent, the report folder outside the dataset, and one line for a full disk.

A run holds an exclusive ``flock`` on ``<out>/.unimed/lock`` for its whole life; the kernel drops it
when the process dies, however it dies, so a ``--resume`` started after a SIGKILL finds it free, and
one started while the run still lives is refused. Worker processes ask the kernel to kill them when
their parent dies (``PR_SET_PDEATHSIG``), so no orphan keeps writing into a chunk folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Iterator

from unimed.errors import UserError

__all__ = ["run_lock", "die_with_parent", "default_report_dir", "check_report_dir", "disk_errors", "REPORT_NOTE"]

#: Errors that mean the output's file system is full (or a file size limit was hit).
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

REPORT_NOTE = (
    "This folder belongs to the operator of an ingest run, not to the dataset: rejects.jsonl names\n"
    "each rejected input by its path, which may carry patient names or record numbers. Keep it where\n"
    "the source archive is kept; do not copy or share it with the dataset.\n"
)


@contextlib.contextmanager
def run_lock(state_dir: str, out: str) -> Iterator[None]:
    """Hold the output folder's run lock for the block; refuse in one line when another run holds it."""
    import fcntl

    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"{out}: another ingest run is writing this folder; wait for it to end "
                "(or stop it), then rerun with --resume"
            ) from None
        yield
    finally:
        os.close(fd)


_HEAP_KEPT = False


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory (up to 64 MB at the top of the heap; blocks under
    32 MB from the heap, not fresh maps): each image's few-hundred-kB buffers are then reused, not
    handed back to the kernel and faulted in again page by page (about 50 faults an image: 7-12% of a
    DICOM slice's conversion time on the benchmark machine). Once per process; False where the C
    library is not glibc (nothing changes)."""
    global _HEAP_KEPT
    if _HEAP_KEPT:
        return True
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        _HEAP_KEPT = bool(libc.mallopt(m_trim_threshold, 64 << 20)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False
    return _HEAP_KEPT


def die_with_parent(parent: int) -> None:
    """In a worker process: end when the parent ends, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    else:  # elsewhere a watchdog thread notices the parent is gone

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def default_report_dir(out: str) -> str:
    """The report folder beside ``out`` (``<out>.report``), never inside it."""
    return os.path.abspath(out).rstrip(os.sep) + ".report"


def check_report_dir(report: str, out: str) -> None:
    """Refuse a report folder inside the dataset folder (or the dataset inside the report)."""
    r, o = os.path.abspath(report), os.path.abspath(out)
    if os.path.commonpath([r, o]) in (r, o):
        raise UserError(f"--report {report}: must lie outside --out {out} (it names input paths, the dataset must not)")


@contextlib.contextmanager
def disk_errors(out: str) -> Iterator[None]:
    """Turn a full disk (or a file size limit) while writing ``out`` into one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise UserError(
                f"{out}: {os.strerror(exc.errno).lower()} while writing the dataset; "
                "free space and rerun with --resume (completed chunks are kept)"
            ) from None
        raise
