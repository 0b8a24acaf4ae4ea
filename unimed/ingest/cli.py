"""The ``ingest`` command: convert, verify, inspect, merge, split, captions.

Thin: each subcommand parses flags, builds a config and calls one library function. A
:class:`~unimed.errors.UserError` is printed as one line and exits 2; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import MISSING
from typing import Any

from unimed.errors import ArgumentParser, UserError, stdout_closed

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


def _convert_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """The flags of ``ingest convert`` that set a field of ConvertConfig or of its ``read`` (Options) and
    ``write`` (WriteOptions): (field name, flag, argparse keywords). Defaults are never written here: each
    is its field's (:func:`_default`), shown in the help by ``%(default)s``; types come from the defaults."""
    from unimed.ingest.convert import ENGINES, TEXT_MODES
    from unimed.schema import CODECS

    return [
        (
            "report",
            "--report",
            dict(
                metavar="DIR",
                help="operator's report folder, outside --out: rejected inputs with "
                "their paths (default OUT.report; for an s3:// --out STAGING.report, never uploaded)",
            ),
        ),
        (
            "staging",
            "--staging",
            dict(
                metavar="DIR",
                help="s3:// --out: the local folder chunks are written to before "
                "upload, and the resume state (default: under $UNIMED_CACHE_DIR or ~/.cache/unimed)",
            ),
        ),
        (
            "show_paths",
            "--show-paths",
            dict(help="print rejected inputs by path on stderr (default: by uid; paths may carry patient names)"),
        ),
        (
            "modality",
            "--modality",
            dict(
                metavar="MODALITY",
                help="modality of inputs that carry none (PNG/JPEG, NIfTI, "
                "DICOM without Modality; slides are pathology): xray|ct|mri|ultrasound|pathology|fundus|other, "
                "or auto (reject those) (default %(default)s); DICOM keeps its own",
            ),
        ),
        (
            "force_modality",
            "--force-modality",
            dict(
                metavar="MODALITY",
                help="modality of every input, whatever it carries (DICOM Modality included); not with --modality",
            ),
        ),
        ("labels", "--labels", dict(metavar="CSV", help="label table: path column and labels (or 0/1 class columns)")),
        ("class_folders", "--class-folders", dict(help="label = first folder below each input folder")),
        ("banks", "--captions", dict(metavar="BANK.yaml", action="append", help="extra caption bank(s)")),
        (
            "source_name",
            "--source",
            dict(help="dataset name stored in each sample, e.g. chexpert (default: local; never taken from a path)"),
        ),
        (
            "text",
            "--text",
            dict(
                choices=TEXT_MODES,
                help="free text (reports, manifest captions): scrub removes PHI; "
                "findings keeps only sentences made of clinical vocabulary (default %(default)s)",
            ),
        ),
        (
            "workers",
            "--workers",
            dict(
                help="worker processes (default %(default)s); with --engine ray, chunks are cut "
                "for this many tasks or the cluster's CPUs, whichever is more"
            ),
        ),
        (
            "engine",
            "--engine",
            dict(
                choices=ENGINES,
                help="local: worker processes on this machine; ray: one Ray task "
                "per chunk, on a cluster sharing the inputs' and --out's file system (pip install "
                "'unimed[ray]') (default %(default)s)",
            ),
        ),
        (
            "address",
            "--address",
            dict(
                metavar="ADDR",
                help="--engine ray: the cluster to join (auto, or HOST:PORT of "
                "`ray start --head`; default: $RAY_ADDRESS, else the one `ray start` began here, "
                "else a new one here)",
            ),
        ),
        ("codec", "--codec", dict(choices=CODECS, help="(default %(default)s)")),
        ("quality", "--quality", dict(help="JPEG quality (default %(default)s)")),
        (
            "max_side",
            "--max-size",
            dict(help="longer side of stored images in pixels (default %(default)s; 0 keeps the original)"),
        ),
        ("bits", "--bits", dict(choices=[8, 16], help="16 keeps 16-bit PNG output (default %(default)s)")),
        (
            "size_limit",
            "--size-limit",
            dict(type=parse_size, help="shard size before compression (default %(default)s)"),
        ),
        (
            "compression",
            "--compression",
            dict(
                type=_compression,
                help="zstd[:LEVEL] or none (default %(default)s: 94%% of level 3's saving at 0.4 of its cost)",
            ),
        ),
        (
            "num_shards",
            "--num-shards",
            dict(help="split the job over K machines (with --shard-index; then `ingest merge OUT PART...`)"),
        ),
        ("shard_index", "--shard-index", dict(type=int, help="this machine's part, 0..K-1")),
        ("resume", "--resume", dict(help="continue an interrupted run in --out")),
        (
            "overwrite",
            "--overwrite",
            dict(help="replace the dataset an earlier run left in --out (and its report folder)"),
        ),
        ("strict", "--strict", dict(help="exit non-zero if any input was rejected")),
        (
            "window",
            "--window",
            dict(
                help="auto, file, a named HU window (soft_tissue, lung, bone, brain, ...), C:W, or 3 "
                "as channels (default %(default)s)"
            ),
        ),
        (
            "axis",
            "--axis",
            dict(
                choices=["auto", "axial", "coronal", "sagittal", "0", "1", "2"],
                help="volumes: auto (acquisition plane), axial, coronal, sagittal, or an array axis",
            ),
        ),
        (
            "allow_burned_in",
            "--allow-burned-in",
            dict(help="accept images that may carry burned-in text (only for archives already cleaned)"),
        ),
        (
            "uid_key_file",
            "--uid-key-file",
            dict(help="secret key of the uid hash (default: $UNIMED_UID_KEY or ~/.config/unimed)"),
        ),
        ("tile_size", "--tile-size", dict(help="slides: tile side in pixels (default %(default)s)")),
        ("mpp", "--mpp", dict(help="slides: microns per pixel of the tiles (default %(default)s, ~20x)")),
        ("level", "--level", dict(type=int, help="slides: pyramid level instead of --mpp")),
        ("min_tissue", "--min-tissue", dict(help="slides: tissue fraction a tile needs (default %(default)s)")),
        ("max_tiles", "--max-tiles", dict(help="slides: tiles per slide at most (0: all; default %(default)s)")),
        ("chunk_mb", "--chunk-mb", dict(help="input megabytes per resumable chunk (default %(default)s)")),
        ("progress", "--no-progress", dict(help="no progress line")),
    ]


#: Flags whose parsed value is None when not given (the default is then the field's): --modality and
#: --force-modality exclude each other; --shard-index is required with --num-shards.
_UNSET = ("modality", "force_modality", "shard_index")


def _default(name: str) -> Any:
    """The default of the convert setting ``name``: the field of ConvertConfig, Options or WriteOptions."""
    from unimed.ingest.convert import ConvertConfig
    from unimed.ingest.sources.base import Options
    from unimed.ingest.writer import WriteOptions

    for cls in (ConvertConfig, Options, WriteOptions):
        f = cls.__dataclass_fields__.get(name)
        if f is not None and f.name not in ("read", "write"):
            return f.default_factory() if f.default_factory is not MISSING else f.default
    raise KeyError(name)


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert DICOM, NIfTI and images into MDS shards")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive) or globs")
    p.add_argument(
        "--out",
        required=True,
        help="dataset folder (MDS shards, index.json, summary.json, rejects.jsonl by uid); names no input "
        "path; or s3://BUCKET/PREFIX (staged locally, uploaded chunk by chunk, index.json last)",
    )
    metavars = {
        "workers": "N",
        "quality": "Q",
        "max_side": "PX",
        "size_limit": "SIZE",
        "compression": "ZSTD",
        "num_shards": "K",
        "shard_index": "I",
        "window": "WINDOW",
        "uid_key_file": "KEY",
        "tile_size": "PX",
        "mpp": "MPP",
        "level": "L",
        "min_tissue": "F",
        "max_tiles": "N",
        "chunk_mb": "MB",
        "source_name": "NAME",
    }
    for name, flag, kw in _convert_flags():
        kw = dict(kw, dest=name)
        if name in metavars:
            kw["metavar"] = metavars[name]
        default = _default(name)
        if name == "force_modality":
            kw.update(default=None)  # a modality, stored as Options(modality=M, force_modality=True)
        elif isinstance(default, bool):
            kw.update(action="store_false" if default else "store_true", default=default)
        elif name in _UNSET:
            kw.update(default=None)
            kw["help"] = kw["help"].replace("%(default)s", str(default))
        else:
            kw.setdefault("default", default)
            if "type" not in kw and kw.get("action") != "append" and default is not None:
                kw["type"] = type(default)
        p.add_argument(flag, **kw)


def _convert_config(args: argparse.Namespace) -> Any:
    """The ConvertConfig of parsed ``ingest convert`` flags (UserError for flags that contradict)."""
    from unimed.ingest.convert import ConvertConfig

    kw = {k: v for k, v in vars(args).items() if k not in ("cmd", "func")}
    forced = kw.pop("force_modality")
    if forced is not None and kw["modality"] is not None:
        raise UserError(
            "--modality and --force-modality: give one (--modality for inputs that carry no modality, "
            "--force-modality for every input)"
        )
    if forced is not None:
        kw.update(modality=forced, force_modality=True)
    if kw["modality"] is None:
        del kw["modality"]
    if kw["shard_index"] is None:
        if kw["num_shards"] > 1:  # else every machine of the job would convert part 0
            raise UserError(
                f"--num-shards {kw['num_shards']} needs --shard-index: this machine's part, 0..{kw['num_shards'] - 1}"
            )
        del kw["shard_index"]
    return ConvertConfig(**kw)


def _cmd_convert(args: argparse.Namespace) -> int:
    from unimed.ingest.convert import convert

    cfg = _convert_config(args)
    summary = convert(cfg, echo=lambda s: print(s, file=sys.stderr))
    mods = ", ".join(f"{k} {v}" for k, v in summary["modality"].items()) or "none"
    rejected = f"{summary['rejects']} rejected"
    if summary["rejects"]:
        rejected += f" (paths in {os.path.join(cfg.report_dir, 'rejects.jsonl')})"
    print(
        f"converted {summary['images']} images ({mods}) into {cfg.out}; {rejected}; "
        f"{summary['images_per_second']} img/s"
    )
    if not summary["images"]:
        print(f"ingest: error: {_nothing_converted(cfg.local_out, cfg.out)}", file=sys.stderr)
        return 1
    return 1 if (cfg.strict and summary["rejects"]) else 0


def _nothing_converted(local_out: str, out: str) -> str:
    """The line for a run that converted no image: the commonest reject reason, where the others are, and
    how to run again (the folder now holds the empty dataset, so the corrected command needs --overwrite)."""
    from collections import Counter

    reasons: Counter = Counter()
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(local_out, "rejects.jsonl")) as fh:
            reasons.update(json.loads(line).get("reason", "") for line in fh if line.strip())
    why = ""
    if reasons:
        reason, n = reasons.most_common(1)[0]
        why = f": {reason} ({n} of {sum(reasons.values())} inputs)"
    return (
        f"no image was converted{why}; every reason is in {os.path.join(out, 'rejects.jsonl')}; once fixed, "
        "run again with --overwrite"
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    from unimed.ingest.verify import verify

    faults, counts = verify(args.dir, decode=not args.no_decode, progress=args.progress)
    for f in faults:
        print(f"fault {f}", file=sys.stderr)
    print(
        f"{'FAIL' if faults else 'OK'}: {counts['samples']} samples in {counts['shards']} shards, {len(faults)} faults"
    )
    return 1 if faults else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from unimed.ingest.inspect import inspect

    info = inspect(args.dir, sheet=args.sheet, per_modality=args.per_modality, seed=args.seed, progress=args.progress)
    print(json.dumps({k: info[k] for k in ("samples", "modality", "source")}, indent=2))
    print(f"contact sheet: {info['sheet']}")
    print(f"balance chart: {info['chart']}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from unimed.ingest.lifecycle import default_report_dir
    from unimed.ingest.merge import merge_parts, remerge

    if not args.parts:
        summary = remerge(args.out, args.report)
        print(f"merged {summary['chunks']} chunk folders: {summary['images']} images")
        return 0
    summary = merge_parts(args.out, args.parts, args.report, progress=args.progress)
    for p in args.parts:
        if not os.path.isdir(default_report_dir(p)):
            print(
                f"note: {default_report_dir(p)} not found: the merged report lacks the paths of that part's "
                "rejects (the dataset's rejects.jsonl has them by uid)",
                file=sys.stderr,
            )
    print(
        f"merged {len(args.parts)} parts ({summary['chunks']} chunk folders): {summary['images']} images, "
        f"{summary['rejects']} rejected, into {args.out}"
    )
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from unimed.ingest.split import SplitConfig, report_lines, split

    report = split(
        SplitConfig(
            folder=args.dir,
            by=args.by,
            fractions=args.fractions,
            seed=args.seed,
            out=args.out,
            names=args.names,
            progress=args.progress,
        )
    )
    print("\n".join(report_lines(report)))
    return 0


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress line (off a terminal it is a plain line every few seconds)",
    )


def _split_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "split",
        help="train/val/test folders with no patient (or study) in two of them",
        description="Write one MDS folder per split (OUT/train, OUT/val, OUT/test, each with summary.json; "
        "OUT/split.json) so that no patient (--by patient) or study (--by study) is in two splits. "
        "A group's split comes from a hash of its keyed patient or study key and --seed: the same "
        "seed gives the same split, and a patient keeps its split when data is added. The fractions "
        "hold in expectation; the achieved ones, in samples and in patients, are printed. A sample "
        "without a key (PNG/JPEG folders, NIfTI volumes, DICOM without PatientID) is a group of its "
        "own. Folders converted before patient keys were stored must be re-converted.",
    )
    s.add_argument("dir", help="a folder written by `ingest convert`")
    s.add_argument(
        "--by",
        default="patient",
        choices=["patient", "study"],
        help="the key no two splits may share (default patient)",
    )
    s.add_argument("--fractions", default="0.8,0.1,0.1", help="one per split, summing to 1 (default 0.8,0.1,0.1)")
    s.add_argument("--seed", type=int, default=0, help="another seed, another draw (default 0)")
    s.add_argument("--out", metavar="OUTDIR", help="folder of the splits, outside DIR (default DIR.split beside DIR)")
    s.add_argument("--names", help="split folder names, one per fraction (default train,val,test; train,test for two)")
    _progress_arg(s)
    s.set_defaults(func=_cmd_split)


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
    parser = ArgumentParser(prog="ingest", description="Medical images into MDS shards for CLIP training.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _convert_parser(sub)
    sub.choices["convert"].set_defaults(func=_cmd_convert)
    v = sub.add_parser("verify", help="re-hash shards, decode every image, check schema and counts")
    v.add_argument("dir")
    v.add_argument("--no-decode", action="store_true", help="hashes and schema only")
    _progress_arg(v)
    v.set_defaults(func=_cmd_verify)
    i = sub.add_parser("inspect", help="counts per modality and source, a contact sheet and a balance chart PNG")
    i.add_argument("dir")
    i.add_argument("--sheet", help="contact sheet path (default DIR.inspect/contact_sheet.png, beside DIR)")
    i.add_argument("--per-modality", type=int, default=6, help="images per modality on the sheet")
    i.add_argument("--seed", type=int, default=0)
    _progress_arg(i)
    i.set_defaults(func=_cmd_inspect)
    m = sub.add_parser(
        "merge",
        help="merge the parts of a split job (--num-shards) into a new folder OUT",
        description="Merge the parts of a split job: each PART is the --out of one `ingest convert --num-shards K "
        "--shard-index I`. Every part must be there once and finished, all of one job (inputs, options) "
        "and one uid key; their chunk folders (hard links where the file system allows), plan-time "
        "rejects and report parts (PART.report) go into OUT, then the index. With no PART, OUT is a "
        "folder holding a whole conversion whose index.json, rejects.jsonl and summary.json are rebuilt "
        "in place.",
    )
    m.add_argument("out", metavar="OUT", help="the merged dataset folder: new or empty")
    m.add_argument("parts", nargs="*", metavar="PART", help="the parts' --out folders, one per --shard-index")
    m.add_argument("--report", metavar="DIR", help="report folder of OUT (default OUT.report)")
    _progress_arg(m)
    m.set_defaults(func=_cmd_merge)
    _split_parser(sub)
    c = sub.add_parser(
        "captions", help="preview the captions a label table turns into; list classes with no bank entry"
    )
    c.add_argument("--labels", required=True, metavar="CSV", help="label table (as for convert --labels)")
    c.add_argument(
        "--bank",
        action="append",
        default=[],
        metavar="BANK.yaml",
        help="extra caption bank(s), e.g. one generated offline by a language model",
    )
    c.add_argument("--modality", help="modality of rows without a modality column (default: the bank's)")
    c.add_argument("--examples", type=int, default=5, help="label sets shown (the most frequent)")
    c.add_argument("--json", action="store_true", help="print the whole preview as JSON")
    c.set_defaults(func=_cmd_captions)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ingest``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tokenizer"]:  # it trains on shards for the text tower: a command of `unimed`, not of ingest
        print("ingest: error: the tokenizer command moved: use `unimed tokenizer DIR` (same flags)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not stdout_closed():
            raise
        return 1
    except KeyboardInterrupt:
        print("ingest: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
