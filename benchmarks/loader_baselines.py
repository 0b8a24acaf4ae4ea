"""The baselines of ``benchmarks/loader.py``: PIL + torchvision over MDS shards and over tars, and
the decode-only ceiling. Written the way those pipelines are usually written, not tuned down."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image
from streaming import Stream, StreamingDataset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from unimed.streaming.dali import CLIP_MEAN, CLIP_STD
from unimed.streaming.shards import find_mds_dirs, iter_samples
from unimed.streaming.tokenizer import CaptionTokenizer

__all__ = ["decode_ceiling", "pil_loader", "tar_loader"]


def _transform():
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def _pil_rgb(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if img.mode in ("I;16", "I;16B", "I"):  # 16-bit grey: keep the top 8 bits
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    return img.convert("RGB")


class _PilShards(StreamingDataset):
    """Stock StreamingDataset; each sample decoded by PIL and augmented by torchvision."""

    def __init__(self, tokenizer: CaptionTokenizer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenizer, self.transform = tokenizer, _transform()

    def get_item(self, sample_id: int, retry: int = 7) -> Any:
        raw = super().get_item(sample_id, retry)
        caption = raw["captions"][sample_id % len(raw["captions"])]
        return self.transform(_pil_rgb(raw["image"])), self.tokenizer(caption)


def pil_loader(shards: str, tokenizer: str, workers: int, batch: int) -> DataLoader:
    """PIL + torchvision over the same MDS shards, same workers."""
    streams = [Stream(local=d) for d in find_mds_dirs(shards)]
    dataset = _PilShards(CaptionTokenizer(tokenizer), streams=streams, shuffle=True, batch_size=batch, shuffle_seed=17)
    return DataLoader(dataset, batch_size=batch, num_workers=workers, prefetch_factor=2 if workers else None)


class _TarImages(IterableDataset):
    """WebDataset-style reading: tars split over workers, streamed with ``tarfile``, grouped by key."""

    def __init__(self, tars: str, tokenizer: str) -> None:
        self.files = sorted(os.path.join(tars, f) for f in os.listdir(tars) if f.endswith(".tar"))
        self.tokenizer, self.transform = CaptionTokenizer(tokenizer), _transform()

    def _samples(self, path: str) -> Iterator[dict[str, bytes]]:
        current: dict[str, bytes] = {}
        key = None
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                stem, ext = member.name.rsplit(".", 1)
                if key is not None and stem != key:
                    yield current
                    current = {}
                key = stem
                current[ext] = tar.extractfile(member).read()
        if current:
            yield current

    def __iter__(self):
        info = get_worker_info()
        files = self.files[info.id :: info.num_workers] if info else self.files
        rng = np.random.default_rng(17 + (info.id if info else 0))
        for path in rng.permutation(files):
            for sample in self._samples(str(path)):
                meta = json.loads(sample["json"])
                image = sample.get("jpg") or sample.get("png")
                caption = meta["captions"][int(rng.integers(len(meta["captions"])))]
                yield self.transform(_pil_rgb(image)), self.tokenizer(caption)


def tar_loader(tars: str, tokenizer: str, workers: int, batch: int) -> DataLoader:
    """The reference pipeline: uncompressed tars, PIL + torchvision, same workers."""
    return DataLoader(
        _TarImages(tars, tokenizer),
        batch_size=batch,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )


def decode_ceiling(shards: str, threads: int, batch: int) -> dict[str, Any]:
    """Decode-only throughput: every image in memory, DALI's CPU decoder (the loader's) on all threads,
    no augmentation; plus PIL's single-core decode rate for scale."""
    from nvidia.dali import fn, pipeline_def, types

    encoded = [np.frombuffer(s["image"], np.uint8) for s in iter_samples(shards)]
    batches = [encoded[i : i + batch] for i in range(0, len(encoded) - batch + 1, batch)]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=1)
    def decode_only():
        return fn.decoders.image(fn.external_source(name="encoded", no_copy=True), device="cpu", output_type=types.RGB)

    pipe = decode_only()
    pipe.build()
    pipe.feed_input("encoded", batches[0])
    pipe.run()  # warm-up
    start, cpu0 = time.perf_counter(), time.process_time()  # DALI's threads are this process's
    for b in batches[1:]:
        pipe.feed_input("encoded", b)
        pipe.run()
    dali_rate = (len(batches) - 1) * batch / (time.perf_counter() - start)
    dali_cpu_ms = 1000 * (time.process_time() - cpu0) / ((len(batches) - 1) * batch)

    sample = encoded[: min(500, len(encoded))]
    start = time.perf_counter()
    for data in sample:
        _pil_rgb(data.tobytes()).load()
    pil_rate = len(sample) / (time.perf_counter() - start)
    return {
        "images_per_s": round(dali_rate, 1),
        "images": (len(batches) - 1) * batch,
        "pil_decode_1core_per_s": round(pil_rate, 1),
        "cpu_ms_per_image": round(dali_cpu_ms, 3),
        "ttfb_s": 0.0,
    }
