"""``make demo``: the main job on the bundled sample data, end to end, with the figures printed.

Build the sample corpus from the installed sample-data packages, convert it, verify the shards,
inspect them (counts and a contact sheet), each through the ingest library's functions (what the
``ingest`` commands call, with the lines they print); then build training and held-out evaluation sets of real
images of all six modalities (``unimed.train.demodata``), train ``train/yamls/demo-cpu.yaml`` on CPU,
and compare zero-shot modality classification of the trained and the untrained model.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(out: str = "demo-out", workers: int = 2) -> dict:
    """Run the demo into ``out``; return the figures (also written to ``out/report.json``)."""
    from unimed.ingest.inspect import inspect
    from unimed.ingest.verify import verify
    from unimed.samples import build_sample_corpus
    from unimed.train.demodata import convert_folder

    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    raw = build_sample_corpus(root / "raw")
    shards = root / "shards"
    print(f"== ingest convert {raw} -> {shards}", flush=True)
    convert_folder([str(raw)], str(shards), labels=str(raw.parent / "labels.csv"), workers=workers, source_name="demo")
    print(f"== ingest verify {shards}", flush=True)
    faults, counts = verify(str(shards))
    for fault in faults:
        print(f"fault {fault}", file=sys.stderr)
    print(
        f"{'FAIL' if faults else 'OK'}: {counts['samples']} samples in {counts['shards']} shards, {len(faults)} faults",
        flush=True,
    )
    if faults:
        raise SystemExit("verify found faults")
    print(f"== ingest inspect {shards}", flush=True)
    info = inspect(str(shards), sheet=str(root / "contact_sheet.png"))
    print(json.dumps({k: info[k] for k in ("samples", "modality", "source")}, indent=2))
    print(f"contact sheet: {info['sheet']}")
    print(f"balance chart: {info['chart']}", flush=True)
    summary = json.loads((shards / "summary.json").read_text())
    report = {
        "images": summary["images"],
        "rejects": summary["rejects"],
        "modality": summary["modality"],
        "ingest_images_per_second": summary["images_per_second"],
        "bytes_per_image": summary["bytes_per_image"],
        "contact_sheet": str(root / "contact_sheet.png"),
    }
    report.update(_train_and_evaluate(root, workers))
    (root / "report.json").write_text(json.dumps(report, indent=2))
    print("== demo figures")
    print(json.dumps(report, indent=2))
    return report


def _demo_config_path() -> Path:
    """The shipped ``demo-cpu.yaml`` (inside the package, so an installed unimed has a working demo)."""
    from unimed.train.config import config_path

    return Path(config_path("demo-cpu"))


def _train_and_evaluate(root: Path, workers: int) -> dict:
    """Train the tiny CLIP on the demo's training crops; zero-shot modality top-1, trained vs untrained."""
    from unimed.train.callbacks import Throughput
    from unimed.train.checkpoint import load_trained
    from unimed.train.config import load_config
    from unimed.train.demodata import build_demo_sets
    from unimed.train.evaluate import evaluate_sets, render_markdown
    from unimed.train.trainer import train

    print("== demo sets: real images of six modalities, held-out files and regions for evaluation", flush=True)
    # Into ``root`` itself: demo-out/train-shards is where train/yamls/demo-cpu.yaml (and the README's next
    # command, `composer train/run.py train/yamls/demo-cpu.yaml`) look for the demo's training shards.
    sets = build_demo_sets(root, workers=workers)
    cfg = load_config(
        str(_demo_config_path()),
        [
            f"data.shards=[{sets['train']}]",
            f"data.tokenizer={sets['tokenizer']}",
            f"loss_log={root / 'train' / 'loss.jsonl'}",
            f"save_folder={root / 'train' / 'checkpoints'}",
            "save_interval=1000ba",
            "autoresume=false",
            "console_log_interval=60ba",
        ],
    )
    eval_sets = [("demo-modality", sets["eval"])]
    size = cfg.model.vision.image_size
    untrained, _, tokenizer = load_trained(None, cfg=cfg)
    before = evaluate_sets(untrained, tokenizer, eval_sets, size)["demo-modality"]
    print(f"== train {_demo_config_path().name} on CPU ({cfg.max_duration})", flush=True)
    speed = Throughput(skip=10)
    trainer = train(cfg, extra_callbacks=[speed])
    after = evaluate_sets(trainer.state.model.model, tokenizer, eval_sets, size)
    print(render_markdown(after))
    after = after["demo-modality"]
    losses = [json.loads(line)["loss"] for line in open(root / "train" / "loss.jsonl")]
    return {
        "zeroshot_top1_trained": round(after["top1"], 4),
        "zeroshot_top1_untrained": round(before["top1"], 4),
        "chance": round(after["chance"], 4),
        "zeroshot_eval_images": after["n"],
        "train_images_per_second": round(speed.images_per_second, 1),
        "train_steps": len(losses),
        "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


if __name__ == "__main__":
    run_demo(*(sys.argv[1:2] or []))
