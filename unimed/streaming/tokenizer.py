"""Caption tokenizers: load the text tower's own, or train a WordPiece one on the shards' captions.

Everything runs offline: a tokenizer is a local folder loadable by ``transformers.AutoTokenizer``
(e.g. a BiomedBERT folder the user has), or one :func:`train_tokenizer` writes from the captions
of the shards themselves. :class:`CaptionTokenizer` wraps either into the one call the dataset needs:
caption -> fixed-length token ids, cheap enough to run per sample in a loader worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

from unimed.streaming.shards import iter_samples

__all__ = ["CaptionTokenizer", "iter_captions", "load_tokenizer", "train_tokenizer", "trim_padding"]

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Captions remembered per tokenizer (per worker): caption banks repeat a few hundred phrasings, so most
# calls are a lookup and a 2 KB copy (1 us) instead of an encode (33 us); 1024 x 256 ids = 2 MB at most.
_CACHE_CAPTIONS = 1024


def iter_captions(shard_dir: str) -> Iterator[str]:
    """Every caption of every sample in the MDS folder(s) under ``shard_dir``."""
    for sample in iter_samples(shard_dir):
        yield from sample["captions"]


def train_tokenizer(
    shard_dir: str, out_dir: str, vocab_size: int = 8192, context_length: int = 256, lowercase: bool = True
) -> str:
    """Train a BERT-style WordPiece tokenizer on the shards' captions and save it to ``out_dir``.

    The folder is a ``transformers`` tokenizer (``AutoTokenizer.from_pretrained(out_dir)``) with
    ``[CLS]``/``[SEP]``/``[PAD]``, so a text tower trained from scratch has a vocabulary fitted to
    the captions without any download. Returns ``out_dir``.
    """
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    if vocab_size < len(_SPECIAL) + 1:
        raise ValueError(f"vocab_size must exceed {len(_SPECIAL)}, got {vocab_size}")
    wordpiece = BertWordPieceTokenizer(lowercase=lowercase)
    wordpiece.train_from_iterator(
        iter_captions(shard_dir), vocab_size=vocab_size, min_frequency=1, special_tokens=_SPECIAL
    )
    os.makedirs(out_dir, exist_ok=True)
    wordpiece.save_model(out_dir)  # vocab.txt
    fast = BertTokenizerFast(
        vocab_file=os.path.join(out_dir, "vocab.txt"),
        do_lower_case=lowercase,
        model_max_length=context_length,
    )
    fast.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "unimed_tokenizer.json"), "w") as fh:
        json.dump({"trained_on": os.path.abspath(shard_dir), "vocab_size": len(fast)}, fh, indent=2)
    return out_dir


def load_tokenizer(path: str):  # -> transformers.PreTrainedTokenizerBase
    """Load a ``transformers`` tokenizer from a local folder, never from the network."""
    from transformers import AutoTokenizer

    from unimed.errors import UserError

    if not os.path.isdir(path):
        raise UserError(
            f"Tokenizer folder {path!r} does not exist: give the text tower's tokenizer folder, "
            "or make one with `unimed tokenizer SHARD_DIR`."
        )
    files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(path, f)) for f in files):
        raise UserError(
            f"Tokenizer folder {path!r} holds no readable tokenizer (none of {', '.join(files)}): "
            "give the text tower's tokenizer folder, or make one with `unimed tokenizer SHARD_DIR`."
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:  # a folder without tokenizer files, or damaged ones
        raise UserError(
            f"Tokenizer folder {path!r} holds no readable tokenizer ({str(err).splitlines()[0][:160]})"
        ) from None


def trim_padding(tokens, pad_id: int, multiple: int = 8):
    """Drop the trailing columns that are padding in every row of ``tokens`` [B, L] (a torch tensor or a
    numpy array), keeping the longest caption rounded up to a multiple of ``multiple`` and never more
    than ``L``, the context length.

    Captions are right-padded and the text tower masks padding out of attention, so the embeddings do
    not change; what changes is the work: bank captions and report sentences mostly fit in 40 tokens,
    against a context of 256. The multiple keeps shapes few (for ``torch.compile``) and aligned.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    width = int(tokens.shape[-1])
    used = (tokens != pad_id).any(0).nonzero()
    used = used[0] if isinstance(used, tuple) else used  # numpy gives a tuple of index arrays
    longest = int(used.max()) + 1 if len(used) else 1
    keep = min(width, -(-longest // multiple) * multiple)
    if keep == width:
        return tokens
    out = tokens[:, :keep]
    return out.contiguous() if hasattr(out, "contiguous") else out.copy()


class CaptionTokenizer:
    """Caption -> ``int64`` ids of exactly ``context_length`` (``[CLS] ... [SEP]``, padded, truncated).

    A folder with a ``tokenizer.json`` (every fast tokenizer ``save_pretrained`` writes one) is run by
    the ``tokenizers`` library alone: no ``transformers`` import in the loader (270 MB and a second of
    start-up, measured) and several times faster per call than ``tokenizer(...)``. Other folders go
    through ``transformers``. ``tokenizer`` (the ``transformers`` object, for export and vocabulary
    checks) loads on first use. Picklable, so loader workers get a copy.
    """

    def __init__(self, path: str, context_length: int = 256) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        self.path = path
        self.context_length = context_length
        self._hf = None
        self._backend = None
        self._vocab_size: int | None = None
        self._cache: dict[str, np.ndarray] = {}
        fast = os.path.join(path, "tokenizer.json")
        if os.path.isfile(fast):
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(fast)
            pad_token = _pad_token(path) or "[PAD]"
            pad_id = backend.token_to_id(pad_token)
            self.pad_id = int(pad_id or 0)
            self._vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        else:
            backend = None
            self.pad_id = int(self.tokenizer.pad_token_id or 0)
            pad_token = self.tokenizer.pad_token or "[PAD]"
            if getattr(self.tokenizer, "is_fast", False):
                from tokenizers import Tokenizer

                backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        if backend is not None:
            backend.enable_truncation(max_length=context_length)
            backend.enable_padding(length=context_length, pad_id=self.pad_id, pad_token=pad_token)
            self._backend = backend

    @property
    def tokenizer(self):  # -> transformers.PreTrainedTokenizerBase
        """The ``transformers`` tokenizer of the folder (loaded on first use)."""
        if self._hf is None:
            self._hf = load_tokenizer(self.path)
        return self._hf

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}  # each copy fills its own
        if state.get("_backend") is not None:
            state["_hf"] = None  # workers need only the backend
        return state

    @property
    def vocab_size(self) -> int:
        """Number of ids the text tower's embedding must hold."""
        return self._vocab_size if self._vocab_size is not None else len(self.tokenizer)

    def __call__(self, caption: str) -> np.ndarray:
        ids = self._cache.get(caption)
        if ids is None:
            ids = self._encode(caption)
            if len(self._cache) < _CACHE_CAPTIONS:
                self._cache[caption] = ids
        return ids.copy()  # a copy: callers may write to theirs

    def _encode(self, caption: str) -> np.ndarray:
        if self._backend is not None:
            ids = self._backend.encode(caption).ids
        else:
            ids = self.tokenizer(caption, max_length=self.context_length, padding="max_length", truncation=True)[
                "input_ids"
            ]
        return np.asarray(ids, dtype=np.int64)


def _pad_token(path: str) -> str | None:
    """The pad token a ``transformers`` folder declares (special_tokens_map.json, tokenizer_config.json)."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            with open(os.path.join(path, name)) as fh:
                token = json.load(fh).get("pad_token")
        except (OSError, ValueError):
            continue
        if isinstance(token, dict):
            token = token.get("content")
        if token:
            return str(token)
    return None
