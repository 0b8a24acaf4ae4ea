"""Composer entry point: ``composer [-n N] train/run.py train/yamls/<name>.yaml key=value ...``.

Parses the YAML and the dotted overrides into a ``TrainConfig`` and calls ``unimed.train.train``;
nothing else lives here.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Train from ``argv`` = [YAML, key=value, ...]; return the exit code."""
    from unimed.errors import UserError
    from unimed.train.config import load_config
    from unimed.train.trainer import train

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    try:
        train(load_config(args[0], args[1:]))
    except UserError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
