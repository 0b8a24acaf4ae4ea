"""The ``unimed`` command: ``demo``, ``train``, ``eval zeroshot|retrieval|linear-probe``, ``export``, ``import``,
``leakage`` and ``tokenizer``."""

from __future__ import annotations

import argparse
import os
import sys

from unimed.errors import ArgumentParser, UserError, stdout_closed

__all__ = ["main"]


def _ema_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-ema",
        dest="ema",
        action="store_false",
        help="the training weights, not the moving average a run with ema.enabled also saved",
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="Composer checkpoint (.pt or sharded folder), an exported folder, or another layout",
    )
    p.add_argument("--config", help="training YAML, for a checkpoint without its bundled config")
    _ema_arg(p)
    p.add_argument("--tokenizer", help="the text tower's tokenizer folder, for a foreign checkpoint without one")
    p.add_argument("--out", help="write <kind>.md and <kind>.json here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-samples", type=int, help="per set, for a quick look")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="unimed", description="unimed: medical CLIP data engine and trainer")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="ingest the bundled sample data and print the figures")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--workers", type=int, default=2)
    t = sub.add_parser("train", help="train a config: a shipped name (demo-cpu, vitb16-unimed, ...) or a YAML path")
    t.add_argument("config", help="a shipped config's name or a training YAML")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.batch_size=64")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="build model and loader, print sizes, FLOPs and the first batch's shapes, and exit",
    )
    e = sub.add_parser("eval", help="evaluate a trained model")
    esub = e.add_subparsers(dest="eval_cmd", required=True)
    z = esub.add_parser("zeroshot", help="zero-shot classification on MDS evaluation sets (tables per modality)")
    _model_args(z)
    z.add_argument("--data", required=True, help="one evaluation MDS folder, or a folder of them (catalog names)")
    z.add_argument("--prompts", help="a prompts YAML replacing the bundled prompt sets")
    z.add_argument("--sets", nargs="*", help="only these set names")
    r = esub.add_parser("retrieval", help="image-text recall@1/5/10 both ways on MDS folders with captions")
    _model_args(r)
    r.add_argument("--data", required=True, help="one MDS folder with captions, or a folder of them")
    lp = esub.add_parser("linear-probe", help="logistic regression on frozen image features of a class-folder set")
    _model_args(lp)
    lp.add_argument("--data", required=True, help="the training MDS folder (split by patient unless --test)")
    lp.add_argument("--test", help="a separate test MDS folder")
    lp.add_argument("--set", dest="set_name", help="catalog set name (default: the folder's name)")
    lp.add_argument("--seed", type=int, default=0)
    x = sub.add_parser("export", help="write a checkpoint as an open_clip or Hugging Face folder")
    x.add_argument("checkpoint")
    x.add_argument("--format", required=True, choices=["open_clip", "hf"])
    x.add_argument("--out", required=True)
    x.add_argument("--config", help="training YAML, for a checkpoint without its bundled config")
    _ema_arg(x)
    i = sub.add_parser("import", help="read another project's checkpoint (open_clip, UniMed-CLIP, BiomedCLIP text)")
    i.add_argument("source", help="a checkpoint file or an open_clip model folder")
    i.add_argument(
        "--out", required=True, help="the unimed folder to write (hf format; a BERT folder with --towers text)"
    )
    i.add_argument("--tokenizer", help="the text tower's tokenizer folder (the checkpoint carries none)")
    i.add_argument("--towers", choices=["all", "text"], default="all")
    act = i.add_mutually_exclusive_group()
    act.add_argument(
        "--quick-gelu",
        dest="quick_gelu",
        action="store_true",
        default=None,
        help="the image tower uses QuickGELU (refused if the source declares GELU)",
    )
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", help="the image tower uses GELU")
    lk = sub.add_parser("leakage", help="images shared by a training set and evaluation sets (exact and near copies)")
    lk.add_argument("train", help="the training MDS folder")
    lk.add_argument("evals", nargs="+", metavar="EVAL", help="evaluation MDS folders")
    lk.add_argument(
        "--max-distance",
        type=int,
        default=None,
        help="bits of the 64-bit perceptual hash two copies may differ in (default 6)",
    )
    lk.add_argument("--sheet", help="contact sheet PNG of the pairs")
    lk.add_argument("--drop", metavar="OUT", help="write the training set without them into a new MDS folder")
    lk.add_argument("--json", help="the full report (every pair, by uid) as JSON")
    tk = sub.add_parser("tokenizer", help="train a WordPiece tokenizer on the captions of an MDS folder")
    tk.add_argument("dir", help="a folder written by `ingest convert`")
    tk.add_argument("--out", help="tokenizer folder (default DIR/tokenizer)")
    tk.add_argument("--vocab-size", type=int, default=8192)
    tk.add_argument("--context-length", type=int, default=256)
    return parser


def _train(args: argparse.Namespace) -> None:
    """One process; for several, `composer -n N train/run.py CONFIG ...` (the same config and overrides)."""
    from unimed.train.config import config_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return
    if args.dry_run:
        import json

        from unimed.train.trainer import dry_run

        print(json.dumps(dry_run(cfg), indent=2))
        return
    from unimed.train.trainer import train

    train(cfg)


def _leakage(args: argparse.Namespace) -> None:
    import json

    from unimed.leakage import DEFAULT_MAX_DISTANCE, leakage, markdown

    dist = DEFAULT_MAX_DISTANCE if args.max_distance is None else args.max_distance
    if not 0 <= dist <= 32:
        raise UserError(f"--max-distance {dist}: use 0..32 bits of 64")
    report = leakage(args.train, args.evals, max_distance=dist, sheet=args.sheet, drop=args.drop)
    print(markdown(report))
    if args.sheet:
        print(f"contact sheet: {report['sheet']}")
    if args.drop:
        print(f"cleaned training set: {args.drop} ({report['train']['kept']} of {report['train']['samples']} kept)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


def _tokenizer(args: argparse.Namespace) -> None:
    from unimed.shards import read_index

    if not os.path.isdir(args.dir):
        raise UserError(f"{args.dir}: no such folder")
    if not any(shard.get("samples") for shard in read_index(args.dir)["shards"]):  # not shards: a one-line error
        raise UserError(f"{args.dir}: holds no samples, so no captions to train a tokenizer on")
    from unimed.streaming.tokenizer import train_tokenizer

    out = args.out or os.path.join(args.dir, "tokenizer")
    train_tokenizer(args.dir, out, vocab_size=args.vocab_size, context_length=args.context_length)
    print(f"tokenizer saved to {out}")


def _run(args: argparse.Namespace) -> None:
    common = {}
    if args.cmd == "eval":
        common = {
            "out": args.out,
            "batch_size": args.batch_size,
            "max_samples": args.max_samples,
            "config": args.config,
            "tokenizer": args.tokenizer,
            "ema": args.ema,
        }
    if args.cmd == "demo":
        from unimed.demo import run_demo

        run_demo(args.out, args.workers)
    elif args.cmd == "eval" and args.eval_cmd == "zeroshot":
        from unimed.train.evaluate import run_zeroshot

        run_zeroshot(args.checkpoint, args.data, prompts=args.prompts, sets=args.sets, **common)
    elif args.cmd == "eval" and args.eval_cmd == "retrieval":
        from unimed.train.evaluate import run_retrieval

        run_retrieval(args.checkpoint, args.data, **common)
    elif args.cmd == "eval":
        from unimed.train.evaluate import run_linear_probe

        run_linear_probe(args.checkpoint, args.data, test=args.test, set_name=args.set_name, seed=args.seed, **common)
    elif args.cmd == "export":
        from unimed.export import run_export

        run_export(args.checkpoint, args.format, args.out, args.config, ema=args.ema)
    elif args.cmd == "train":
        _train(args)
    elif args.cmd == "leakage":
        _leakage(args)
    elif args.cmd == "tokenizer":
        _tokenizer(args)
    elif args.cmd == "import":
        from unimed.export import run_import

        run_import(args.source, args.out, args.tokenizer, args.quick_gelu, args.towers)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unimed``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
        return 0
    except UserError as exc:
        print(f"unimed: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not stdout_closed():
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
