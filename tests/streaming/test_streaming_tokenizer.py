"""Tokenizer: trained offline on the shards' captions, loadable by transformers, fixed length."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from unimed.streaming.tokenizer import CaptionTokenizer, iter_captions


def test_trained_tokenizer_is_a_transformers_folder(tokenizer_dir, shards):
    hf = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    assert hf.cls_token == "[CLS]" and hf.pad_token == "[PAD]"
    ids = hf("a xray image showing effusion")["input_ids"]
    assert hf.unk_token_id not in ids  # every caption word is in the fitted vocabulary
    captions = list(iter_captions(shards["ct"]))
    assert len(captions) >= 80 and all(isinstance(c, str) and c for c in captions)


def test_caption_tokenizer_fixed_length(tokenizer_dir):
    tok = CaptionTokenizer(tokenizer_dir, context_length=12)
    short = tok("ct scan")
    long = tok(" ".join(["this ct demonstrates edema in the liver"] * 10))
    assert short.shape == long.shape == (12,) and short.dtype == np.int64
    cls_id, sep_id, pad_id = (tok.tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert short[0] == cls_id and pad_id in short and sep_id in short
    assert long[0] == cls_id and long[-1] == sep_id and pad_id not in long
    hf = tok.tokenizer("ct scan", max_length=12, padding="max_length", truncation=True)["input_ids"]
    assert short.tolist() == hf  # the fast path agrees with transformers' own call


def test_tokenizer_command_trains_on_the_shard_captions(tmp_path):
    """``unimed tokenizer`` (it was ``ingest tokenizer``; ingest never imports unimed.streaming) on a folder
    ``ingest convert`` wrote."""
    from unimed import cli
    from unimed.ingest.convert import ConvertConfig, convert
    from unimed.ingest.synthetic import write_ct_series

    write_ct_series(tmp_path / "in", 12, size=48)
    out = tmp_path / "out"
    key = tmp_path / "uid.key"
    key.write_text("7a" * 32)
    key.chmod(0o600)
    convert(
        ConvertConfig(inputs=[str(tmp_path / "in")], out=str(out), uid_key_file=str(key), progress=False),
        echo=lambda s: None,
    )
    assert cli.main(["tokenizer", str(out), "--vocab-size", "120"]) == 0
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"), local_files_only=True)
    ids = tok("A CT scan of the chest.")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) > 3
