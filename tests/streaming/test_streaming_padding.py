"""Dynamic padding: each batch's tokens are cut to its longest caption, rounded up to a multiple of 8."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import yaml
from streaming.base.util import clean_stale_shared_memory

from unimed.streaming.loader import LoaderConfig, build_loader
from unimed.streaming.tokenizer import CaptionTokenizer, trim_padding


def test_trim_padding_rounds_up_and_caps():
    tokens = torch.zeros(3, 32, dtype=torch.int64)
    tokens[0, :5] = 7
    tokens[1, :11] = 7  # longest: 11 -> 16
    out = trim_padding(tokens, pad_id=0)
    assert out.shape == (3, 16) and out.is_contiguous() and torch.equal(out, tokens[:, :16])
    assert trim_padding(tokens, 0, multiple=1).shape == (3, 11)
    tokens[2, :] = 7  # one caption fills the context: nothing to cut
    assert trim_padding(tokens, 0) is tokens
    odd = torch.full((2, 30), 7)  # a context that is no multiple of 8 stays the cap
    odd[:, 27:] = 0
    assert trim_padding(odd, 0).shape == (2, 30)
    arr = np.zeros((2, 24), np.int64)
    arr[:, :3] = 9
    assert trim_padding(arr, 0).shape == (2, 8)  # numpy too
    with pytest.raises(ValueError, match="multiple"):
        trim_padding(tokens, 0, multiple=0)


@pytest.fixture
def mix(shards, tmp_path) -> str:
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump([{"path": shards["xray"]}, {"path": shards["ct"]}]))
    return str(path)


def _batches(mix: str, tokenizer_dir: str, dynamic: bool) -> list[dict]:
    cfg = LoaderConfig(
        mix=mix,
        tokenizer=tokenizer_dir,
        context_length=64,
        batch_size=16,
        num_workers=0,
        image_size=32,
        device="cpu",
        seed=3,
        dynamic_padding=dynamic,
    )
    spec = build_loader(cfg)
    out = [{"tokens": b["tokens"], "caption": list(b["caption"])} for b in spec.dataloader]
    del spec
    gc.collect()
    clean_stale_shared_memory()
    return out


def test_loader_pads_each_batch_to_its_longest_caption(mix, tokenizer_dir):
    fixed = _batches(mix, tokenizer_dir, dynamic=False)
    dynamic = _batches(mix, tokenizer_dir, dynamic=True)
    tok = CaptionTokenizer(tokenizer_dir, 64)
    assert len(fixed) == len(dynamic) > 3
    widths = []
    for f, d in zip(fixed, dynamic):
        assert f["caption"] == d["caption"] and f["tokens"].shape[1] == 64
        longest = int((f["tokens"] != tok.pad_id).sum(1).max())
        width = d["tokens"].shape[1]
        assert width == min(64, -(-longest // 8) * 8) and width % 8 == 0
        assert torch.equal(d["tokens"], f["tokens"][:, :width])  # the same ids, only the all-padding tail cut
        assert bool((f["tokens"][:, width:] == tok.pad_id).all())
        widths.append(width)
    assert max(widths) < 64  # these captions are short: every batch got cheaper
