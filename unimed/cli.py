"""The ``unimed`` command: ``demo`` (the whole path on sample data) and ``eval zeroshot``."""

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
    e = sub.add_parser("eval", help="evaluate a trained checkpoint")
    esub = e.add_subparsers(dest="eval_cmd", required=True)
    z = esub.add_parser("zeroshot", help="zero-shot classification on MDS evaluation sets (tables per modality)")
    z.add_argument("--checkpoint", required=True, help="Composer checkpoint (.pt or sharded folder) or exported weights")
    z.add_argument("--data", required=True, help="one evaluation MDS folder, or a folder of them (catalog names)")
    z.add_argument("--prompts", help="a prompts YAML replacing the bundled prompt sets")
    z.add_argument("--config", help="training YAML (default: the config.yaml saved beside the checkpoint)")
    z.add_argument("--sets", nargs="*", help="only these set names")
    z.add_argument("--out", help="write zeroshot.md and zeroshot.json here")
    z.add_argument("--batch-size", type=int, default=64)
    z.add_argument("--max-samples", type=int, help="per set, for a quick look")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            from unimed.demo import run_demo

            run_demo(args.out, args.workers)
        elif args.cmd == "eval":
            from unimed.train.evaluate import run_zeroshot

            run_zeroshot(args.checkpoint, args.data, prompts=args.prompts, out=args.out, sets=args.sets,
                         batch_size=args.batch_size, max_samples=args.max_samples, config=args.config)
        return 0
    except UserError as exc:
        print(f"unimed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
