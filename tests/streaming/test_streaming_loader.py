"""The DALI loader: DataSpec, batch contents, bad images, and exact resumption through the proxy."""

from __future__ import annotations

import gc
import logging

import pytest
import torch
import yaml
from composer.core import DataSpec
from streaming.base.util import clean_stale_shared_memory

from unimed.schema import MODALITIES
from unimed.streaming.loader import LoaderConfig, build_loader
from unimed.streaming.synthetic import COLOR_MODALITIES


@pytest.fixture
def mix(shards, tmp_path) -> str:
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump([{"path": shards["xray"]}, {"path": shards["pathology"]}]))
    return str(path)


def _config(mix: str, tokenizer_dir: str, **kw) -> LoaderConfig:
    base = dict(
        mix=mix,
        tokenizer=tokenizer_dir,
        context_length=32,
        batch_size=8,
        num_workers=2,
        image_size=64,
        mean=(0.5, 0.5, 0.5),  # grey images then keep 3 equal channels: a check that images match uids
        std=(0.5, 0.5, 0.5),
        device="cpu",
        seed=11,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _check_batch(batch: dict, cfg: LoaderConfig) -> None:
    b = len(batch["uid"])
    assert (
        batch["image"].shape == (b, 3, cfg.image_size, cfg.image_size)
        and batch["image"].dtype == torch.float32
    )
    width = batch["tokens"].shape[1]  # padded to the batch's longest caption (see test_streaming_padding.py)
    assert batch["tokens"].shape == (b, width) and batch["modality"].shape == (b,)
    assert width == cfg.context_length or (width % cfg.pad_multiple == 0 and width < cfg.context_length)
    assert batch["image"].abs().max() <= 1.0 + 1e-5  # normalized with mean = std = 0.5
    grey = (batch["image"][:, 0] == batch["image"][:, 1]).flatten(1).all(1)
    for i, uid in enumerate(batch["uid"]):
        modality = MODALITIES[int(batch["modality"][i])]
        assert modality in uid
        if batch["valid"][i]:
            assert bool(grey[i]) == (modality not in COLOR_MODALITIES), uid  # the image is this uid's


def _free() -> None:
    gc.collect()
    clean_stale_shared_memory()


@pytest.mark.parametrize("workers", [0, 2])
def test_dataspec_and_batches(mix, tokenizer_dir, caplog, workers):
    cfg = _config(mix, tokenizer_dir, num_workers=workers)
    spec = build_loader(cfg)
    assert isinstance(spec, DataSpec) and isinstance(spec.dataloader, torch.utils.data.DataLoader)
    assert spec.num_samples == 180
    seen, bad = 0, 0
    with caplog.at_level(logging.WARNING, logger="unimed.streaming.loader"):
        for batch in spec.dataloader:
            _check_batch(batch, cfg)
            assert spec.get_num_samples_in_batch(batch) == len(batch["uid"])
            seen += len(batch["uid"])
            bad += int((~batch["valid"]).sum())
    assert seen == 176 and spec.dataloader.bad_samples == bad  # drop_last drops each worker's remainder
    messages = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(messages) == bad == len(set(messages))  # each broken uid logged once, with its reason
    assert all("uid=syn-" in m and "(" in m for m in messages)


def _uids(loader, limit: int | None = None) -> list[list[str]]:
    out = []
    for batch in loader:
        out.append(list(batch["uid"]))
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.slow
def test_exact_resumption(mix, tokenizer_dir):
    """Stop after k batches, save, rebuild from the state: the remaining uids come in the same order."""
    cfg = _config(mix, tokenizer_dir)
    spec = build_loader(cfg)
    full = _uids(spec.dataloader)
    del spec
    _free()

    k = 5
    spec = build_loader(cfg)
    head = _uids(spec.dataloader, limit=k)
    state = spec.dataloader.dataset.state_dict(num_samples=k * cfg.batch_size, from_beginning=True)
    del spec
    _free()

    spec = build_loader(cfg)
    spec.dataloader.dataset.load_state_dict(state)
    tail = _uids(spec.dataloader)
    assert head == full[:k]
    assert head + tail == full


def test_reiterating_after_a_break_keeps_images_with_their_uids(mix, tokenizer_dir):
    """Batches the DALI server made for an abandoned iterator never reach the next one."""
    cfg = _config(mix, tokenizer_dir)
    spec = build_loader(cfg)
    for i, _batch in enumerate(spec.dataloader):
        if i == 2:
            break
    for batch in spec.dataloader:
        _check_batch(batch, cfg)


def test_server_threads_stop_before_the_interpreter_exits(mix, tokenizer_dir):
    """An unfinished epoch leaves the DALI server thread running; stop_servers (run at exit) ends it
    at once, not after its 5-second queue read, so no thread is inside DALI when the interpreter
    finalizes (which aborted the process after the job had finished)."""
    from unimed.streaming.loader import stop_servers

    spec = build_loader(_config(mix, tokenizer_dir, num_workers=0))
    it = iter(spec.dataloader)
    next(it)
    server = spec.dataloader.dali_server
    thread = server._thread
    assert thread is not None and thread.is_alive()
    stop_servers(timeout=2.0)
    assert not thread.is_alive() and server._thread is None
    del it, spec
    _free()
