"""Merging chunk folders into one dataset: the index, the rejects and ``summary.json``; and the parts of
a split job into one folder.

``convert`` calls :func:`merge` after its chunks. The merged ``index.json`` is the one
``streaming.base.util.merge_index`` writes (each chunk's shards, their basenames prefixed with the
chunk folder), written by :func:`unimed.shards.merge_index` to a temporary name and renamed, so a
full disk never leaves a partial index. The dataset's ``rejects.jsonl`` names rejected inputs by
keyed uid (the plan-time rejects from ``.unimed/plan-rejects-*.jsonl``, the rest from each chunk's
``done.json``); the report folder's ``rejects.jsonl`` (outside the dataset) adds their paths for the
operator.

Every conversion describes itself in ``.unimed/part.json``: which parts of ``parts`` it holds (part
``I`` of ``K`` for ``--num-shards K --shard-index I``, all of one for a plain run), a fingerprint of
the whole job (options and plan, the same on every part), a fingerprint of the uid key (a hash, never
the key), its chunk folders and whether it finished. ``ingest merge OUT PART [PART ...]``
(:func:`merge_parts`) checks those (every part present once, each finished, one job, one key), then
links or copies the parts' chunk folders, plan-time rejects and report parts into ``OUT`` and merges
there. ``ingest merge DIR`` (:func:`remerge`) rebuilds the index and summary of a folder that holds a
whole job (a plain run, or an earlier merge) in place; a lone part, or chunk folders of several parts
copied together by hand, it refuses and points at the first form.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from collections import Counter

from unimed.errors import UserError
from unimed.ingest.lifecycle import check_report_dir, default_report_dir, disk_errors
from unimed.ingest.progress import Progress
from unimed.ingest.writer import DONE_FILE, PARTS_DIR, write_jsonl
from unimed.shards import INDEX, merge_index

__all__ = [
    "STATE_DIR",
    "PART_FILE",
    "chunk_stats",
    "done_chunks",
    "merge",
    "merge_indexes",
    "merge_report",
    "write_summary",
    "key_fingerprint",
    "read_part",
    "write_part",
    "finish_part",
    "merge_parts",
    "remerge",
]

STATE_DIR = ".unimed"  # plan fingerprints, planning rejects (uid and reason), part.json, the run lock
PART_FILE = "part.json"
_CHUNK = re.compile(r"^p(\d{3})-c\d+$")
_NEW_FORM = (
    "ingest merge OUT PART [PART ...] (each PART the --out of one `ingest convert --num-shards K --shard-index I`)"
)


def chunk_stats(folder: str) -> dict | None:
    """The stats of a complete chunk folder (``done.json`` and ``index.json`` present), else None."""
    f = os.path.join(folder, DONE_FILE)
    if folder.endswith(".tmp") or not (os.path.isfile(f) and os.path.isfile(os.path.join(folder, INDEX))):
        return None
    try:
        with open(f) as fh:
            return json.load(fh)
    except ValueError:  # a chunk whose done.json was cut short is not done: it is redone
        return None


def done_chunks(out: str) -> dict[str, dict]:
    """The complete chunk folders of ``out`` and their stats."""
    done = {}
    for d in sorted(os.listdir(out)):
        stats = chunk_stats(os.path.join(out, d))
        if stats is not None:
            done[d] = stats
    return done


def _replace_json(path: str, obj: object, indent: int | None = None) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def merge_indexes(out: str, chunks: list[str]) -> None:
    """Write ``<out>/index.json`` over the shards of the given chunk folders, atomically."""
    merge_index(out, chunks)


def merge_report(report: str) -> int:
    """Gather the report folder's parts into ``<report>/rejects.jsonl`` (uid, path, reason); return the count."""
    rows: list[dict] = []
    for f in sorted(glob.glob(os.path.join(report, PARTS_DIR, "*.jsonl"))):
        with open(f) as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    write_jsonl(os.path.join(report, "rejects.jsonl"), sorted(rows, key=lambda r: (r["path"], r["reason"])))
    return len(rows)


def merge(out: str, report: str | None = None) -> dict:
    """Merge every complete chunk folder of ``out`` into one index, rejects list and summary.

    ``report``, when given and present, is the run's report folder: its per-chunk reject lists
    (with paths) are gathered into ``<report>/rejects.jsonl``.
    """
    if not os.path.isdir(out):
        raise UserError(f"{out}: no such folder")
    done = done_chunks(out)
    merge_indexes(out, list(done))
    rejects: list[dict] = []
    for f in sorted(glob.glob(os.path.join(out, STATE_DIR, "plan-rejects-*.jsonl"))):
        with open(f) as fh:
            rejects.extend(json.loads(line) for line in fh if line.strip())
    modality: Counter = Counter()
    source: Counter = Counter()
    secs: Counter = Counter()
    images = image_bytes = tasks = 0
    for stats in done.values():
        rejects.extend(stats["rejects"])
        modality.update(stats["modality"])
        source.update(stats["source"])
        secs.update(stats["seconds"])
        images += stats["images"]
        image_bytes += stats["image_bytes"]
        tasks += stats["tasks"]
    shard_bytes = sum(
        os.path.getsize(os.path.join(dp, f))
        for d in done
        for dp, _, fs in os.walk(os.path.join(out, d))
        for f in fs
        if ".mds" in f
    )
    write_jsonl(os.path.join(out, "rejects.jsonl"), sorted(rejects, key=lambda r: (r["uid"], r["reason"])))
    if report is not None and os.path.isdir(report):
        merge_report(report)
    return {
        "images": images,
        "tasks": tasks,
        "rejects": len(rejects),
        "chunks": len(done),
        "modality": dict(sorted(modality.items())),
        "source": dict(sorted(source.items())),
        "image_bytes": image_bytes,
        "shard_bytes": shard_bytes,
        "bytes_per_image": round(image_bytes / images, 1) if images else 0,
        "worker_seconds": {k: round(v, 3) for k, v in sorted(secs.items())},
    }


def write_summary(out: str, summary: dict) -> None:
    """Write ``<out>/summary.json`` atomically."""
    _replace_json(os.path.join(out, "summary.json"), summary, indent=2)


# ----------------------------------------------------------------------------- parts of a split job


def key_fingerprint(key: bytes) -> str:
    """A hash of the uid key (never the key itself): parts converted under different keys do not merge."""
    return hashlib.sha256(b"unimed-uid-key-fingerprint\x00" + key).hexdigest()[:16]


def write_part(out: str, *, have: list[int], parts: int, job: str, key: str, chunks: list[str], finished: bool) -> None:
    """Describe the folder ``out``: the parts of the job it holds, the job's and the key's fingerprints,
    its chunk folders, and whether it is finished."""
    os.makedirs(os.path.join(out, STATE_DIR), exist_ok=True)
    _replace_json(
        os.path.join(out, STATE_DIR, PART_FILE),
        {"have": sorted(have), "parts": parts, "job": job, "key": key, "chunks": sorted(chunks), "finished": finished},
        indent=1,
    )


def read_part(folder: str) -> dict | None:
    """The description :func:`write_part` left in ``folder``, or None (not a conversion, or an older one)."""
    try:
        with open(os.path.join(folder, STATE_DIR, PART_FILE)) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"have", "parts", "job", "key", "chunks"} <= info.keys() else None


def finish_part(out: str) -> None:
    """Mark ``out``'s description finished (its chunks are done and merged)."""
    info = read_part(out)
    if info is not None:
        write_part(out, **{**{k: info[k] for k in ("have", "parts", "job", "key", "chunks")}, "finished": True})


def _what(info: dict) -> str:
    """``part 2 of 4`` (as ``--shard-index``), or ``parts 0, 1 of 4`` for a merge of several."""
    have = info["have"]
    return (
        f"part {have[0]} of {info['parts']}"
        if len(have) == 1
        else f"parts {', '.join(map(str, have))} of {info['parts']}"
    )


def _check_parts(parts: list[str]) -> list[dict]:
    """The descriptions of ``parts``, refused in one line unless they are the whole of one finished job."""
    seen: dict[str, str] = {}
    for p in parts:
        real = os.path.realpath(p)
        if real in seen:
            raise UserError(f"{p}: given twice (also as {seen[real]})")
        seen[real] = p
    infos = []
    for p in parts:
        if not os.path.isdir(p):
            raise UserError(f"{p}: no such folder")
        info = read_part(p)
        if info is None:
            raise UserError(
                f"{p}: not the --out of `ingest convert` (no {STATE_DIR}/{PART_FILE}); give the folders "
                "the parts were converted into, one per --shard-index"
            )
        done = done_chunks(p)
        lacking = [c for c in info["chunks"] if c not in done]
        if not info.get("finished") or lacking:
            raise UserError(
                f"{p}: {_what(info)} is not finished"
                + (f" ({lacking[0]} incomplete)" if lacking else "")
                + "; rerun its `ingest convert ... --resume`"
            )
        infos.append(info)
    first, ref = parts[0], infos[0]
    owner: dict[int, str] = {}
    for p, info in zip(parts, infos):
        if info["key"] != ref["key"]:
            raise UserError(
                f"{p}: converted under another uid key than {first} (every part needs the same "
                "--uid-key-file or $UNIMED_UID_KEY)"
            )
        if info["job"] != ref["job"] or info["parts"] != ref["parts"]:
            raise UserError(f"{p}: a part of another job than {first} (other inputs, options or --num-shards)")
        for i in info["have"]:
            if i in owner:
                raise UserError(f"part {i} of {info['parts']} given twice: {owner[i]} and {p}")
            owner[i] = p
    missing = [i for i in range(ref["parts"]) if i not in owner]
    if missing:
        raise UserError(
            f"missing {'part' if len(missing) == 1 else 'parts'} --shard-index "
            f"{', '.join(map(str, missing))} of --num-shards {ref['parts']}: give every part's folder"
        )
    return infos


def _link_tree(src: str, dst: str) -> None:
    """Copy the folder ``src`` to ``dst`` by hard links where the file system allows, else by copies."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def merge_parts(out: str, parts: list[str], report: str | None = None, progress: bool = True) -> dict:
    """Merge the folders of a split job's parts into the new folder ``out``; return its summary.

    Nothing is written before every check has passed. Chunk folders arrive under ``.tmp`` names and are
    renamed when whole, and ``index.json`` comes last, so an interrupted merge leaves no index over a
    partial chunk. The parts' report folders (``PART.report``, where present) are gathered into
    ``report`` (default ``OUT.report``).
    """
    report = report or default_report_dir(out)
    absout = os.path.abspath(out)
    for p in parts:
        ap = os.path.abspath(p)
        if os.path.commonpath([ap, absout]) in (ap, absout):
            raise UserError(f"{out}: lies in or around the part {p}; merge into a new folder beside the parts")
    infos = _check_parts(parts)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"{out}: exists and is not an empty folder; merge into a new one")
    check_report_dir(report, out)
    os.makedirs(os.path.join(out, STATE_DIR), exist_ok=True)
    chunks = [(p, c) for p, info in zip(parts, infos) for c in info["chunks"]]
    bar = Progress(len(chunks), progress, what="merge", unit="chunk folders", count=None)
    with disk_errors(out):
        for p, c in chunks:
            _link_tree(os.path.join(p, c), os.path.join(out, c + ".tmp"))
            os.rename(os.path.join(out, c + ".tmp"), os.path.join(out, c))
            bar.update(1, 0)
        bar.close()
        os.makedirs(os.path.join(report, PARTS_DIR), exist_ok=True)
        for p in parts:
            for f in glob.glob(os.path.join(p, STATE_DIR, "plan-*.json*")):  # plan-time rejects, plan files
                shutil.copy2(f, os.path.join(out, STATE_DIR, os.path.basename(f)))
            theirs = os.path.join(default_report_dir(p), PARTS_DIR)
            for f in glob.glob(os.path.join(theirs, "*.jsonl")):
                shutil.copy2(f, os.path.join(report, PARTS_DIR, os.path.basename(f)))
        summary = merge(out, report)
        write_summary(out, summary)
        ref = infos[0]
        write_part(
            out,
            have=list(range(ref["parts"])),
            parts=ref["parts"],
            job=ref["job"],
            key=ref["key"],
            chunks=[c for _, c in chunks],
            finished=True,
        )
    return summary


def remerge(folder: str, report: str | None = None) -> dict:
    """Rebuild the index, rejects and summary of ``folder`` (a whole job) in place; return the summary."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder")
    done = done_chunks(folder)
    if not done:  # e.g. a folder of raw images: nothing to merge, nothing to write into it
        raise UserError(
            f"{folder}: no complete chunk folder (pNNN-cNNNNN with done.json) of a conversion in it; "
            f"to merge the parts of a split job: {_NEW_FORM}"
        )
    info = read_part(folder)
    if info is not None and len(info["have"]) < info["parts"]:
        raise UserError(f"{folder}: is {_what(info)} of a split job; merge every part into a new folder: {_NEW_FORM}")
    if info is None and len({_CHUNK.match(d).group(1) for d in done if _CHUNK.match(d)}) > 1:
        raise UserError(
            f"{folder}: holds chunk folders of several parts copied together (their plan-time rejects "
            f"and completeness cannot be checked); merge the parts' own folders: {_NEW_FORM}"
        )
    report = report or default_report_dir(folder)
    check_report_dir(report, folder)
    with disk_errors(folder):
        summary = merge(folder, report)
        write_summary(folder, summary)
    return summary
