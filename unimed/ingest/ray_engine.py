"""``ingest convert --engine ray``: the chunks of a conversion as Ray tasks, one task a chunk.

Only where the chunks run changes: the plan, its cut into chunks, the chunk step
(:func:`unimed.ingest.convert.convert_chunk`) and the merge are those of a local run, so a Ray run on
N CPUs writes the bytes that ``--workers N`` writes on one machine. The inputs and ``--out`` must be
one file system for the driver and every node (NFS, Lustre, a mounted bucket). Ray retries a task
whose worker process died (``max_retries``); the chunk step is idempotent, so a retried chunk starts
its folder clean, or keeps the one its first attempt finished. Ray is imported only here, and this
module only for ``--engine ray``: a local run never loads it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from unimed.errors import UserError
from unimed.ingest.dicom_header import READER_ENV
from unimed.ingest.intensity import JPEG_ENV
from unimed.ingest.progress import Progress, tick
from unimed.ingest.writer import ChunkSpec

__all__ = ["RayEngine", "need_ray", "RETRIES"]

#: Attempts after the first for a task whose worker process died (killed, out of memory, a lost node).
RETRIES = 3
POLL_S = 0.2  # the driver gathers finished chunks this often (progress and reject lines)


def need_ray() -> Any:
    """The ``ray`` module, or a UserError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'unimed[ray]'") from None
    return ray


def _plan_batch(fn: Any, args: list) -> list:
    """In a Ray worker: planning of a batch of inputs (probe and plan each)."""
    from unimed.ingest.convert import quiet_libraries

    quiet_libraries()
    return [fn(a) for a in args]


def _chunk_task(shared: tuple, spec: ChunkSpec) -> tuple[dict, list[dict]]:
    """In a Ray worker: convert one chunk; return its stats and its rejects (with paths, for the driver)."""
    from unimed.ingest.convert import convert_chunk, quiet_libraries
    from unimed.ingest.lifecycle import keep_freed_memory

    out, opts, wopts, key, report_dir = shared
    quiet_libraries()
    keep_freed_memory()
    rejects: list[dict] = []
    stats = convert_chunk(
        out, spec, opts, wopts, key, report=lambda _n, new: rejects.extend(new), report_dir=report_dir
    )
    return stats, rejects


class RayEngine:
    """A connection to a Ray cluster that runs a job's tasks.

    ``address`` as ``ray.init`` takes it: None joins ``$RAY_ADDRESS`` or the cluster ``ray start`` left
    on this machine, else starts one here for the run (stopped at the end). A Ray session the process
    already has is joined as it is, and left running.
    """

    def __init__(self, address: str | None = None) -> None:
        self.ray = ray = need_ray()
        self.owned = not ray.is_initialized()
        self.pending: list = []
        if self.owned:
            # Choices the workers make from the environment travel with the job (not the uid key: it
            # is passed to each task, already loaded).
            env = {k: os.environ[k] for k in (JPEG_ENV, READER_ENV) if k in os.environ}
            try:
                # No dashboard for a cluster the run starts (and stops): it would cost seconds a run.
                ray.init(
                    address=address,
                    logging_level=logging.WARNING,
                    include_dashboard=False,
                    runtime_env={"env_vars": env} if env else None,
                )
            except ConnectionError as exc:
                raise UserError(
                    f"--address {address}: no Ray cluster found ({exc}); start one with "
                    "`ray start --head`, or leave out --address for a cluster on this machine"
                ) from None
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def slots(self, workers: int) -> int:
        """Tasks the chunk cut plans for (at least 4 chunks each): the cluster's CPUs, or ``workers`` if more."""
        return max(workers, self.cpus)

    def map(self, fn: Any, args: list, chunksize: int = 32) -> list:
        """``[fn(a) for a in args]`` as Ray tasks over batches, in order: the planning of every input."""
        size = max(chunksize, -(-len(args) // (4 * self.cpus)))
        remote = self.ray.remote(num_cpus=1, max_retries=RETRIES)(_plan_batch)
        refs = [remote.options(name="unimed-plan").remote(fn, args[i : i + size]) for i in range(0, len(args), size)]
        self.pending = refs
        return [r for ref in refs for r in self._get(ref, "planning")]

    def run_chunks(self, todo: list[ChunkSpec], args: tuple, bar: Progress, echo: Any, show_paths: bool) -> None:
        """Run every chunk as a task; count each finished chunk on ``bar`` and print its reject lines."""
        ray = self.ray
        out, opts, wopts, key, report = args
        shared = ray.put((os.path.abspath(out), opts, wopts, key, os.path.abspath(report)))
        remote = ray.remote(num_cpus=1, max_retries=RETRIES)(_chunk_task)
        names = {}
        for spec in todo:  # the task name is the chunk's: no input path reaches Ray's listings
            names[remote.options(name=f"unimed-chunk {spec.name}").remote(shared, spec)] = spec.name
        pending = self.pending = list(names)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S, fetch_local=False)
            for ref in ready:
                stats, rejects = self._get(ref, f"chunk {names[ref]}")
                tick(bar, stats["tasks"], stats["images"], rejects, echo, show_paths)

    def _get(self, ref: Any, what: str) -> Any:
        """A task's result; its own error raised here as a local worker's is, a dead worker in one line."""
        exc_mod = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exc_mod.RayTaskError as exc:
            if isinstance(exc.cause, (UserError, OSError)):
                raise exc.cause from None  # a full disk, a bad option: the same line as a local run
            raise  # a bug: the worker's traceback
        except (
            exc_mod.WorkerCrashedError,
            exc_mod.NodeDiedError,
            exc_mod.OutOfMemoryError,
            exc_mod.ObjectLostError,
        ) as exc:
            raise UserError(
                f"{what}: its Ray worker died {RETRIES + 1} times ({type(exc).__name__}); "
                "rerun with --resume (finished chunks are kept)"
            ) from None

    def cancel(self) -> None:
        """Stop every task of the job still running or queued (the run has failed)."""
        for ref in self.pending:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        """Leave the cluster (and stop it, if this run started it)."""
        if self.owned:
            self.ray.shutdown()
