"""``ingest convert --out s3://...``: convert into a local staging folder, upload chunk by chunk, index last.

The conversion itself runs unchanged into the staging folder (``--staging DIR``, default a folder
under :func:`unimed.remote.cache_root`), whatever the engine. Beside it a :class:`Publisher` thread
uploads each chunk as soon as its folder is complete: its shard files, then its ``index.json``, then
its ``done.json``, and removes the uploaded shard files from the staging folder (the chunk's small
``index.json`` and ``done.json`` stay: they are the resume state). The run's plan file
(``.unimed/plan-*.json``: a fingerprint and the chunk sizes, no path) goes up before the first chunk.
When every chunk is up and merged, ``rejects.jsonl`` and ``summary.json`` are uploaded and, after a
listing has shown every shard the merged index names, ``index.json`` last. A reader therefore never
finds an ``index.json`` that names a shard the bucket lacks, however the run ends.

Resume (``--resume``): a chunk counts as done when the bucket holds its ``done.json`` (uploaded last)
and every shard its index names, at the size the index says. A chunk complete in staging but not in
the bucket is uploaded again; one whose shards are neither in staging nor in the bucket is redone. A
chunk the bucket holds but staging does not (a resume on another machine, or after the staging folder
was lost) is adopted: its ``index.json`` and ``done.json`` are downloaded, its shards stay in the
bucket. The operator's report folder (rejected inputs with their paths) is never uploaded.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import threading
from types import TracebackType

from unimed.errors import UserError
from unimed.ingest.merge import STATE_DIR, done_chunks, write_summary
from unimed.ingest.writer import DONE_FILE
from unimed.remote import Store, url_folder
from unimed.shards import INDEX, read_index, shard_file

__all__ = ["Publisher", "staging_dir", "CHUNK"]

#: A chunk folder's name (``pIII-cNNNNN``: machine part, chunk number).
CHUNK = re.compile(r"^p\d{3}-c\d{5}$")
#: The dataset-level files uploaded after the chunks, ``index.json`` last of all.
_LAST = ("rejects.jsonl", "summary.json", INDEX)

#: Held by the upload thread for each upload, and by a thread that forks (the worker pool of
#: ``--workers N`` is forked while the uploads run): a child never starts as a copy of a process in
#: the middle of an HTTP request, with the locks of boto3 and its connection pool taken.
_FORK_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_FORK_LOCK.acquire, after_in_parent=_FORK_LOCK.release, after_in_child=_FORK_LOCK.release
    )


def staging_dir(url: str, staging: str | None = None) -> str:
    """The local staging folder of a conversion into ``url``: ``staging``, else one under the cache root."""
    return os.path.abspath(os.path.expanduser(staging)) if staging else url_folder("staging", url)


def _shards(folder: str) -> list[str]:
    """Basenames of the shard files a chunk folder's index names."""
    return [shard_file(s)["basename"] for s in read_index(folder)["shards"]]


class Publisher:
    """Mirror a staging folder's complete chunks into ``url`` while the conversion runs (a thread).

    Use: :meth:`preflight` (before the run takes its lock), :meth:`take_stock` (under it, before the
    chunks run), ``with publisher:`` around the chunks, :meth:`publish` after the merge.
    """

    def __init__(self, url: str, staging: str, interval: float = 0.2) -> None:
        self.store = Store(url, "--out")
        self.url = self.store.url
        self.staging = staging
        self.interval = interval
        self.uploaded: set[str] = set()  # chunk folders complete in the bucket
        self._sent: dict[str, tuple[int, int]] = {}  # state file -> (size, mtime) last uploaded
        self._remote: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ before the run

    def preflight(self, resume: bool) -> None:
        """Check that the bucket answers; refuse a folder that holds objects unless resuming."""
        self.store.check()
        self._remote = self.store.list()
        if self._remote and not resume:
            raise UserError(
                f"--out {self.url}: already holds {len(self._remote)} objects; pass --resume to "
                "continue an interrupted run, or choose a new --out"
            )

    def take_stock(self) -> None:
        """Sort the chunks of an interrupted run into done (in the bucket), to upload, and to redo."""
        remote = self._remote
        self._adopt_plans(remote)
        local = {d for d in done_chunks(self.staging) if CHUNK.match(d)}
        in_bucket = {
            rel.split("/")[0]
            for rel in remote
            if rel.count("/") == 1 and rel.endswith("/" + DONE_FILE) and CHUNK.match(rel.split("/")[0])
        }
        for name in sorted(local | in_bucket):
            folder = os.path.join(self.staging, name)
            if name not in local:
                self._adopt_chunk(name, remote)
                continue
            shards = _shards(folder)
            if self._complete(name, folder, remote):
                self.uploaded.add(name)
                for base in shards:  # left behind by a run killed between upload and clean-up
                    if os.path.exists(os.path.join(folder, base)):
                        os.remove(os.path.join(folder, base))
            elif not all(os.path.isfile(os.path.join(folder, b)) for b in shards):
                shutil.rmtree(folder)  # its shards are neither here nor in the bucket: redone

    def _adopt_plans(self, remote: dict[str, dict]) -> None:
        for rel in sorted(remote):
            if not (rel.startswith(f"{STATE_DIR}/plan-") and rel.endswith(".json") and rel.count("/") == 1):
                continue
            theirs = self.store.read_json(rel)
            path = os.path.join(self.staging, rel)
            try:
                with open(path) as fh:
                    mine = json.load(fh)
            except (OSError, ValueError):
                mine = None
            if mine is None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as fh:
                    json.dump(theirs, fh)
            elif mine.get("fingerprint") != theirs.get("fingerprint"):
                raise UserError(
                    f"--out {self.url}: holds a run of other inputs or options than the staging folder "
                    f"{self.staging}; use a new --out (or the staging folder of that run)"
                )

    def _adopt_chunk(self, name: str, remote: dict[str, dict]) -> None:
        """Take a chunk the bucket holds into staging (its index and done.json; the shards stay remote)."""
        if not os.path.isfile(os.path.join(self.staging, STATE_DIR, f"plan-{name[:4]}.json")):
            return  # a chunk of no known plan is not trusted: it is redone
        tmp = os.path.join(self.staging, name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.store.download(f"{name}/{INDEX}", os.path.join(tmp, INDEX))
        try:
            ok = self._complete(name, tmp, remote, index_only=True)
        except UserError:  # a damaged index: the chunk is redone
            ok = False
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self.store.download(f"{name}/{DONE_FILE}", os.path.join(tmp, DONE_FILE))
        folder = os.path.join(self.staging, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        self.uploaded.add(name)

    def _complete(self, name: str, folder: str, remote: dict[str, dict], index_only: bool = False) -> bool:
        """Whether the bucket holds the chunk whole: every shard at its size, its index and done.json."""
        for s in read_index(folder)["shards"]:
            entry = shard_file(s)
            if remote.get(f"{name}/{entry['basename']}", {}).get("size") != entry["bytes"]:
                return False
        for f in (INDEX, DONE_FILE):
            got = remote.get(f"{name}/{f}", {}).get("size")
            if got is None or (not index_only and got != os.path.getsize(os.path.join(folder, f))):
                return False
        return True

    # ------------------------------------------------------------------ while the chunks run

    def __enter__(self) -> Publisher:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="unimed-upload", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None:
            if self._error is not None:
                raise self._error
            self._pass()  # what finished since the thread's last look

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._pass()
        except BaseException as exc:  # raised in the main thread when the chunks are done
            self._error = exc

    def _pass(self) -> None:
        with _FORK_LOCK:
            self._send_state()
        for name in sorted(os.listdir(self.staging)):
            if self._stop.is_set() and threading.current_thread() is self._thread:
                return  # stopping: the main thread's last pass takes what is left
            if name in self.uploaded or not CHUNK.match(name):
                continue
            folder = os.path.join(self.staging, name)
            if os.path.isfile(os.path.join(folder, DONE_FILE)) and os.path.isfile(os.path.join(folder, INDEX)):
                with _FORK_LOCK:
                    self._send_state()  # the plan goes up before any chunk of it
                    self._upload_chunk(name, folder)

    def _send_state(self) -> None:
        """Upload the run's plan files (chunk sizes, planning rejects by uid) when they are new or changed."""
        state = os.path.join(self.staging, STATE_DIR)
        for path in sorted(
            glob.glob(os.path.join(state, "plan-*.json")) + glob.glob(os.path.join(state, "plan-*.jsonl"))
        ):
            st = os.stat(path)
            sig = (st.st_size, st.st_mtime_ns)
            if self._sent.get(path) == sig:
                continue
            if path.endswith(".json"):
                try:
                    with open(path) as fh:
                        json.load(fh)
                except ValueError:
                    continue  # being written: the next pass sends it
            self.store.upload(path, f"{STATE_DIR}/{os.path.basename(path)}")
            self._sent[path] = sig

    def _upload_chunk(self, name: str, folder: str) -> None:
        """Shards, then the chunk's index, then its done.json (the mark of a complete chunk); then free
        the staging folder of the shards."""
        shards = _shards(folder)
        for base in shards:
            self.store.upload(os.path.join(folder, base), f"{name}/{base}")
        self.store.upload(os.path.join(folder, INDEX), f"{name}/{INDEX}")
        self.store.upload(os.path.join(folder, DONE_FILE), f"{name}/{DONE_FILE}")
        self.uploaded.add(name)
        for base in shards:
            os.remove(os.path.join(folder, base))

    # ------------------------------------------------------------------ after the merge

    def publish(self, summary: dict) -> None:
        """Upload the dataset's own files, ``index.json`` last, once the bucket holds every shard it names.

        ``summary`` is the merged summary: its ``shard_bytes`` is counted from the index (the staging
        folder no longer holds the shards), then it is written and uploaded.
        """
        index = read_index(self.staging)
        entries = [shard_file(s) for s in index["shards"]]
        summary["shard_bytes"] = sum(e["bytes"] for e in entries)
        write_summary(self.staging, summary)
        remote = self.store.list()
        missing = [e["basename"] for e in entries if remote.get(e["basename"], {}).get("size") != e["bytes"]]
        if missing:
            raise UserError(
                f"--out {self.url}: {len(missing)} shards are not in the bucket (the first: {missing[0]}); "
                "rerun with --resume to upload them"
            )
        for f in _LAST:
            self.store.upload(os.path.join(self.staging, f), f)
