"""Checkpoints load without running code: a crafted pickle is refused by every loading path, real ones load."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from unimed.errors import UserError
from unimed.train.checkpoint import composer_load_guard, load_trained, read_model_state, safe_load


class _Payload:
    """Unpickling this runs code: it writes ``marker`` (what a crafted checkpoint would do, less politely)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def run(tiny_config, tmp_path_factory) -> Path:
    """A real Composer run: 2 batches, a checkpoint (with its config.yaml) and an exported state dict."""
    from unimed.train.trainer import train

    folder = tmp_path_factory.mktemp("run")
    train(
        tiny_config(
            max_duration="2ba",
            save_folder=str(folder / "ckpt"),
            save_interval="2ba",
            export_path=str(folder / "model.pt"),
        )
    )
    return folder


@pytest.fixture
def crafted(run, tmp_path) -> tuple[Path, Path]:
    """(a real checkpoint with a code-running object among its callback states, the marker it would write)."""
    marker = tmp_path / "ran"
    state = torch.load(run / "ckpt" / "ep0-ba2-rank0.pt", weights_only=False)  # ours: trusted
    state["state"]["callbacks"]["Planted"] = {"x": _Payload(marker)}
    folder = tmp_path / "crafted"
    folder.mkdir()
    shutil.copy(run / "ckpt" / "config.yaml", folder / "config.yaml")
    torch.save(state, folder / "ep0-ba2-rank0.pt")
    return folder / "ep0-ba2-rank0.pt", marker


def _refused(call, path, marker) -> None:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert message.startswith(f"{path}: not loaded") and "\n" not in message, message
    assert "allow-list" in message and "exec" in message  # the global it names
    assert not marker.exists()


def test_the_payload_is_live(crafted):
    path, marker = crafted
    torch.load(path, weights_only=False)  # what Composer's resume and the old loader did
    assert marker.read_text() == "ran"


def test_a_real_checkpoint_and_an_export_load(run):
    ckpt = run / "ckpt" / "ep0-ba2-rank0.pt"
    trusted = torch.load(ckpt, weights_only=False)["state"]["model"]
    state = read_model_state(str(ckpt))
    assert state.keys() == {k.removeprefix("model.") for k in trusted}
    assert all(torch.equal(state[k.removeprefix("model.")], v) for k, v in trusted.items())
    full = safe_load(ckpt)  # the whole Composer state: optimizer, timestamps, RNG (numpy), metadata
    assert full["state"]["timestamp"]["Timestamp"]["batch"] == 2 and "numpy" in full["rng"][0]
    exported = read_model_state(str(run / "model.pt"))
    assert all(torch.equal(exported[k], v) for k, v in state.items())
    model, _, _ = load_trained(str(ckpt))
    assert torch.equal(model.logit_scale.detach(), state["logit_scale"])


def test_a_crafted_checkpoint_is_refused_by_each_loader(crafted, tiny_config):
    from unimed.train.weights import build_model, load_vision_weights

    path, marker = crafted
    _refused(lambda: safe_load(path), path, marker)
    _refused(lambda: read_model_state(str(path)), path, marker)
    _refused(lambda: load_trained(str(path)), path, marker)
    cfg = tiny_config()
    model = build_model(cfg.model, 400)
    _refused(lambda: load_vision_weights(model.visual, str(path)), path, marker)  # model.vision.pretrained
    cfg = tiny_config(**{"model.vision.pretrained": str(path)})
    _refused(lambda: build_model(cfg.model, 400), path, marker)


def test_composer_resume_is_refused_under_the_guard(crafted, tiny_config, run, tmp_path):
    """Composer loads ``load_path`` and autoresume checkpoints with weights_only=False itself."""
    from unimed.train.trainer import build_trainer

    path, marker = crafted
    cfg = tiny_config(max_duration="4ba", load_path=str(path))
    with pytest.raises(UserError):
        with composer_load_guard(cfg.load_path):
            build_trainer(cfg)
    _refused(lambda: _guarded(cfg), path, marker)
    # Autoresume: the latest checkpoint of save_folder is the crafted one.
    folder = tmp_path / "resume"
    folder.mkdir()
    shutil.copy(path, folder / "ep0-ba2-rank0.pt")
    os.symlink("ep0-ba2-rank0.pt", folder / "latest-rank0.pt")
    cfg = tiny_config(max_duration="4ba", save_folder=str(folder))
    _refused(lambda: _guarded(cfg), folder / "ep0-ba2-rank0.pt", marker)
    # A real checkpoint still resumes, and the environment is as it was.
    before = dict(os.environ)
    trainer = _guarded(tiny_config(max_duration="4ba", load_path=str(run / "ckpt" / "ep0-ba2-rank0.pt")))
    assert int(trainer.state.timestamp.batch) == 2
    assert dict(os.environ) == before


def _guarded(cfg):
    from unimed.train.trainer import build_trainer

    with composer_load_guard(cfg.load_path, cfg.save_folder if cfg.autoresume else None):
        return build_trainer(cfg)


def test_build_trainer_refuses_a_crafted_load_path(crafted, tiny_config):
    """``train``/``build_trainer`` wrap the Trainer in :func:`composer_load_guard` themselves."""
    from unimed.train.trainer import build_trainer

    path, marker = crafted
    _refused(lambda: build_trainer(tiny_config(max_duration="4ba", load_path=str(path))), path, marker)


def test_a_tar_checkpoint_is_refused_before_composer_extracts_it(tmp_path):
    with pytest.raises(UserError, match=r"ckpt\.tar: tar checkpoints are not loaded"):
        with composer_load_guard(str(tmp_path / "ckpt.tar")):
            raise AssertionError("not reached")


def _sharded(run, folder: Path, extra: dict | None = None) -> Path:
    """A DCP folder like Composer's sharded checkpoints (``state.model.*`` tensors, non-tensor items)."""
    from torch.distributed.checkpoint import FileSystemWriter, save

    state = torch.load(run / "ckpt" / "ep0-ba2-rank0.pt", weights_only=False)
    sd = {
        "state": {"model": {**state["state"]["model"], **(extra or {})}, "timestamp": state["state"]["timestamp"]},
        "rng": state["rng"],
    }
    save(sd, storage_writer=FileSystemWriter(str(folder)), no_dist=True)
    return folder


def test_sharded_checkpoints_load_and_crafted_parts_are_refused(run, tmp_path):
    from composer.utils.checkpoint import FileSystemReaderWithValidation

    marker = tmp_path / "ran"
    good = _sharded(run, tmp_path / "good")
    state = read_model_state(str(good))
    assert all(torch.equal(state[k], v) for k, v in read_model_state(str(run / "model.pt")).items())
    with composer_load_guard(str(good)):  # Composer's own reader accepts a real .metadata
        assert FileSystemReaderWithValidation(str(good)).read_metadata().state_dict_metadata

    # A .metadata that runs code: refused by ours, and checked by the guard before Composer's pickle.load.
    bad = tmp_path / "bad-metadata"
    shutil.copytree(good, bad)
    (bad / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    _refused(lambda: read_model_state(str(bad)), bad / ".metadata", marker)

    def composer_reads_metadata():
        with composer_load_guard(str(bad)):
            FileSystemReaderWithValidation(str(bad)).read_metadata()

    _refused(composer_reads_metadata, bad / ".metadata", marker)

    # A non-tensor item that runs code (DCP unpickles such items with weights_only=False).
    item = _sharded(run, tmp_path / "bad-item", {"model.planted": _Payload(marker)})
    _refused(lambda: read_model_state(str(item)), item, marker)

    def composer_reads_items():
        from composer.utils.checkpoint import dist_cp_load

        with composer_load_guard(str(item)):
            dist_cp_load({"state": {"model": {"model.planted": None}}}, FileSystemReaderWithValidation(str(item)))

    _refused(composer_reads_items, item, marker)
