"""Mix files: parsing, errors, remotes mapped to a cache, and the measured modality shares."""

from __future__ import annotations

import collections

import pytest
import yaml

from unimed.schema import MODALITIES
from unimed.streaming.dataset import UnimedDataset
from unimed.streaming.mixing import load_mix, parse_mix, to_streams


def test_parse_and_map(shards, tmp_path):
    mix = tmp_path / "mix.yaml"
    doc = {
        "cache_dir": str(tmp_path / "cache"),
        "streams": [
            {"path": shards["xray"], "proportion": 0.7},
            {"path": "s3://bucket/unimed/ct", "proportion": 0.3},
        ],
    }
    mix.write_text(yaml.safe_dump(doc))
    entries, cache = load_mix(str(mix))
    streams = to_streams(entries, cache)
    assert streams[0].local == shards["xray"] and streams[0].remote is None
    assert streams[1].remote == "s3://bucket/unimed/ct" and streams[1].local.startswith(str(tmp_path / "cache"))
    assert [s.proportion for s in streams] == [0.7, 0.3]


def test_relative_paths_and_plain_list(shards, tmp_path):
    entries, cache = parse_mix(
        [{"path": "xray", "repeat": 2}, {"path": "ct", "choose": 10}], root=str(shards["xray"])[:-5]
    )
    assert cache is None and entries[0].path == shards["xray"] and entries[1].choose == 10


@pytest.mark.parametrize(
    "doc, match",
    [
        ([], "non-empty list"),
        ([{"path": "a", "proportion": 0.5, "repeat": 2}], "more than one"),
        ([{"path": "a", "proportion": 0.5}, {"path": "b"}], "every stream needs one"),
        ([{"path": "a", "weight": 1}], "unknown keys"),
        ({"streams": [{"path": "a"}], "extra": 1}, "unknown keys"),
    ],
)
def test_bad_mixes(doc, match):
    with pytest.raises(ValueError, match=match):
        parse_mix(doc)


def test_missing_folder_and_remote_without_cache(tmp_path):
    with pytest.raises(ValueError, match="no index.json"):
        to_streams(parse_mix([str(tmp_path)])[0])
    with pytest.raises(ValueError, match="local cache"):
        to_streams(parse_mix(["gs://b/x"])[0])


def test_measured_shares_match_proportions(shards):
    """Over one epoch the share of each modality is within 2 points of its proportion."""
    want = {"xray": 0.4, "ct": 0.3, "pathology": 0.2, "fundus": 0.1}
    entries, _ = parse_mix([{"path": shards[m], "proportion": p} for m, p in want.items()])
    dataset = UnimedDataset(streams=to_streams(entries), epoch_size=1000, shuffle=True, shuffle_seed=3, batch_size=10)
    counts = collections.Counter(MODALITIES[s["modality"]] for s in dataset)
    total = sum(counts.values())
    assert total == 1000
    for modality, share in want.items():
        assert abs(counts[modality] / total - share) <= 0.02, (modality, counts)


def test_example_mix_parses():
    import os

    import unimed.streaming

    path = os.path.join(os.path.dirname(unimed.streaming.__file__), "mixes", "example.yaml")
    entries, cache = load_mix(path)
    assert cache and len(entries) == 6 and abs(sum(e.proportion for e in entries) - 1.0) < 1e-9
