"""The converter's terminal output: a progress bar with images per second, reject lines, and the
queue through which worker processes report both."""

from __future__ import annotations

import sys
import time
from typing import Any

from unimed.errors import shown_path

__all__ = ["progress_bar", "tick", "drain", "reject_line"]


def reject_line(r: dict, show_paths: bool = False) -> str:
    """One stderr line for a reject: by keyed uid (paths are in the report folder), or by path if asked."""
    return f"reject {shown_path(r['path']) if show_paths else r['uid']}: {r['reason']}"


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    bar = tqdm(total=total, unit="file", desc="convert", dynamic_ncols=True, file=sys.stderr)
    bar.images = 0  # type: ignore[attr-defined]
    bar.t0 = time.perf_counter()  # type: ignore[attr-defined]
    return bar


def tick(bar: Any, n: int, rejects: list[dict], echo: Any, show_paths: bool = False) -> None:
    bar.update(1)
    if hasattr(bar, "images"):
        bar.images += n
        rate = bar.images / max(time.perf_counter() - bar.t0, 1e-9)
        bar.set_postfix_str(f"{bar.images} img, {rate:.1f} img/s")
    for r in rejects:
        line = reject_line(r, show_paths)
        if hasattr(bar, "write"):
            bar.write(line, file=sys.stderr)
        else:
            echo(line)


def drain(queue: Any, bar: Any, echo: Any, timeout: float, show_paths: bool = False) -> None:
    import queue as q

    try:
        n, rj = queue.get(timeout=timeout) if timeout else queue.get_nowait()
        tick(bar, n, rj, echo, show_paths)
        while True:
            n, rj = queue.get_nowait()
            tick(bar, n, rj, echo, show_paths)
    except q.Empty:
        pass
