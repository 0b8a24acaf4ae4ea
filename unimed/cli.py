"""The ``unimed`` command: ``demo`` now; ``bench`` and ``eval`` join it with their stages."""

from __future__ import annotations

import argparse
import sys

from unimed.errors import UserError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unimed``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="unimed", description="unimed: medical CLIP data engine and trainer")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="ingest the bundled sample data and print the figures")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            from unimed.demo import run_demo

            run_demo(args.out, args.workers)
        return 0
    except UserError as exc:
        print(f"unimed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
