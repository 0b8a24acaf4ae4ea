"""Training benchmark: images per second and MFU, with the real loader and with synthetic batches.

Both runs use the same model, optimizer and Composer ``Trainer`` in one process; only the data
differs: ``real`` reads MDS shards through ``unimed.streaming`` (StreamingDataset + DALI), ``synthetic``
cycles through batches already in memory. ``real/synthetic`` near 1 means the loader keeps up with the
model; well below 1 means it starves it. Configurations: the demo's tiny towers on CPU; ViT-B/16 at
224 + BERT-base at 256 tokens on a GPU where there is one (bf16). MFU divides the model's FLOPs
(``UnimedCLIP.flops_per_batch``) by the GPU's peak (Composer's table), or by ``--peak-tflops`` on CPU.
Run: ``python benchmarks/train.py [--quick] [--json PATH] [--peak-tflops T]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Report, base_parser  # noqa: E402

__all__ = ["main"]

SHARE = {"xray": 0.3, "ct": 0.2, "mri": 0.15, "pathology": 0.15, "fundus": 0.1, "ultrasound": 0.1}


def _data(root: str, images: int, size: int) -> tuple[list[str], str]:
    """Synthetic shards in the unimed schema (smooth JPEG/PNG images) and a tokenizer trained on them."""
    from unimed.streaming.synthetic import SyntheticSpec, write_synthetic_shards
    from unimed.streaming.tokenizer import train_tokenizer

    counts = {m: max(1, int(images * s)) for m, s in SHARE.items()}
    folders = write_synthetic_shards(os.path.join(root, "shards"), SyntheticSpec(counts=counts, size=size, seed=3))
    tok = train_tokenizer(os.path.join(root, "shards"), os.path.join(root, "tok"), vocab_size=2000, context_length=256)
    return sorted(folders.values()), tok


def _synthetic_loader(cfg, vocab: int, batches: int = 8):
    """A DataSpec cycling through ``batches`` in-memory batches of the loader's shape and device."""
    import torch
    from composer.core import DataSpec

    device = "cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu"
    b, s, n = cfg.data.batch_size, cfg.data.image_size, cfg.data.context_length
    data = [{"image": torch.randn(b, 3, s, s, device=device), "tokens": torch.randint(5, vocab, (b, n)),
             "valid": torch.ones(b, dtype=torch.bool)} for _ in range(batches)]

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield from data

    loader = torch.utils.data.DataLoader(Batches(), batch_size=None)
    return DataSpec(loader, get_num_samples_in_batch=lambda batch: int(batch["image"].shape[0]))


def _peak_flops(peak_tflops: float | None) -> float | None:
    import torch

    if peak_tflops:
        return peak_tflops * 1e12
    if torch.cuda.is_available():
        from composer.callbacks.speed_monitor import GPU_AVAILABLE_FLOPS

        name = torch.cuda.get_device_name(0).lower()
        for key, table in GPU_AVAILABLE_FLOPS.items():
            if key.split("-")[0] in name.replace(" ", "-") and "bf16" in table:
                return table["bf16"]
    return None


def _run(cfg, steps: int, loader=None) -> dict[str, float]:
    """Train ``steps`` batches; images/s and FLOP/s after a warm-up of a fifth of them."""
    from streaming.base.util import clean_stale_shared_memory

    from unimed.train.callbacks import Throughput
    from unimed.train.composer_model import UnimedCLIP
    from unimed.train.trainer import build_trainer

    clean_stale_shared_memory()
    cfg.max_duration = f"{steps}ba"
    speed = Throughput(skip=max(2, steps // 5))
    trainer = build_trainer(cfg, [speed], train_dataloader=loader)
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    model = trainer.state.model
    assert isinstance(model, UnimedCLIP)
    ips = speed.images_per_second
    flops = 3.0 * model._flops * ips  # per image: 3x forward (the loss's products are negligible here)
    trainer.close()
    return {"images_per_second": round(ips, 1), "flops_per_second": flops, "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> dict:
    """Measure and report; return the JSON document."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--peak-tflops", type=float, help="peak of this machine, for MFU on CPU")
    args = parser.parse_args(argv)
    import torch

    from unimed.streaming.tokenizer import CaptionTokenizer
    from unimed.train.config import load_config

    report = Report("train", args.quick)
    peak = _peak_flops(args.peak_tflops)
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        shards, tok = _data(tmp, 256 if args.quick else 1024, 256 if args.quick else 512)
        setups = [("demo-cpu", "train/yamls/demo-cpu.yaml", ["device=cpu", "data.device=cpu", "data.num_workers=1"],
                   30 if args.quick else 100)]
        if gpu:
            setups.append(("vitb16-bert-base", "train/yamls/vitb16-unimed.yaml",
                           ["data.batch_size=128", "data.num_workers=8", "data.epoch_size=null"], 20 if args.quick else 60))
        for name, yaml_path, extra, steps in setups:
            base = [f"data.shards=[{','.join(shards)}]", f"data.tokenizer={tok}", "autoresume=false", "save_folder=null",
                    "console_log_interval=1000ba", "scheduler.warmup=10ba", *extra]
            cfg = load_config(yaml_path, base)
            vocab = CaptionTokenizer(tok, cfg.data.context_length).vocab_size
            for kind in ("synthetic", "real"):  # synthetic first: nothing of the loader lingers
                cfg = load_config(yaml_path, base)
                loader = _synthetic_loader(cfg, vocab) if kind == "synthetic" else None
                figs = _run(cfg, steps, loader)
                figs["mfu"] = round(figs["flops_per_second"] / peak, 4) if peak else None
                figs["batch_size"] = cfg.data.batch_size
                report.add(f"{name}/{kind}", **figs)
            report.ratio(f"{name}/real/synthetic", report.results[f"{name}/real"]["images_per_second"],
                         report.results[f"{name}/synthetic"]["images_per_second"])
    # The headline: the paper's configuration where a GPU ran it, else the demo configuration.
    report.ratios["real/synthetic"] = report.ratios.get("vitb16-bert-base/real/synthetic",
                                                        report.ratios["demo-cpu/real/synthetic"])
    if not gpu:
        report.add("note", text="no GPU here: the ViT-B/16 + BERT-base configuration was not run")
    return report.finish(args.json)


if __name__ == "__main__":
    main()
