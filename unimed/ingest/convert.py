"""``ingest convert``: find inputs, plan tasks, convert chunks in worker processes, merge, summarize.

The job is deterministic: the same inputs and options give the same tasks in the same chunks, so a
killed run restarted with ``--resume`` redoes only the chunks that never completed and ends with the
same samples as an uninterrupted run. ``--num-shards K --shard-index I`` gives machine I the I-th
contiguous part of the task list (chunk folders ``pIII-cNNNNN``) and describes it in ``.unimed/part.json``
(part I of K, fingerprints of the whole job and of the uid key, finished or not), so that
``ingest merge OUT PART...`` can check the parts before it merges them. Every engine (one process, a
pool of worker processes, Ray tasks with ``--engine ray``) runs the same chunks through one step,
:func:`convert_chunk`, and ends with the same merge.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from unimed.errors import RejectError, UserError, safe_reason, shown_path
from unimed.ingest.deid import load_uid_key, reject_uid
from unimed.ingest.intensity import LOOKUP, jpeg_encoder
from unimed.ingest.labels import LabelTable
from unimed.ingest.lifecycle import (
    REPORT_NOTE,
    check_report_dir,
    default_report_dir,
    die_with_parent,
    disk_errors,
    keep_freed_memory,
    run_lock,
)
from unimed.ingest.merge import (
    STATE_DIR,
    chunk_stats,
    done_chunks,
    finish_part,
    key_fingerprint,
    merge,
    write_part,
    write_summary,
)
from unimed.ingest.progress import Batcher, progress_bar, reject_line, tick
from unimed.ingest.sources.base import Options, Task, registry
from unimed.ingest.writer import PARTS_DIR, ChunkSpec, WriteOptions, process_chunk, write_jsonl
from unimed.remote import Store, is_remote
from unimed.schema import CODECS, MODALITIES

__all__ = [
    "ConvertConfig",
    "convert",
    "convert_chunk",
    "discover",
    "plan",
    "merge",
    "DEFAULT_SOURCE",
    "TEXT_MODES",
    "ENGINES",
]

#: ``source`` of every sample when ``--source`` is not given: neutral, never derived from a path.
DEFAULT_SOURCE = "local"
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,47}$")
#: ``--text``: scrub PHI from free text (default), or keep only clinical-vocabulary sentences.
TEXT_MODES = ("scrub", "findings")
#: ``--engine``: worker processes on this machine, or Ray tasks on a cluster (the ``ray`` extra).
ENGINES = ("local", "ray")


#: The flat keyword of ``ConvertConfig(captions=...)`` is ``WriteOptions.banks``.
_FLAT_ALIASES = {"captions": "banks"}


def _defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a dataclass (a factory called once)."""
    return {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default
        for f in fields(cls)
        if f.default is not MISSING or f.default_factory is not MISSING
    }


@dataclass(init=False)
class ConvertConfig:
    """Everything ``ingest convert`` takes (the CLI flags, whose defaults are these fields' and the
    nested ``read`` (:class:`Options`, what the sources read) and ``write`` (:class:`WriteOptions`, how
    samples are written)).

    Built nested, ``ConvertConfig(inputs, out, read=Options(...), write=WriteOptions(...), workers=2)``,
    or flat, ``ConvertConfig(inputs=..., out=..., quality=80, tile_size=512, captions=[...])``: a flat
    keyword naming a field of ``Options`` or ``WriteOptions`` (``captions`` is ``WriteOptions.banks``)
    goes there. Reading ``cfg.quality`` reads ``cfg.write.quality`` (and setting it sets it there).
    """

    inputs: list[str]
    out: str
    read: Options = field(default_factory=Options)
    write: WriteOptions = field(default_factory=WriteOptions)
    labels: str | None = None
    class_folders: bool = False
    source_name: str | None = None
    report: str | None = None
    staging: str | None = None  # local staging folder of an s3:// --out (default: under the cache root)
    show_paths: bool = False
    workers: int = 1
    engine: str = "local"
    address: str | None = None
    num_shards: int = 1
    shard_index: int = 0
    resume: bool = False
    overwrite: bool = False  # replace the dataset (and its report folder) an earlier run left in --out
    strict: bool = False
    uid_key_file: str | None = None
    chunk_mb: float = 64.0
    progress: bool = True

    def __init__(
        self, inputs: list[str], out: str, read: Options | None = None, write: WriteOptions | None = None, **kw: Any
    ) -> None:
        nested = {"read": (Options, read), "write": (WriteOptions, write)}
        for part, (cls, given) in nested.items():
            names = {f.name for f in fields(cls)}
            flat = {_FLAT_ALIASES.get(k, k): kw.pop(k) for k in list(kw) if _FLAT_ALIASES.get(k, k) in names}
            if "banks" in flat:
                flat["banks"] = list(flat["banks"])
            object.__setattr__(self, part, replace(given, **flat) if given is not None else cls(**flat))
        own = _defaults(type(self))
        unknown = sorted(set(kw) - set(own))
        if unknown:
            raise TypeError(f"ConvertConfig: no option {', '.join(unknown)}")
        self.inputs, self.out = inputs, out
        for name, default in own.items():
            if name not in nested:
                setattr(self, name, kw.get(name, default))

    def _nested(self, name: str) -> tuple[Any, str] | None:
        name = _FLAT_ALIASES.get(name, name)
        for part in ("read", "write"):
            obj = self.__dict__.get(part)
            if obj is not None and name in obj.__dataclass_fields__:
                return obj, name
        return None

    def __getattr__(self, name: str) -> Any:
        hit = self._nested(name) if not name.startswith("__") else None
        if hit is None:
            raise AttributeError(f"ConvertConfig has no option {name!r}")
        return getattr(*hit)

    def __setattr__(self, name: str, value: Any) -> None:
        hit = None if name in self.__dataclass_fields__ else self._nested(name)
        if hit is None:
            object.__setattr__(self, name, value)
        else:
            setattr(*hit, value)

    def check(self) -> None:
        """Raise UserError for contradictory or impossible options."""
        r, w = self.read, self.write
        if is_remote(self.out):
            Store(self.out, "--out")  # the URL's form (s3://BUCKET/PREFIX); the bucket is checked by convert
        elif self.staging is not None:
            raise UserError("--staging is the local folder of an s3:// --out; drop it for a local --out")
        if not is_remote(self.out) and os.path.exists(self.out) and not os.path.isdir(self.out):
            raise UserError(f"--out {self.out}: is a file; give a folder")
        flag = "--force-modality" if r.force_modality else "--modality"
        if r.modality not in MODALITIES and (r.force_modality or r.modality != "auto"):
            raise UserError(
                f"{flag} {r.modality}: use {'' if r.force_modality else 'auto or '}one of {', '.join(MODALITIES)}"
            )
        if w.codec not in CODECS:
            raise UserError(f"--codec {w.codec}: use {' or '.join(CODECS)}")
        if r.bits not in (8, 16) or (r.bits == 16 and w.codec != "png"):
            raise UserError("--bits 16 needs --codec png (JPEG holds 8 bits)")
        if not 1 <= w.quality <= 100:
            raise UserError(f"--quality {w.quality}: use 1..100")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise UserError(f"--shard-index {self.shard_index} must lie in 0..{self.num_shards - 1}")
        if self.num_shards > 1 and is_remote(self.out):
            # Each part would publish an index.json of its own part over the one prefix.
            raise UserError(
                "--num-shards with an s3:// --out: write each part to a shared folder, `ingest merge` "
                "them, then convert or copy the merged folder to the bucket (or use --engine ray)"
            )
        if r.tile_size < 16 or r.mpp <= 0 or not 0 <= r.min_tissue <= 1 or r.max_tiles < 0:
            raise UserError("slides: --tile-size >= 16, --mpp > 0, --min-tissue in 0..1, --max-tiles >= 0")
        if self.workers < 1:
            raise UserError("--workers must be at least 1")
        if self.engine not in ENGINES:
            raise UserError(f"--engine {self.engine}: use {' or '.join(ENGINES)}")
        if self.address is not None and self.engine != "ray":
            raise UserError("--address is the Ray cluster of --engine ray; add --engine ray or drop --address")
        if self.engine == "ray":
            from unimed.ingest.ray_engine import need_ray

            need_ray()  # before any folder is made: one line naming the extra when Ray is missing
        if self.source_name is not None and not SOURCE_NAME.match(self.source_name):
            raise UserError(
                f"--source {self.source_name!r}: a short name (letters, digits, . _ -; at most 48), "
                "e.g. the dataset's public name; it is stored in every sample"
            )
        if r.text not in TEXT_MODES:
            raise UserError(f"--text {r.text}: use {' or '.join(TEXT_MODES)}")
        check_report_dir(self.report_dir, self.local_out)
        from unimed.shards import check_compression, parse_size

        try:
            check_compression(w.compression)
            parse_size(w.size_limit)
        except ValueError as exc:
            raise UserError(f"--compression/--size-limit: {exc}") from None
        from unimed.ingest.intensity import parse_windows

        try:
            windows = parse_windows(r.window)
        except ValueError as exc:
            raise UserError(f"--window: {exc}") from None
        if windows is not None and r.force_modality and r.modality != "ct":
            raise UserError(
                f"--window {r.window} is a Hounsfield window and applies to CT only, "
                f"not to --force-modality {r.modality}"
            )

    @property
    def report_dir(self) -> str:
        """The operator's report folder (paths of rejected inputs), outside the dataset folder."""
        return self.report or default_report_dir(self.local_out)

    @property
    def local_out(self) -> str:
        """The folder the chunks are written to: ``out``, or for an s3:// ``out`` its staging folder."""
        if not is_remote(self.out):
            return self.out
        from unimed.ingest.publish import staging_dir

        return staging_dir(self.out, self.staging)


# ----------------------------------------------------------------------------- discovery


def discover(inputs: list[str], out: str, report: str | None = None) -> list[tuple[str, str]]:
    """Expand files, folders (recursive) and globs into sorted (file, input root) pairs.

    The output and report folders are never inputs. Non-regular files are listed too: planning
    rejects them (opening a FIFO would block the run).
    """
    skip = {os.path.abspath(out), os.path.abspath(report or default_report_dir(out))}
    found: dict[str, str] = {}
    for arg in inputs:
        matches = sorted(glob.glob(arg, recursive=True)) if any(c in arg for c in "*?[") else [arg]
        if not matches or not os.path.exists(matches[0]):
            raise UserError(f"{arg}: no such file or folder")
        for m in matches:
            if os.path.isdir(m):
                root = os.path.abspath(m)
                for dirpath, dirnames, filenames in os.walk(m):
                    dirnames[:] = sorted(
                        d
                        for d in dirnames
                        if not d.startswith(".") and os.path.abspath(os.path.join(dirpath, d)) not in skip
                    )
                    for f in sorted(filenames):
                        if not f.startswith("."):
                            found.setdefault(os.path.abspath(os.path.join(dirpath, f)), root)
            else:
                found.setdefault(os.path.abspath(m), os.path.dirname(os.path.abspath(m)))
    return sorted(found.items())


def _probe_and_plan(args: tuple[str, str, Options]) -> tuple[list[Task], dict | None]:
    path, _root, opts = args
    p = Path(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return [], {"path": path, "reason": "file or folder name is not valid UTF-8; rename it to convert it"}
    try:
        mode = os.stat(p).st_mode
        if not stat.S_ISREG(mode):
            return [], {"path": path, "reason": "not a regular file (a FIFO, socket or device); skipped"}
        with open(p, "rb") as fh:
            head = fh.read(256)
    except OSError as exc:
        return [], {"path": path, "reason": f"cannot open ({exc.strerror or 'broken link'})"}
    tried = []
    for name, source in registry().items():
        if not source.probe(p, head):
            tried.append(f"{name}: not its format")
            continue
        missing = source.missing()
        if missing:
            return [], {"path": path, "reason": f"{name} source needs package(s) {', '.join(missing)}"}
        try:
            tasks = source.plan(p, opts)
        except RejectError as exc:
            return [], {"path": path, "reason": exc.reason}
        except Exception as exc:
            return [], {"path": path, "reason": safe_reason(exc)}
        tasks = tasks if isinstance(tasks, list) else [tasks]
        for t in tasks:
            t.origin = t.origin or path  # the input file a task came from (a manifest's rows)
        return tasks, None
    return [], {"path": path, "reason": "no source recognized the file (tried " + "; ".join(tried) + ")"}


def plan(cfg: ConvertConfig, opts: Options, pool: Any = None) -> tuple[list[Task], list[dict]]:
    """All tasks of the job (before the split across machines) and the planning rejects (with paths).

    Copies of one DICOM instance (same SOP Instance UID) become one task whose ``alternates`` the
    writer tries in path order when the first copy does not convert.
    """
    files = discover(cfg.inputs, cfg.out, cfg.report_dir)
    if not files:
        raise UserError("no input files found in " + " ".join(cfg.inputs))
    table = LabelTable(cfg.labels) if cfg.labels else None
    args = [(f, root, opts) for f, root in files]
    results = pool.map(_probe_and_plan, args, chunksize=32) if pool is not None else map(_probe_and_plan, args)
    tasks: list[Task] = []
    rejects: list[dict] = []
    roots = dict(files)
    for tlist, reject in results:
        if reject is not None:
            rejects.append(reject)
        tasks.extend(tlist)
    # An image a manifest lists is converted with its captions, not a second time on its own.
    listed = {t.name for t in tasks if t.listed}
    if listed:
        tasks = [t for t in tasks if t.listed or t.name not in listed]
    loose: list[Task] = []  # --class-folders: images lying directly in an input folder, in no class folder
    matched = 0  # inputs the label table names
    for t in tasks:
        root = roots.get(t.origin or t.name, os.path.dirname(t.name))
        t.source_name = cfg.source_name or DEFAULT_SOURCE
        hit = table.lookup(t.name) if table is not None else None
        matched += hit is not None
        if cfg.class_folders and not t.listed:
            rel = os.path.relpath(t.name, root).split(os.sep)
            if len(rel) > 1:
                t.labels = [rel[0]]
            elif hit is None:
                loose.append(t)
        if hit is not None:
            t.labels = hit.labels
            t.view = hit.view
            if hit.modality:
                if hit.modality not in MODALITIES:
                    raise UserError(f"{cfg.labels}: modality {hit.modality} is not one of {', '.join(MODALITIES)}")
                t.modality = hit.modality
    if table is not None and tasks and not matched:  # a table for other files, or paths relative to elsewhere
        raise UserError(
            f"--labels {cfg.labels}: none of its {len(table.entries)} rows names one of the "
            f"{len(tasks)} inputs (rows match by path relative to the table's folder, by file name "
            "or by glob); check the path column"
        )
    if loose and len(loose) == len(tasks):
        raise UserError(
            "--class-folders: every image lies directly in " + " ".join(cfg.inputs) + ", in no class "
            "folder; give the folder that holds the class folders (e.g. BACH/, not BACH/Benign/)"
        )
    if loose:  # never an unlabelled sample in a labelled set
        ids = {id(t) for t in loose}
        tasks = [t for t in tasks if id(t) not in ids]
        rejects += [
            {"path": t.name, "reason": "not inside a class folder (--class-folders labels by folder)"} for t in loose
        ]
    # Duplicate DICOM instances, then per-source grouping (DICOM series ordering).
    first: dict[str, Task] = {}
    unique: list[Task] = []
    for t in sorted(tasks, key=lambda t: t.name):
        sop = t.sop
        if sop and sop in first:
            first[sop].alternates.append(t.name)
            continue
        if sop:
            first[sop] = t
        unique.append(t)
    for name, source in registry().items():
        group = getattr(source, "group", None)
        if group is not None:
            group([t for t in unique if t.source == name])
    return unique, rejects


def _chunks(
    tasks: list[Task], prefix: str, chunk_mb: float, workers: int, sizes: list[int] | None = None, max_tasks: int = 4096
) -> list[ChunkSpec]:
    """Cut the task list into chunks of about equal weight: at least 4 per worker, in whole rounds
    of ``workers``, at most ``chunk_mb`` each.

    ``sizes`` (tasks per chunk, from the plan file of an interrupted run) cuts it as that run did, so
    a run resumed with another ``--workers`` redoes exactly the chunks that never completed.
    """
    if sizes is None:
        weights = [max(t.weight, 1) for t in tasks]
        total = sum(weights)
        n = max(-(-total // int(max(chunk_mb, 0.001) * 1e6)), 4 * workers, -(-len(tasks) // max_tasks))
        n = min(-(-n // workers) * workers, len(tasks))  # a whole round per worker: no chunk runs alone at the end
        sizes, cum = [0] * n, 0
        for w in weights:  # a task goes to the chunk its weight's midpoint falls in
            sizes[min(int((cum + w / 2) * n // total), n - 1)] += 1
            cum += w
        # Many small files beside a few big ones: no chunk holds more than max_tasks tasks either.
        sizes = [k // p + (i < k % p) for k in sizes if k for p in [-(-k // max_tasks)] for i in range(p)]
    out: list[ChunkSpec] = []
    lo = 0
    for k in sizes:
        out.append(ChunkSpec(f"{prefix}-c{len(out):05d}", tasks[lo : lo + k]))
        lo += k
    if lo != len(tasks):
        raise UserError("the plan file's chunks do not match the tasks; use a new --out")
    return out


def _legacy_sizes(tasks: list[Task], chunk_mb: float, max_tasks: int = 4096) -> list[int]:
    """Tasks per chunk as runs before the plan file recorded them cut the list (by ``chunk_mb`` only)."""
    target = max(chunk_mb, 0.001) * 1e6
    sizes, n, weight = [], 0, 0
    for t in tasks:
        n, weight = n + 1, weight + t.weight
        if weight >= target or n >= max_tasks:
            sizes.append(n)
            n, weight = 0, 0
    return sizes + ([n] if n else [])


#: Options of the run, not of the dataset it writes: left out of the fingerprints.
_RUN_ONLY = (
    "workers",
    "engine",
    "address",
    "resume",
    "overwrite",
    "strict",
    "progress",
    "out",
    "report",
    "show_paths",
    "staging",
)
#: Settings added after plan files recorded fingerprints: hashed only when set, so a run killed before
#: they existed still resumes.
_LATER = ("percentiles", "force_modality")


def _settings(cfg: ConvertConfig) -> dict[str, Any]:
    """The options that shape the dataset, by their flat names (``captions`` for ``banks``)."""
    flat = {k: v for k, v in asdict(cfg).items() if k not in ("read", "write", *_RUN_ONLY)}
    flat.update(asdict(cfg.read))
    flat.update({("captions" if k == "banks" else k): v for k, v in asdict(cfg.write).items()})
    later = _defaults(Options)
    return {k: v for k, v in flat.items() if k not in _LATER or v != later[k]}


def _job_fingerprint(cfg: ConvertConfig, tasks: list[Task]) -> str:
    """What every part of a split job shares (``part.json``): the dataset's options, the contents of the
    label table and caption banks, and the whole plan by paths relative to the inputs' common folder
    (machines may mount the archive at different paths)."""
    keep = {
        k: v
        for k, v in _settings(cfg).items()
        if k not in ("inputs", "shard_index", "uid_key_file", "labels", "captions")
    }
    h = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
    for f in [f for f in (cfg.labels, *cfg.write.banks) if f]:
        with open(f, "rb") as fh:  # read (and checked) by plan already
            h.update(hashlib.sha256(fh.read()).digest())
    paths = [p for t in tasks for p in t.paths]
    try:
        base = os.path.dirname(os.path.commonpath(paths)) if paths else ""
    except ValueError:  # relative beside absolute paths: compared as they are
        base = ""
    for t in tasks:
        rel = [os.path.relpath(p, base) if base else p for p in t.paths]
        h.update(f"{rel}|{t.weight}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _fingerprint(cfg: ConvertConfig, tasks: list[Task]) -> str:
    keep = _settings(cfg)
    h = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
    for t in tasks:
        h.update(f"{t.paths}|{t.alternates or None}|{t.weight}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- running


def quiet_libraries() -> None:
    """Silence library warnings and logs that quote header values (they could carry PHI).

    Problems with an input reach the user as reject lines, which say what is wrong without values.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    warnings.filterwarnings("ignore", module=r"nibabel(\..*)?")
    warnings.filterwarnings("ignore", message=r".*(VR|value|delimiter|dataset).*", category=UserWarning)
    for name in ("pydicom", "nibabel", "PIL"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # pydicom itself is imported only where a file needs it (the fast header reader does not), and
    # told then not to validate values (unimed.ingest.sources.dicom.dcmread).


def convert_chunk(
    out: str,
    spec: ChunkSpec,
    opts: Options,
    wopts: WriteOptions,
    key: bytes,
    report: Any = None,
    report_dir: str | None = None,
) -> dict:
    """Convert one chunk into ``<out>/<chunk>/`` and return its stats: the step every engine runs.

    It may run again for the same chunk (Ray retries a task whose worker died, perhaps after the
    chunk was finished): a complete chunk folder is kept, and ``report`` hears its inputs and rejects
    as if they were converted now; anything else under the chunk's name is written anew.
    """
    stats = chunk_stats(os.path.join(out, spec.name))
    if stats is None:
        shutil.rmtree(os.path.join(out, spec.name), ignore_errors=True)  # never a finished chunk
        return process_chunk(out, spec, opts, wopts, key, report=report, report_dir=report_dir)
    if report is not None:
        parts = os.path.join(report_dir or "", PARTS_DIR, f"{spec.name}.jsonl")
        if report_dir and os.path.isfile(parts):
            with open(parts) as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        else:
            rows = [{**r, "path": r["uid"]} for r in stats["rejects"]]
        report(stats["images"], rows)
        for _ in range(len(spec.tasks) - 1):
            report(0, [])
    return stats


_QUEUE: Any = None


def _init_worker(queue: Any, parent: int) -> None:
    global _QUEUE
    die_with_parent(parent)
    _QUEUE = queue


def _run_chunk(args: tuple) -> dict:
    """In a worker: convert one chunk, reporting progress in batches, then ``("done", i)`` on the queue.

    The last batch and the done message go through the same queue in that order, so the parent has
    every reject line of a chunk when it learns the chunk is done.
    """
    i, out, spec, opts, wopts, key, report_dir = args
    batch = Batcher(_QUEUE.put)
    try:
        return convert_chunk(out, spec, opts, wopts, key, report=batch, report_dir=report_dir)
    finally:
        batch.flush()
        _QUEUE.put(("done", i))


def _prepare_report(report: str) -> None:
    os.makedirs(os.path.join(report, PARTS_DIR), exist_ok=True)
    note = os.path.join(report, "README.txt")
    if not os.path.isfile(note):
        with open(note, "w") as fh:
            fh.write(REPORT_NOTE)


def convert(cfg: ConvertConfig, echo: Any = print) -> dict:
    """Run the whole conversion; return the summary (also written to ``<out>/summary.json``).

    The dataset folder (``cfg.out``) names no input path; rejected inputs appear there by keyed uid
    and reason, and with their paths in the report folder (``cfg.report_dir``) beside it.
    """
    cfg.check()
    quiet_libraries()
    keep_freed_memory()  # before the pool forks: its workers inherit the setting
    opts, wopts = cfg.read, cfg.write
    from unimed.ingest.captions import CaptionEngine

    CaptionEngine(list(wopts.banks))  # a broken bank is a UserError now, not a reject per image later
    key = load_uid_key(cfg.uid_key_file)
    publisher = None
    if is_remote(cfg.out):  # written into a local staging folder, uploaded chunk by chunk, index last
        from unimed.ingest.publish import Publisher

        publisher = Publisher(cfg.out, cfg.local_out)
        publisher.preflight(cfg.resume)
        cfg = replace(cfg, out=cfg.local_out, report=cfg.report_dir, staging=None)
    out = cfg.out
    if cfg.overwrite and cfg.resume:
        raise UserError("--overwrite and --resume: give one (start again, or continue)")
    if cfg.overwrite and os.path.isdir(out) and os.listdir(out):
        _clear_dataset(out, cfg.report_dir)
    if os.path.isdir(out) and os.listdir(out) and not cfg.resume:
        raise UserError(
            f"{out} is not empty: pass --resume to continue an interrupted run, --overwrite to start "
            "again, or choose a new --out"
        )
    if opts.window not in ("auto", "file") and not (opts.force_modality and opts.modality == "ct"):
        echo(f"note: --window {opts.window} applies to CT images only; other images keep their own windowing")
    cluster = None
    if cfg.engine == "ray":  # joined before any folder is made: a cluster not found leaves nothing behind
        from unimed.ingest.ray_engine import RayEngine

        cluster = RayEngine(cfg.address)
    made = [p for p in (out, os.path.join(out, STATE_DIR), cfg.report_dir) if not os.path.exists(p)]
    try:
        return _convert_locked(cfg, opts, wopts, key, echo, cluster, publisher)
    except UserError:
        # A mistake found before any chunk was written (no input, bad labels): leave nothing behind, so
        # the corrected command is not told that --out is not empty.
        if os.path.isdir(out) and all(name == STATE_DIR for name in os.listdir(out)):
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
        raise


_CHUNK_NAME = re.compile(r"^p\d{3}-c\d+(\.tmp)?$")  # the chunk folders: f"p{part:03d}-c{chunk:05d}"


def _clear_dataset(out: str, report: str) -> None:
    """Empty ``out`` for --overwrite, if it holds an earlier run's dataset (and nothing else)."""
    names = os.listdir(out)
    ours = {STATE_DIR, "index.json", "rejects.jsonl", "summary.json"}
    strangers = [n for n in names if n not in ours and not _CHUNK_NAME.match(n)]
    if strangers or STATE_DIR not in names and "index.json" not in names:
        raise UserError(
            f"--overwrite: {out} does not hold a converted dataset only (it has {strangers[:1] or names[:1]}); "
            "remove it yourself or choose a new --out"
        )
    for n in names:
        path = os.path.join(out, n)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if os.path.isdir(report):
        shutil.rmtree(report)


def _convert_locked(
    cfg: ConvertConfig, opts: Options, wopts: WriteOptions, key: bytes, echo: Any, cluster: Any, publisher: Any
) -> dict:
    out = cfg.out
    with (
        contextlib.closing(cluster) if cluster else contextlib.nullcontext(),
        disk_errors(out),
        run_lock(os.path.join(out, STATE_DIR), out),
    ):
        if publisher is not None:
            publisher.take_stock()
        _prepare_report(cfg.report_dir)
        with publisher or contextlib.nullcontext():
            start = _run(cfg, opts, wopts, key, echo, cluster)
        summary = merge(out, cfg.report_dir)
        summary["seconds"] = round(time.perf_counter() - start, 3)
        summary["images_per_second"] = round(summary["images"] / summary["seconds"], 2) if summary["seconds"] else 0
        write_summary(out, summary)
        finish_part(out)
        if publisher is not None:
            publisher.publish(summary)
    return summary


def _run(cfg: ConvertConfig, opts: Options, wopts: WriteOptions, key: bytes, echo: Any, cluster: Any = None) -> float:
    """Plan, then convert the chunks not done yet (on ``cluster``, a RayEngine, if given); return the
    start time (after the imports and the joining of a cluster)."""
    out, report = cfg.out, cfg.report_dir
    state = os.path.join(out, STATE_DIR)
    prefix = f"p{cfg.shard_index:03d}"
    start = time.perf_counter()  # after the imports: the figure is about converting, not starting up
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    local = cfg.workers > 1 and cfg.engine == "local"
    queue = ctx.Queue() if local else None
    pool = ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(queue, os.getpid())) if local else None
    was_enabled = gc.isenabled()
    try:
        # Planning makes tens of thousands of objects (a task per input, unpickled from the pool) and no
        # cycles: with the collector paused the parent plans about a quarter faster.
        gc.disable()
        try:
            all_tasks, plan_rejects = plan(cfg, opts, pool or cluster)
        finally:
            if was_enabled:
                gc.enable()
        gc.freeze()  # the plan lives for the whole run: the collector need not walk it again and again
        n = len(all_tasks)
        lo, hi = cfg.shard_index * n // cfg.num_shards, (cfg.shard_index + 1) * n // cfg.num_shards
        tasks = all_tasks[lo:hi]
        fp = _fingerprint(cfg, all_tasks)
        plan_file = os.path.join(state, f"plan-{prefix}.json")
        sizes = None
        if cfg.resume and os.path.isfile(plan_file):
            with open(plan_file) as fh:
                previous = json.load(fh)
            if previous.get("fingerprint") != fp:
                raise UserError(
                    f"{out}: inputs or options differ from the interrupted run; pass --overwrite to "
                    "start again, or use a new --out"
                )
            sizes = previous.get("chunks") or _legacy_sizes(tasks, cfg.chunk_mb)
        slots = cluster.slots(cfg.workers) if cluster is not None else cfg.workers
        chunks = _chunks(tasks, prefix, cfg.chunk_mb, slots, sizes)
        with open(plan_file, "w") as fh:
            json.dump({"fingerprint": fp, "tasks": len(tasks), "chunks": [len(c.tasks) for c in chunks]}, fh)
        write_part(
            out,
            have=[cfg.shard_index],
            parts=cfg.num_shards,
            job=_job_fingerprint(cfg, all_tasks),
            key=key_fingerprint(key),
            chunks=[c.name for c in chunks],
            finished=False,
        )
        if cfg.shard_index == 0 or cfg.num_shards == 1:  # planning rejects are reported once
            for r in plan_rejects:
                r["uid"], r["path"] = reject_uid(key, r["path"]), shown_path(r["path"])
                echo(reject_line(r, cfg.show_paths))
            write_jsonl(
                os.path.join(state, f"plan-rejects-{prefix}.jsonl"),
                [{"uid": r["uid"], "reason": r["reason"]} for r in plan_rejects],
            )
            write_jsonl(os.path.join(report, PARTS_DIR, f"plan-{prefix}.jsonl"), plan_rejects)
        done = done_chunks(out)
        for d in os.listdir(out):  # partial chunks of a killed run: redone from scratch
            if d.endswith(".tmp") or (d.startswith(f"{prefix}-c") and d not in done):
                shutil.rmtree(os.path.join(out, d), ignore_errors=True)
        todo = [c for c in chunks if c.name not in done]
        bar = progress_bar(cfg.progress, sum(len(c.tasks) for c in todo))
        if todo and wopts.codec == "jpeg":
            echo(f"jpeg encoder: {jpeg_encoder().description}")
        if todo and LOOKUP != "compiled":
            echo("window lookup: numpy (unimed/ingest/_lut.c was not built at install; a C compiler builds it)")
        if cluster is not None:
            cluster.run_chunks(todo, (out, opts, wopts, key, report), bar, echo, cfg.show_paths)
        elif pool is None:
            for spec in todo:
                convert_chunk(
                    out,
                    spec,
                    opts,
                    wopts,
                    key,
                    report_dir=report,
                    report=lambda k, rj: tick(bar, 1, k, rj, echo, cfg.show_paths),
                )
        else:
            _wait_chunks(pool, queue, todo, (out, opts, wopts, key, report), bar, echo, cfg.show_paths)
        bar.close()
    except BaseException:
        if pool is not None:
            pool.terminate()  # no worker goes on writing after the run has failed
        if cluster is not None:
            cluster.cancel()  # nor any Ray task
        raise
    finally:
        gc.unfreeze()
        if pool is not None:
            pool.close()
            pool.join()
    return start


def _wait_chunks(
    pool: Any, queue: Any, todo: list[ChunkSpec], args: tuple, bar: Any, echo: Any, show_paths: bool
) -> None:
    """Run the chunks on the pool; block on the queue (progress batches, done messages) until all are done.

    A chunk whose call fails before it runs (its arguments do not pickle) is reported by the error
    callback; a worker's own error is re-raised here by ``get``.
    """
    out, opts, wopts, key, report = args
    results = []
    for i, spec in enumerate(todo):
        results.append(
            pool.apply_async(
                _run_chunk,
                ((i, out, spec, opts, wopts, key, report),),
                error_callback=lambda _e, i=i: queue.put(("done", i)),
            )
        )
    finished: set[int] = set()
    while len(finished) < len(todo):
        msg = queue.get()
        if msg[0] == "done":
            if msg[1] not in finished:
                finished.add(msg[1])
                results[msg[1]].get()  # re-raise a worker's error (a full disk, a bug) here
        else:
            files, images, rejects = msg  # a worker Batcher's (files, images, rejects)
            tick(bar, files, images, rejects, echo, show_paths)
