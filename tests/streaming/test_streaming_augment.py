"""The augmentation registry: the built-ins draw today's parameters, a new augmentation is one
registration (the CPU loader applies it, deterministically, and config validation accepts it), and an
unknown name is one line listing the registered ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from unimed.cli import main as unimed_main
from unimed.errors import UserError
from unimed.streaming import augment
from unimed.streaming.augment import Augmentation, AugmentContext, get_augmentation, register_augmentation
from unimed.streaming.dataset import choose_crop
from unimed.streaming.loader import LoaderConfig, build_dataloader
from unimed.train.config import config_path, load_config

# choose_crop(17, 0, i, (0.9, 1.0), (0.75, 4 / 3), True, (640, 480)) before the registry existed
EXPECTED = [
    ([0.0028050271794199944, 0.003967319615185261, 0.9838089346885681, 0.9862024188041687], 1),
    ([0.0, 0.0, 1.0, 1.0], 1),
    ([0.0010257996618747711, 0.001366885844618082, 0.995353639125824, 0.9984252452850342], 0),
    ([0.006478149443864822, 0.020727340131998062, 0.9565643072128296, 0.9664759635925293], 0),
    ([0.0, 0.0, 1.0, 1.0], 1),
]


def _ctx(sample_id: int, modality: str = "pathology") -> AugmentContext:
    return AugmentContext(17, 0, sample_id, (640, 480), modality, (0.9, 1.0), (0.75, 4 / 3), frozenset({"pathology"}))


def test_the_default_params_are_the_crop_window_and_mirror_bit_of_before():
    crop, flip = get_augmentation("crop"), get_augmentation("flip")
    for i, (window, bit) in enumerate(EXPECTED):
        expected = np.array(window, np.float32)
        assert np.array_equal(crop.draw(_ctx(i)), expected) and int(flip.draw(_ctx(i))) == bit
        got_window, got_bit = choose_crop(17, 0, i, (0.9, 1.0), (0.75, 4 / 3), True, (640, 480))
        assert np.array_equal(got_window, expected) and got_bit == bit
        assert int(flip.draw(_ctx(i, "xray"))) == 0  # not a flip modality: never mirrored
        assert np.array_equal(crop.identity(_ctx(i)), [0, 0, 1, 1]) and int(flip.identity(_ctx(i))) == 0
    assert augment.augmentations()[:2] == ("crop", "flip")


def test_an_unknown_augmentation_is_one_line(capsys):
    with pytest.raises(UserError) as err:
        get_augmentation("blur")
    assert str(err.value) == "augmentation: unknown 'blur'; registered: crop, flip"
    rc = unimed_main(["train", "demo-cpu", "data.augmentations=[crop,blur]", "--print-config"])
    out = capsys.readouterr().err.strip()
    assert rc == 2 and len(out.splitlines()) == 1, out
    assert "data.augmentations: unknown 'blur'; registered: crop, flip" in out


def _draw_invert(ctx: AugmentContext) -> np.ndarray:
    return np.array(int(ctx.uniform(100) < 0.5), dtype=np.uint8)


def _no_invert(ctx: AugmentContext) -> np.ndarray:
    return np.array(0, dtype=np.uint8)


def _cpu_invert(image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    return 255 - image if int(params) else image


@pytest.fixture
def invert(monkeypatch):
    """A toy post-decode augmentation, registered for one test."""
    monkeypatch.setattr(augment, "_REGISTRY", dict(augment._REGISTRY))
    aug = register_augmentation(Augmentation("invert", _draw_invert, _no_invert, cpu=_cpu_invert, dali=None))
    with pytest.warns(UserWarning, match="registered twice"):
        register_augmentation(aug)
    return aug


def _run(loader, limit: int | None = None) -> dict[str, tuple[torch.Tensor, int, bool]]:
    """uid -> (image, invert bit or -1, valid) of every sample the loader delivers."""
    out = {}
    for b, batch in enumerate(loader):
        if limit is not None and b == limit:
            break
        for i, uid in enumerate(batch["uid"]):
            bit = int(batch["invert"][i]) if "invert" in batch else -1
            out[uid] = (batch["image"][i].clone(), bit, bool(batch["valid"][i]))
    return out


def test_a_registered_augmentation_is_applied_by_the_cpu_loader_deterministically(shards, tmp_path, invert):
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump([{"path": shards["xray"]}, {"path": shards["pathology"]}]))
    base = dict(mix=str(mix), batch_size=8, num_workers=0, image_size=32, device="cpu", seed=11)
    plain = _run(build_dataloader(LoaderConfig(**base)))
    cfg = LoaderConfig(**base, augmentations=["crop", "flip", "invert"])
    first = _run(build_dataloader(cfg))
    assert first.keys() == plain.keys()
    bits = [bit for _, bit, _ in first.values()]
    assert 0 < sum(bits) < len(bits)
    for uid, (image, bit, valid) in first.items():
        if valid:  # applied after decode and resize, on the drawn bit only
            assert torch.equal(image, 255 - plain[uid][0] if bit else plain[uid][0]), uid

    second = _run(build_dataloader(cfg))  # same seed and epoch: the same bits and pixels
    assert all(second[u][1] == first[u][1] and torch.equal(second[u][0], first[u][0]) for u in first)

    k = 3
    loader = build_dataloader(cfg)
    head = _run(loader, limit=k)
    state = loader.dataset.state_dict(num_samples=k * cfg.batch_size, from_beginning=True)
    resumed_loader = build_dataloader(cfg)
    resumed_loader.dataset.load_state_dict(state)
    tail = _run(resumed_loader)
    assert tail and not head.keys() & tail.keys() and len(head) + len(tail) == len(first)
    assert all(tail[u][1] == first[u][1] and torch.equal(tail[u][0], first[u][0]) for u in tail)


def test_config_validation_accepts_a_registered_augmentation(invert):
    path = config_path("demo-cpu")
    assert load_config(path).data.augmentations == ["crop", "flip"]
    cfg = load_config(path, ["data.augmentations=[crop,flip,invert]"])
    assert cfg.data.augmentations == ["crop", "flip", "invert"]
    assert load_config(path, ["data.augmentations=invert"]).data.augmentations == ["invert"]


def test_a_path_that_cannot_apply_an_augmentation_refuses_it(invert):
    """The toy has no DALI op: the DALI graph refuses it in one line instead of training without it."""
    from unimed.streaming.config import AugmentConfig
    from unimed.streaming.dali import build_pipeline

    aug = AugmentConfig(image_size=32, augmentations=("crop", "flip", "invert"))
    with pytest.raises(UserError, match="'invert' has no dali op: the DALI \\(GPU\\) path cannot apply it"):
        build_pipeline(aug, batch_size=1, device="cpu")
    assert build_pipeline(AugmentConfig(image_size=32, train=False, augmentations=("crop", "invert")), 1, "cpu")
