"""Shared benchmark harness: timing with warm-up, medians, machine description, JSON output.

Every benchmark script builds a :class:`Report`, adds figures and ratios, and calls
:meth:`Report.finish`, which prints a table and writes ``--json PATH`` when asked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "base_parser", "machine", "peak_rss_mb", "time_call", "process_seconds", "cpu_seconds"]


def base_parser(description: str) -> argparse.ArgumentParser:
    """Return a parser with the flags every benchmark takes: ``--quick`` and ``--json PATH``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes that finish in about a minute on 2 cores")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the figures as JSON to PATH")
    return parser


def machine() -> dict[str, Any]:
    """Describe the machine the figures come from."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children) in MB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children waited for so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def process_seconds(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of running ``cmd`` as its own process, start-up included (it must succeed).

    The CPU figure counts the process and every process it waited for (its workers).
    """
    return processes_seconds([cmd], env)


def processes_seconds(cmds: list[list[str]], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of running ``cmds`` side by side, each as its own process, from the first
    start to the last exit (every one must succeed); the CPU figure counts all of them and their workers."""
    import subprocess

    cpu0, start = cpu_seconds(), time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    errors = [p.communicate()[1] for p in procs]
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    for c, p, err in zip(cmds, procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(c[:4])} ... failed ({p.returncode}): {err[-2000:]}")
    return seconds, cpu


@dataclass
class Report:
    """Figures of one benchmark run: named results, ratios between them, and the machine."""

    name: str
    quick: bool
    results: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, **figures: Any) -> None:
        """Record the figures of one measured configuration."""
        self.results.setdefault(key, {}).update(figures)

    def ratio(self, key: str, numerator: float, denominator: float) -> float:
        """Record ``numerator / denominator`` under ``key`` (e.g. ``"ingest/baseline"``)."""
        value = float(numerator) / float(denominator) if denominator else float("nan")
        self.ratios[key] = round(value, 3)
        return value

    def finish(self, json_path: str | None) -> dict[str, Any]:
        """Print the figures and write them to ``json_path`` if given; return the document."""
        doc = {
            "benchmark": self.name,
            "quick": self.quick,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "machine": machine(),
            "results": self.results,
            "ratios": self.ratios,
        }
        print(f"== {self.name} ({'quick' if self.quick else 'full'}) ==")
        for key, figs in self.results.items():
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in figs.items())
            print(f"  {key}: {shown}")
        for key, value in self.ratios.items():
            print(f"  ratio {key} = {value:.3f}")
        if json_path:
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            with open(json_path, "w") as fh:
                json.dump(doc, fh, indent=2)
        return doc


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
