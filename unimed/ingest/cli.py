"""The ``ingest`` command: convert, verify, inspect, merge, split, captions, tokenizer.

Thin: each subcommand parses flags, builds a config and calls one library function. A
:class:`~unimed.errors.UserError` is printed as one line and exits 2; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from unimed.errors import UserError

__all__ = ["main", "parse_size"]


def parse_size(text: str) -> str:
    """Check a size such as ``64mb`` (streaming parses it); return it unchanged."""
    t = text.strip().lower()
    num = t.rstrip("kmgtb")
    try:
        float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: a size like 64mb") from None
    return t


def _compression(text: str) -> str | None:
    if text.lower() in ("none", "off", ""):
        return None
    if not text.startswith("zstd"):
        raise argparse.ArgumentTypeError(f"{text}: use zstd[:LEVEL] or none")
    return text


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert DICOM, NIfTI and images into MDS shards")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive) or globs")
    p.add_argument("--out", required=True,
                   help="dataset folder (MDS shards, index.json, summary.json, rejects.jsonl by uid); names no input "
                        "path; or s3://BUCKET/PREFIX (staged locally, uploaded chunk by chunk, index.json last)")
    p.add_argument("--report", metavar="DIR",
                   help="operator's report folder, outside --out: rejected inputs with their paths (default OUT.report; "
                        "for an s3:// --out STAGING.report, never uploaded)")
    p.add_argument("--staging", metavar="DIR",
                   help="s3:// --out: the local folder chunks are written to before upload, and the resume state "
                        "(default: under $UNIMED_CACHE_DIR or ~/.cache/unimed)")
    p.add_argument("--show-paths", action="store_true",
                   help="print rejected inputs by path on stderr (default: by uid; paths may carry patient names)")
    p.add_argument("--modality", default="auto",
                   help="xray|ct|mri|ultrasound|pathology|fundus|other, or auto (DICOM Modality; else reject)")
    p.add_argument("--labels", metavar="CSV", help="label table: path column and labels (or 0/1 class columns)")
    p.add_argument("--class-folders", action="store_true", help="label = first folder below each input folder")
    p.add_argument("--captions", metavar="BANK.yaml", action="append", default=[], help="extra caption bank(s)")
    p.add_argument("--source", dest="source_name",
                   help="dataset name stored in each sample, e.g. chexpert (default: local; never taken from a path)")
    p.add_argument("--text", default="scrub", choices=["scrub", "findings"],
                   help="free text (reports, manifest captions): scrub removes PHI (default); findings keeps only "
                        "sentences made of clinical vocabulary")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1); with --engine ray, chunks are cut for this many tasks "
                        "or the cluster's CPUs, whichever is more")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: worker processes on this machine (default); ray: one Ray task per chunk, "
                        "on a cluster sharing the inputs' and --out's file system (pip install 'unimed[ray]')")
    p.add_argument("--address", metavar="ADDR",
                   help="--engine ray: the cluster to join (auto, or HOST:PORT of `ray start --head`; "
                        "default: $RAY_ADDRESS, else the one `ray start` began here, else a new one here)")
    p.add_argument("--codec", default="jpeg", choices=["jpeg", "png"])
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--max-size", dest="max_side", type=int, default=512,
                   help="longer side of stored images in pixels (default 512; 0 keeps the original)")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16], help="16 keeps 16-bit PNG output")
    p.add_argument("--size-limit", type=parse_size, default="64mb", help="shard size before compression")
    p.add_argument("--compression", type=_compression, default="zstd:1",
                   help="zstd[:LEVEL] or none (default zstd:1: 94%% of level 3's saving at 0.4 of its cost)")
    p.add_argument("--num-shards", type=int, default=1, help="split the job over K machines (with --shard-index)")
    p.add_argument("--shard-index", type=int, default=None, help="this machine's part, 0..K-1")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset an earlier run left in --out (and its report folder)")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any input was rejected")
    p.add_argument("--window", default="auto",
                   help="auto, file, a named HU window (soft_tissue, lung, bone, brain, ...), C:W, or 3 as channels")
    p.add_argument("--axis", default="auto", choices=["auto", "axial", "coronal", "sagittal", "0", "1", "2"],
                   help="volumes: auto (acquisition plane), axial, coronal, sagittal, or an array axis")
    p.add_argument("--allow-burned-in", action="store_true",
                   help="accept images that may carry burned-in text (only for archives already cleaned)")
    p.add_argument("--uid-key-file", help="secret key of the uid hash (default: $UNIMED_UID_KEY or ~/.config/unimed)")
    p.add_argument("--tile-size", type=int, default=256, help="slides: tile side in pixels (default 256)")
    p.add_argument("--mpp", type=float, default=0.5, help="slides: microns per pixel of the tiles (default 0.5, ~20x)")
    p.add_argument("--level", type=int, default=None, help="slides: pyramid level instead of --mpp")
    p.add_argument("--min-tissue", type=float, default=0.5, help="slides: tissue fraction a tile needs (default 0.5)")
    p.add_argument("--max-tiles", type=int, default=1000, help="slides: tiles per slide at most (0: all)")
    p.add_argument("--chunk-mb", type=float, default=64.0, help="input megabytes per resumable chunk")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _cmd_convert(args: argparse.Namespace) -> int:
    from unimed.ingest.convert import ConvertConfig, convert

    fields = {k: v for k, v in vars(args).items() if k not in ("cmd", "func")}
    if fields["shard_index"] is None:
        if fields["num_shards"] > 1:  # else every machine of the job would convert part 0
            raise UserError(f"--num-shards {fields['num_shards']} needs --shard-index: this machine's part, "
                            f"0..{fields['num_shards'] - 1}")
        fields["shard_index"] = 0
    cfg = ConvertConfig(**fields)
    summary = convert(cfg, echo=lambda s: print(s, file=sys.stderr))
    mods = ", ".join(f"{k} {v}" for k, v in summary["modality"].items()) or "none"
    rejected = f"{summary['rejects']} rejected"
    if summary["rejects"]:
        rejected += f" (paths in {os.path.join(cfg.report_dir, 'rejects.jsonl')})"
    print(f"converted {summary['images']} images ({mods}) into {cfg.out}; {rejected}; "
          f"{summary['images_per_second']} img/s")
    if not summary["images"]:
        print("ingest: error: no image was converted; the reasons are in "
              f"{os.path.join(cfg.out, 'rejects.jsonl')}", file=sys.stderr)
        return 1
    return 1 if (cfg.strict and summary["rejects"]) else 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from unimed.ingest.verify import verify

    faults, counts = verify(args.dir, decode=not args.no_decode)
    for f in faults:
        print(f"fault {f}", file=sys.stderr)
    print(f"{'FAIL' if faults else 'OK'}: {counts['samples']} samples in {counts['shards']} shards, "
          f"{len(faults)} faults")
    return 1 if faults else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from unimed.ingest.inspect import inspect

    info = inspect(args.dir, sheet=args.sheet, per_modality=args.per_modality, seed=args.seed)
    print(json.dumps({k: info[k] for k in ("samples", "modality", "source")}, indent=2))
    print(f"contact sheet: {info['sheet']}")
    print(f"balance chart: {info['chart']}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from unimed.ingest.lifecycle import check_report_dir, default_report_dir, disk_errors
    from unimed.ingest.merge import done_chunks, merge, write_summary

    if not os.path.isdir(args.dir):
        raise UserError(f"{args.dir}: no such folder")
    if not done_chunks(args.dir):  # e.g. a folder of raw images: nothing to merge, nothing to write into it
        raise UserError(f"{args.dir}: no complete chunk folder (pNNN-cNNNNN with done.json) of a conversion in it; "
                        "copy the parts' chunk folders here first (README, Clusters)")
    report = args.report or default_report_dir(args.dir)
    check_report_dir(report, args.dir)
    with disk_errors(args.dir):
        summary = merge(args.dir, report)
        write_summary(args.dir, summary)
    print(f"merged {summary['chunks']} chunk folders: {summary['images']} images")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from unimed.ingest.split import SplitConfig, report_lines, split

    report = split(SplitConfig(folder=args.dir, by=args.by, fractions=args.fractions, seed=args.seed,
                               out=args.out, names=args.names))
    print("\n".join(report_lines(report)))
    return 0


def _split_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "split", help="train/val/test folders with no patient (or study) in two of them",
        description="Write one MDS folder per split (OUT/train, OUT/val, OUT/test, each with summary.json; "
                    "OUT/split.json) so that no patient (--by patient) or study (--by study) is in two splits. "
                    "A group's split comes from a hash of its keyed patient or study key and --seed: the same "
                    "seed gives the same split, and a patient keeps its split when data is added. The fractions "
                    "hold in expectation; the achieved ones, in samples and in patients, are printed. A sample "
                    "without a key (PNG/JPEG folders, NIfTI volumes, DICOM without PatientID) is a group of its "
                    "own. Folders converted before patient keys were stored must be re-converted.")
    s.add_argument("dir", help="a folder written by `ingest convert`")
    s.add_argument("--by", default="patient", choices=["patient", "study"],
                   help="the key no two splits may share (default patient)")
    s.add_argument("--fractions", default="0.8,0.1,0.1", help="one per split, summing to 1 (default 0.8,0.1,0.1)")
    s.add_argument("--seed", type=int, default=0, help="another seed, another draw (default 0)")
    s.add_argument("--out", metavar="OUTDIR", help="folder of the splits, outside DIR (default DIR.split beside DIR)")
    s.add_argument("--names", help="split folder names, one per fraction (default train,val,test; train,test for two)")
    s.set_defaults(func=_cmd_split)


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from unimed.ingest.reader import read_index
    from unimed.streaming.tokenizer import train_tokenizer

    if not os.path.isdir(args.dir):
        raise UserError(f"{args.dir}: no such folder")
    if not any(shard.get("samples") for shard in read_index(args.dir)["shards"]):
        raise UserError(f"{args.dir}: holds no samples, so no captions to train a tokenizer on")
    out = args.out or os.path.join(args.dir, "tokenizer")
    train_tokenizer(args.dir, out, vocab_size=args.vocab_size, context_length=args.context_length)
    print(f"tokenizer saved to {out}")
    return 0


def _cmd_captions(args: argparse.Namespace) -> int:
    from unimed.ingest.labels import preview_captions

    info = preview_captions(args.labels, args.bank, args.modality, args.examples)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['rows']} rows, {info['label_sets']} label sets, {len(info['classes'])} classes")
    for ex in info["examples"]:
        print(f"\n[{ex['modality']}] {' | '.join(ex['labels']) or '(no labels)'}  ({ex['rows']} rows)")
        for c in ex["captions"]:
            print(f"    {c}")
    if info["unknown"]:
        for mod, labels in info["unknown"].items():
            listed = ", ".join(f"{k} ({v} rows)" for k, v in labels.items())
            print(f"\nno bank entry in {mod} (phrased by the generic templates): {listed}")
    else:
        print("\nevery class has a bank entry")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ingest`` argument parser."""
    parser = argparse.ArgumentParser(prog="ingest", description="Medical images into MDS shards for CLIP training.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _convert_parser(sub)
    sub.choices["convert"].set_defaults(func=_cmd_convert)
    v = sub.add_parser("verify", help="re-hash shards, decode every image, check schema and counts")
    v.add_argument("dir")
    v.add_argument("--no-decode", action="store_true", help="hashes and schema only")
    v.set_defaults(func=_cmd_verify)
    i = sub.add_parser("inspect", help="counts per modality and source, a contact sheet and a balance chart PNG")
    i.add_argument("dir")
    i.add_argument("--sheet", help="contact sheet path (default DIR.inspect/contact_sheet.png, beside DIR)")
    i.add_argument("--per-modality", type=int, default=6, help="images per modality on the sheet")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=_cmd_inspect)
    m = sub.add_parser("merge", help="merge the chunk folders of DIR (e.g. the parts of a split job)")
    m.add_argument("dir")
    m.add_argument("--report", metavar="DIR", help="report folder whose parts to gather (default DIR.report)")
    m.set_defaults(func=_cmd_merge)
    _split_parser(sub)
    c = sub.add_parser("captions", help="preview the captions a label table turns into; list classes with no bank entry")
    c.add_argument("--labels", required=True, metavar="CSV", help="label table (as for convert --labels)")
    c.add_argument("--bank", action="append", default=[], metavar="BANK.yaml",
                   help="extra caption bank(s), e.g. one generated offline by a language model")
    c.add_argument("--modality", help="modality of rows without a modality column (default: the bank's)")
    c.add_argument("--examples", type=int, default=5, help="label sets shown (the most frequent)")
    c.add_argument("--json", action="store_true", help="print the whole preview as JSON")
    c.set_defaults(func=_cmd_captions)
    t = sub.add_parser("tokenizer", help="train a WordPiece tokenizer on the captions of DIR (saved beside them)")
    t.add_argument("dir")
    t.add_argument("--out", help="tokenizer folder (default DIR/tokenizer)")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--context-length", type=int, default=256)
    t.set_defaults(func=_cmd_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ingest``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ingest: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
