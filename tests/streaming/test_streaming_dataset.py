"""UnimedDataset: encoded bytes out, a seeded caption per sample and epoch, broken images flagged."""

from __future__ import annotations

import collections
import gc

import numpy as np
from streaming.base.util import clean_stale_shared_memory

from unimed.schema import MODALITIES
from unimed.streaming.dataset import UnimedDataset, choose_caption
from unimed.streaming.imagecheck import placeholder_image, sniff_codec
from unimed.streaming.mixing import parse_mix, to_streams
from unimed.streaming.tokenizer import CaptionTokenizer

BROKEN_PER_MODALITY = 2  # as written by conftest.shards


def _dataset(shards, **kwargs) -> UnimedDataset:
    streams = to_streams(parse_mix([shards[m] for m in ("xray", "pathology")])[0])
    return UnimedDataset(streams=streams, shuffle=True, shuffle_seed=5, batch_size=8, **kwargs)


def test_samples(shards, tokenizer_dir):
    dataset = _dataset(shards, tokenizer=CaptionTokenizer(tokenizer_dir, 32), flip_modalities=["pathology"])
    samples = list(dataset)
    assert len(samples) == 180 and len({s["uid"] for s in samples}) == 180
    bad = [s for s in samples if not s["valid"]]
    assert len(bad) == 2 * BROKEN_PER_MODALITY and dataset.bad_samples == len(bad)
    assert all(bytes(s["image"]) == placeholder_image() and s["error"] for s in bad)
    for s in samples:
        assert isinstance(s["image"], np.ndarray) and s["image"].dtype == np.uint8
        assert sniff_codec(bytes(s["image"][:8])) in ("jpeg", "png")  # still encoded: no decoding here
        assert s["tokens"].shape == (32,) and s["tokens"][0] == 2  # [CLS]
        assert s["flip"] == 0  # no augmentation: never mirrored, flip modality or not
        assert np.array_equal(s["crop"], [0, 0, 1, 1])
        assert s["valid"] or s["error"]


def test_mirrored_only_when_augmenting_and_only_where_the_modality_allows(shards):
    samples = list(_dataset(shards, flip_modalities=["pathology"], augment=True))
    flips = collections.Counter((MODALITIES[s["modality"]], int(s["flip"])) for s in samples)
    assert flips[("xray", 1)] == 0 and flips[("pathology", 1)] > 10 and flips[("pathology", 0)] > 10


def test_caption_choice_is_seeded_and_uniform():
    picks = [choose_caption(3, 7, 0, i) for i in range(3000)]
    assert all(abs(c - 1000) < 120 for c in collections.Counter(picks).values())
    assert picks == [choose_caption(3, 7, 0, i) for i in range(3000)]
    assert picks != [choose_caption(3, 7, 1, i) for i in range(3000)]  # a new epoch, new choices


def test_captions_repeat_per_epoch_and_change_across_epochs(shards):
    dataset = _dataset(shards)
    epoch0 = {s["uid"]: s["caption"] for s in dataset}
    epoch1 = {s["uid"]: s["caption"] for s in dataset}
    del dataset
    gc.collect()
    clean_stale_shared_memory()
    again = {s["uid"]: s["caption"] for s in _dataset(shards)}
    assert again == epoch0  # same seed and epoch: same captions
    assert epoch0.keys() == epoch1.keys() and epoch0 != epoch1


def test_crop_and_mirror_are_pure_functions_of_seed_epoch_and_sample():
    from unimed.streaming.dataset import choose_crop

    a = [choose_crop(17, 0, i, (0.9, 1.0), (0.75, 4 / 3), True) for i in range(400)]
    b = [choose_crop(17, 0, i, (0.9, 1.0), (0.75, 4 / 3), True) for i in range(400)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    crops = np.stack([c for c, _ in a])
    assert (
        (crops[:, 2:] <= 1.0).all() and (crops[:, :2] >= 0).all() and (crops[:, :2] + crops[:, 2:] <= 1.0 + 1e-6).all()
    )
    area = crops[:, 2] * crops[:, 3]
    assert area.min() > 0.6 and area.max() <= 1.0
    assert 150 < sum(m for _, m in a) < 250  # mirrored about half the time where allowed
    assert not any(choose_crop(17, 0, i, (0.9, 1.0), (0.75, 4 / 3), False)[1] for i in range(100))
    other_epoch = [choose_crop(17, 1, i, (0.9, 1.0), (0.75, 4 / 3), True)[0] for i in range(20)]
    assert any(not np.array_equal(x, y[0]) for x, y in zip(other_epoch, a))
