"""The loaders: DataSpec, uint8 batch contents, bad images, exact resumption (worker decode and DALI proxy),
the uid-image identity, and no DALI import on the CPU path."""

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
        device="cpu",
        seed=11,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _check_batch(batch: dict, cfg: LoaderConfig) -> None:
    b = len(batch["uid"])
    assert (
        batch["image"].shape == (b, 3, cfg.image_size, cfg.image_size)
        and batch["image"].dtype == torch.uint8  # normalized by the model, on the device, not here
    )
    width = batch["tokens"].shape[1]  # padded to the batch's longest caption (see test_streaming_padding.py)
    assert batch["tokens"].shape == (b, width) and batch["modality"].shape == (b,)
    assert width == cfg.context_length or (width % cfg.pad_multiple == 0 and width < cfg.context_length)
    assert int(batch["image"].max()) > 100 and float(batch["image"].float().std()) > 5  # pixels, not a blank
    grey = (
        ((batch["image"][:, 0] == batch["image"][:, 1]) & (batch["image"][:, 1] == batch["image"][:, 2]))
        .flatten(1)
        .all(1)
    )
    for i, uid in enumerate(batch["uid"]):
        modality = MODALITIES[int(batch["modality"][i])]
        assert modality in uid
        if batch["valid"][i]:
            assert bool(grey[i]) == (modality not in COLOR_MODALITIES), uid  # the image is this uid's


def _free() -> None:
    gc.collect()
    clean_stale_shared_memory()


@pytest.mark.parametrize("workers,device", [(0, "cpu"), (2, "cpu"), (2, "dali_cpu")])
def test_dataspec_and_batches(mix, tokenizer_dir, caplog, workers, device):
    cfg = _config(mix, tokenizer_dir, num_workers=workers, device=device)
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


def _images_by_uid(loader) -> dict[str, torch.Tensor]:
    return {uid: batch["image"][i].clone() for batch in loader for i, uid in enumerate(batch["uid"])}


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "dali_cpu"])
def test_exact_resumption(mix, tokenizer_dir, device):
    """Stop after k batches, save, rebuild from the state: the remaining uids come in the same order,
    and (augmentation on) every image is pixel for pixel the uninterrupted run's."""
    cfg = _config(mix, tokenizer_dir, device=device)
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
    del spec
    _free()

    if device == "cpu":  # the worker decode is exact: the resumed images equal the uninterrupted ones
        whole = _images_by_uid(build_loader(cfg).dataloader)
        spec = build_loader(cfg)
        spec.dataloader.dataset.load_state_dict(state)
        resumed = _images_by_uid(spec.dataloader)
        assert resumed and all(torch.equal(img, whole[uid]) for uid, img in resumed.items())


@pytest.mark.parametrize("device", ["cpu", "dali_cpu"])
def test_reiterating_after_a_break_keeps_images_with_their_uids(mix, tokenizer_dir, device):
    """Batches made for an abandoned iterator (the DALI server's, the workers') never reach the next one."""
    cfg = _config(mix, tokenizer_dir, device=device)
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

    spec = build_loader(_config(mix, tokenizer_dir, num_workers=0, device="dali_cpu"))
    it = iter(spec.dataloader)
    next(it)
    server = spec.dataloader.dali_server
    thread = server._thread
    assert thread is not None and thread.is_alive()
    stop_servers(timeout=2.0)
    assert not thread.is_alive() and server._thread is None
    del it, spec
    _free()


def test_the_same_sample_gets_the_same_pixels_on_both_paths(mix, tokenizer_dir):
    """Worker decode and the DALI graph crop the dataset's window: the uint8 images agree (eval mode:
    resize the shorter side + centre crop; JPEG IDCT and resize kernels differ by a few levels)."""
    cpu = _images_by_uid(build_loader(_config(mix, tokenizer_dir, device="cpu", train=False, num_workers=0)).dataloader)
    dali = _images_by_uid(
        build_loader(_config(mix, tokenizer_dir, device="dali_cpu", train=False, num_workers=0)).dataloader
    )
    _free()
    assert cpu.keys() == dali.keys()
    diff = torch.stack([(cpu[u].float() - dali[u].float()).abs().mean() for u in cpu])
    assert float(diff.median()) < 3.0 and float(diff.max()) < 8.0, diff.max()


def test_cpu_path_never_imports_dali(mix, tokenizer_dir):
    """A whole epoch on the CPU path, in a fresh process: nvidia.dali and transformers' tokenizer stack
    stay out of the main process, which stays under the 600 MB goal (the DataLoader alone: the DataSpec
    wrapper imports Composer, the trainer's own cost)."""
    import subprocess
    import sys

    code = f"""
import sys
from unimed.streaming.loader import LoaderConfig, build_dataloader
cfg = LoaderConfig(mix={mix!r}, tokenizer={tokenizer_dir!r}, context_length=32, batch_size=8, num_workers=1,
                   image_size=64, device="cpu")
n = sum(len(b["uid"]) for b in build_dataloader(cfg))
dali = sorted(m for m in sys.modules if m.startswith("nvidia.dali"))
# VmHWM: this process's own peak (ru_maxrss would carry the forking pytest process's size over exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(n, len(dali), "transformers.models.auto.tokenization_auto" in sys.modules, hwm // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, dali, auto, rss = out.stdout.split()
    assert int(n) > 0 and dali == "0" and auto == "False", out.stdout
    assert int(rss) < 600, rss
