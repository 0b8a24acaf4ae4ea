"""Trained weights back into a ``CLIPModel``: Composer checkpoints (monolithic or FSDP2-sharded) or exports.

A checkpoint is one of: a Composer ``.pt`` file (``state.model`` holds ``model.*`` keys), a sharded
checkpoint folder (``.metadata`` + ``*.distcp``, its ``state.model`` tensors read in memory through
``torch.distributed.checkpoint``), or the plain state dict ``export_path`` writes. A checkpoint with
a bundle (``state.callbacks.UnimedBundle``, see :mod:`unimed.train.bundle`) rebuilds itself; otherwise
the model comes from the ``config.yaml`` saved beside the checkpoints (searched in the checkpoint's
folder and its parents) or a given config; :mod:`unimed.train.loading` decides.

Nothing is unpickled beyond what a checkpoint needs: files load with ``torch.load(weights_only=True)``
and an allow-list of the few Python types Composer 0.32.1 saves beside tensors; a sharded folder's
``.metadata`` goes through an unpickler that knows only DCP's record types. :func:`composer_load_guard`
extends this to Composer's own loading (``load_path``, autoresume), which uses ``weights_only=False``.
A file that needs anything else is refused with a ``UserError`` naming it, before any of it runs.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from unimed.errors import UserError

if TYPE_CHECKING:
    from unimed.streaming.tokenizer import CaptionTokenizer
    from unimed.train.config import TrainConfig

__all__ = [
    "find_config",
    "safe_load",
    "validate_checkpoint",
    "composer_load_guard",
    "read_model_state",
    "read_checkpoint",
    "load_trained",
    "tokenizer_for",
    "check_tokenizer_matches",
]

#: Composer extracts these with ``tarfile.extractall`` (no path filter) before anything can be checked.
_TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.lzma")

#: The only globals a sharded checkpoint's ``.metadata`` may name: DCP's own records and what they hold.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},  # and the dtypes (torch.float32, ...), checked by type
    "pathlib": {"PosixPath", "PurePosixPath"},  # StorageMeta.checkpoint_id
}


def find_config(checkpoint: str) -> str:
    """The ``config.yaml`` nearest above ``checkpoint`` (at most three levels up)."""
    p = Path(checkpoint).resolve()
    for folder in [p if p.is_dir() else p.parent, *list(p.parents)[:3]]:
        if (folder / "config.yaml").is_file():
            return str(folder / "config.yaml")
    raise UserError(f"no config.yaml beside {checkpoint}; give the training YAML with --config")


@functools.cache
def _allow_checkpoint_globals() -> None:
    """Allow, for ``weights_only`` loads, the Python types Composer 0.32.1 saves beside tensors.

    Read from a real checkpoint: ``timedelta`` (the wall-clock fields of each ``Timestamp``), numpy's
    RNG state (a ``uint32`` ndarray) and ``TorchVersion`` (the run metadata). numpy 2 moved
    ``_reconstruct`` to ``numpy._core``; both spellings are allowed, so a checkpoint written under
    numpy 1.26 loads under 2.x and back.
    """
    import datetime

    import numpy as np
    from torch.torch_version import TorchVersion

    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    torch.serialization.add_safe_globals(
        [
            datetime.timedelta,
            TorchVersion,
            np.ndarray,
            np.dtype,
            np.dtypes.UInt32DType,
            (_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"),
        ]
    )


def _refused(name: Any, exc: BaseException) -> str:
    """One line: which file, and the first sentence of the unpickler's reason."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    boiler = ("Weights only load failed", "Check the documentation", "(")
    reason = m.group(1) if m else next((x for x in lines if not x.startswith(boiler)), type(exc).__name__)
    reason = reason.split(". ")[0].rstrip(".")
    return (
        f"{name}: not loaded: it holds Python objects outside the checkpoint allow-list ({reason[:200]}); "
        "load only checkpoints you trust, saved by unimed/Composer or as a plain state dict"
    )


def safe_load(source: str | os.PathLike | IO[bytes], name: Any = None) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` and the allow-list of :func:`_allow_checkpoint_globals`.

    A file that needs any other global is refused with a ``UserError`` naming it (``name``, else
    ``source``), before any of its code could run.
    """
    _allow_checkpoint_globals()
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(_refused(name or source, exc)) from exc


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a sharded checkpoint's ``.metadata``, resolving only the globals of ``_METADATA_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in .metadata")


def _read_metadata(path: str | os.PathLike) -> Any:
    """The ``Metadata`` of a sharded checkpoint, unpickled with :class:`_MetadataUnpickler`."""
    try:
        with open(path, "rb") as fh:
            return _MetadataUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise UserError(_refused(path, exc)) from exc


def validate_checkpoint(path: str | os.PathLike, specs: list[tuple[int, int]] | None = None) -> bool:
    """Composer's ``CHECKPOINT_VALIDATION_FUNCTION`` hook, called on each file before Composer reads it.

    Composer reads a sharded checkpoint's ``.metadata`` with a plain ``pickle.load``; it is checked here
    with the restricted unpickler first (a refusal is a ``UserError``). The torch.save files (monolithic
    checkpoints, ``.distcp`` items) are made safe by the forced ``weights_only`` of
    :func:`composer_load_guard`; ``specs`` (byte ranges of ``.distcp`` items) is unused.
    """
    if os.path.basename(os.fspath(path)) == ".metadata":
        _read_metadata(path)
    return True


def _find_refusal(exc: BaseException | None) -> BaseException | None:
    """The UserError or UnpicklingError behind ``exc`` (through causes and DCP's per-rank failures)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (UserError, pickle.UnpicklingError)):
            return e
        todo += [e.__cause__, e.__context__]
        todo += [f[0] for f in getattr(e, "failures", {}).values() if isinstance(f, tuple) and f]
    return None


@contextmanager
def _refusals_named(source: Any) -> Iterator[None]:
    """A refusal raised inside (also one DCP wrapped in its CheckpointException) becomes one UserError."""
    try:
        yield
    except BaseException as exc:  # CheckpointException is a BaseException
        found = _find_refusal(exc)
        if found is None:
            raise
        raise UserError(str(found) if isinstance(found, UserError) else _refused(source, found)) from exc


@contextmanager
def _forced_weights_only(validate: bool = False) -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True`` and the allow-list, whatever it asks for."""
    _allow_checkpoint_globals()
    env = {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": None}
    if validate:
        env["CHECKPOINT_VALIDATION_FUNCTION"] = f"{__name__}.validate_checkpoint"
    saved = {k: os.environ.get(k) for k in env}
    _set_env(env)
    try:
        yield
    finally:
        _set_env(saved)


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _load_source(load_path: str | None, save_folder: str | None) -> str | None:
    """What Composer will load: the latest checkpoint of ``save_folder`` (autoresume), else ``load_path``."""
    if save_folder and "://" not in save_folder:
        latest = os.path.join(save_folder, "latest-rank0.pt")  # Composer's default save_latest_filename
        if os.path.lexists(latest):
            return os.path.realpath(latest)
    return load_path


@contextmanager
def composer_load_guard(load_path: str | None, save_folder: str | None = None) -> Iterator[None]:
    """Make the checkpoint loading of a Composer ``Trainer`` built inside this block safe.

    Composer 0.32.1 loads ``load_path`` (or, with autoresume, the latest checkpoint in ``save_folder``)
    with ``torch.load(weights_only=False)``, reads a sharded ``.metadata`` with ``pickle.load`` and
    extracts tarballs unfiltered. Inside the block every ``torch.load`` is forced to ``weights_only``
    (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, with the allow-list), ``.metadata`` is checked first through
    Composer's validation hook (:func:`validate_checkpoint`), a tarball is refused, and any refusal
    becomes one ``UserError`` naming the checkpoint. The environment is restored afterwards.
    """
    source = _load_source(load_path, save_folder)
    if source and source.endswith(_TAR_SUFFIXES):
        raise UserError(
            f"{source}: tar checkpoints are not loaded (Composer would extract them unchecked); "
            "extract it and give the .pt file or the sharded folder"
        )
    with _refusals_named(source), _forced_weights_only(validate=True):
        yield


def _read_sharded(folder: str, keys: tuple[str, ...] = ("state.model",)) -> dict:
    """The ``keys`` entries (default ``state.model``) of a sharded (DCP) checkpoint, nested, read in memory.

    Only those are read, not the optimizer state; ``.metadata`` goes through the restricted unpickler
    and any non-tensor item through a forced ``weights_only`` load.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # as dcp_to_torch_save does

    class Reader(FileSystemReader):
        def read_metadata(self):  # FileSystemReader's, without its plain pickle.load
            metadata = _read_metadata(os.path.join(folder, ".metadata"))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item, value):  # the parent unpickles with weights_only=False
            with _forced_weights_only():
                super().load_bytes(read_item, value)

    state: dict = {}
    with _refusals_named(folder):
        _load_state_dict(state, storage_reader=Reader(folder), planner=Planner(keys=set(keys)), no_dist=True)
    return state


def read_checkpoint(checkpoint: str, raw: Any = None, ema: bool = True) -> tuple[dict[str, torch.Tensor], Any]:
    """(the ``CLIPModel`` state dict, keys without Composer's ``model.``; the loaded checkpoint dict, whose
    ``state.callbacks`` may hold a bundle). ``raw``: the file already loaded by :func:`safe_load`.

    A checkpoint of a run with ``ema.enabled`` gives its averaged weights (the training weights of
    frozen parameters beside them) unless ``ema`` is False (see :mod:`unimed.train.ema`)."""
    if raw is None and os.path.isdir(checkpoint):
        if not (Path(checkpoint) / ".metadata").is_file():
            raise UserError(f"{checkpoint} is a folder without .metadata: not a sharded checkpoint")
        try:
            raw = _read_sharded(checkpoint, ("state.model", "state.callbacks"))
        except (KeyError, ValueError):  # a checkpoint saved without callback state
            raw = _read_sharded(checkpoint)
    elif raw is None and os.path.isfile(checkpoint):
        raw = safe_load(checkpoint)
    elif raw is None:
        raise UserError(f"checkpoint {checkpoint!r} does not exist")
    state = raw
    if isinstance(state, dict) and "state" in state and isinstance(state["state"], dict):
        state = state["state"].get("model", state["state"])
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k.removeprefix("model.")] = v
    if not out:
        raise UserError(f"{checkpoint}: no model weights found")
    if ema:
        from unimed.train.ema import ema_weights

        averaged = ema_weights(raw)
        unknown = sorted(set(averaged or ()) - set(out))
        if unknown:
            raise UserError(
                f"{checkpoint}: its weight average names {len(unknown)} parameters the model lacks "
                f"(e.g. {unknown[0]}): a damaged checkpoint; --no-ema reads the training weights"
            )
        for k, v in (averaged or {}).items():
            out[k] = v.to(out[k].dtype)
    return out, raw


def read_model_state(checkpoint: str, ema: bool = True) -> dict[str, torch.Tensor]:
    """The ``CLIPModel`` state dict (keys without the Composer ``model.`` prefix) of any checkpoint kind."""
    return read_checkpoint(checkpoint, ema=ema)[0]


def tokenizer_for(cfg: TrainConfig) -> CaptionTokenizer:
    """The caption tokenizer a config trains with: ``data.tokenizer``, else the text tower's folder.

    With both set, the tokenizer must be the pretrained text tower's own (:func:`check_tokenizer_matches`).
    """
    from unimed.streaming.tokenizer import CaptionTokenizer

    path = cfg.data.tokenizer or cfg.model.text.pretrained
    if not path:
        raise UserError("no tokenizer: set data.tokenizer (a folder from `unimed tokenizer`) or model.text.pretrained")
    tokenizer = CaptionTokenizer(path, cfg.model.text.context_length)
    if cfg.data.tokenizer and cfg.model.text.pretrained:
        check_tokenizer_matches(tokenizer, cfg.model.text.pretrained)
    return tokenizer


def check_tokenizer_matches(tokenizer, text_folder: str) -> None:
    """Refuse a tokenizer whose vocabulary is not the pretrained text tower's: ids would index the wrong rows."""
    import json

    folder = Path(text_folder)
    config = folder / "config.json"
    rows = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    if rows is not None and int(rows) < tokenizer.vocab_size:
        raise UserError(
            f"{tokenizer.path}: {tokenizer.vocab_size} tokens, but the text tower {text_folder} embeds "
            f"{rows}: use the text tower's own tokenizer (data.tokenizer={text_folder} or unset)"
        )
    if not any((folder / n).is_file() for n in ("vocab.txt", "tokenizer.json")):
        return
    from unimed.streaming.tokenizer import load_tokenizer

    theirs, ours = load_tokenizer(str(folder)).get_vocab(), tokenizer.tokenizer.get_vocab()
    differ = sum(theirs.get(tok) != i for tok, i in ours.items())
    if differ:
        raise UserError(
            f"{tokenizer.path}: its vocabulary differs from the text tower's {text_folder} for "
            f"{differ} of {len(ours)} tokens: the pretrained embeddings would be read with the wrong ids; "
            f"use the text tower's own tokenizer (data.tokenizer={text_folder} or unset)"
        )


def load_trained(checkpoint: str | None, config: str | None = None, cfg=None, ema: bool = True):
    """(CLIPModel in eval mode, TrainConfig or None, CaptionTokenizer); ``checkpoint`` None keeps the random
    init of ``cfg``. A self-contained checkpoint needs no config (see :mod:`unimed.train.loading`);
    ``ema`` False reads the training weights of a run that also kept their moving average."""
    from unimed.train.weights import build_model

    if checkpoint:
        from unimed.train.loading import load_any

        if cfg is not None:
            import tempfile

            from unimed.train.config import save_config

            with tempfile.TemporaryDirectory() as tmp:
                save_config(cfg, os.path.join(tmp, "config.yaml"))
                loaded = load_any(checkpoint, os.path.join(tmp, "config.yaml"), ema=ema)
        else:
            loaded = load_any(checkpoint, config, ema=ema)
        return loaded.model, loaded.config, loaded.tokenizer
    tokenizer = tokenizer_for(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, tokenizer.vocab_size, tokenizer.pad_id)
    model.set_image_normalization(cfg.data.mean, cfg.data.std)
    return model.eval(), cfg, tokenizer
