"""Evaluation benchmark: the three evaluations of a trained demo model against the same model untrained,
the evaluation throughput, and the open_clip export's agreement.

Data: the demo's real-image sets (``unimed.train.demodata``: six modalities, held-out files and regions
for evaluation). Model: ``train/yamls/demo-cpu.yaml`` trained on CPU with its checkpoint made
self-contained (``UnimedBundle``); the baseline is the same architecture at its random initialization.
Figures: zero-shot modality top-1 and balanced top-1 (n per class), image-text recall@1/5/10 both ways
on the held-out set's captions, a linear probe trained on the training crops and tested on the held-out
ones, images per second of ``unimed eval zeroshot``'s path, and the largest difference between
open_clip's embeddings of the exported folder and unimed's.
Run: ``python benchmarks/eval.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Report, base_parser  # noqa: E402

__all__ = ["main"]


def _train(root: str, sets: dict[str, str], quick: bool) -> str:
    from unimed.train.bundle_callback import UnimedBundle
    from unimed.train.checkpoint import tokenizer_for
    from unimed.train.config import load_config
    from unimed.train.trainer import train

    steps = 60 if quick else 240
    over = [
        f"data.shards=[{sets['train']}]",
        f"data.tokenizer={sets['tokenizer']}",
        f"max_duration={steps}ba",
        f"save_folder={root}/run",
        f"save_interval={steps}ba",
        "autoresume=false",
        "console_log_interval=1000ba",
    ]
    if quick:
        over += [
            "data.image_size=32",
            "model.vision.image_size=32",
            "model.vision.width=32",
            "model.vision.layers=2",
            "model.vision.heads=2",
            "model.text.hidden_size=32",
            "model.text.intermediate_size=64",
            "model.embed_dim=32",
            "data.batch_size=8",
            "data.num_workers=0",
            "optimizer.lr=2e-3",
        ]
    cfg = load_config("train/yamls/demo-cpu.yaml", over)
    train(cfg, extra_callbacks=[UnimedBundle(cfg, tokenizer_for(cfg))])
    return next(
        os.path.join(root, "run", f)
        for f in os.listdir(os.path.join(root, "run"))
        if f.endswith(".pt") and f.startswith("ep")
    )


def _untrained(loaded):
    import torch

    from unimed.api import Model
    from unimed.train.bundle import model_from_descriptor
    from unimed.train.loading import Loaded

    torch.manual_seed(17)
    model = model_from_descriptor(loaded.descriptor).eval()
    return Model(Loaded(model, loaded.tokenizer, loaded.transform, loaded.descriptor, kind="untrained"))


def _figures(model, sets: dict[str, str]) -> dict[str, float]:
    model.zeroshot(sets["eval"])  # warm-up: imports, prompt embeddings, allocator
    start = time.perf_counter()
    z = model.zeroshot(sets["eval"])["demo-modality"]  # labels read, images decoded, embedded, classified
    seconds = time.perf_counter() - start
    r = model.retrieval(sets["eval"])
    p = model.linear_probe(sets["train"], test=sets["eval"], set_name="demo-modality")
    return {
        "zeroshot_top1": round(z["top1"], 4),
        "zeroshot_balanced_top1": round(z["balanced_top1"], 4),
        "zeroshot_n_per_class": z["per_class_n"],
        "zeroshot_images_per_second": round(z["n"] / seconds, 1),
        **{k: round(v, 4) for k, v in r.items() if "/R@" in k},
        "retrieval_images": r["n_images"],
        "retrieval_distinct_captions": r["n_distinct_captions"],
        "probe_top1": round(p["top1"], 4),
        "probe_balanced_top1": round(p["balanced_top1"], 4),
        "probe_train_test_per_class": {
            c: f"{p['train_per_class_n'][c]}/{p['per_class_n'][c]}" for c in p["per_class_n"]
        },
    }


def _export_agreement(checkpoint: str, root: str, images: list[bytes]) -> dict[str, float]:
    import open_clip
    import torch

    import unimed
    from unimed.export import run_export

    folder = run_export(checkpoint, "open_clip", os.path.join(root, "open_clip"))
    theirs, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    ours = unimed.load(checkpoint)
    x = ours.preprocess.batch(images)
    texts = ["an x-ray image.", "a histopathology image.", "a fundus photograph.", "an MRI scan."]
    with torch.no_grad():
        di = (theirs.eval().encode_image(x, normalize=True) - ours.encode_image(x)).abs().max().item()
        dt = (theirs.encode_text(tok(texts), normalize=True) - ours.encode_text(texts)).abs().max().item()
    return {"open_clip_max_abs_diff_image": di, "open_clip_max_abs_diff_text": dt}


def main(argv: list[str] | None = None) -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    import unimed
    from unimed.streaming.shards import iter_samples
    from unimed.train.demodata import build_demo_sets

    report = Report("eval", args.quick)
    with tempfile.TemporaryDirectory() as root:
        sizes = dict(train_per_modality=16, eval_per_modality=6, size=64) if args.quick else {}
        sets = build_demo_sets(os.path.join(root, "data"), workers=2, **sizes)
        checkpoint = _train(root, sets, args.quick)
        trained = unimed.load(checkpoint)
        report.add("trained", **_figures(trained, sets))
        report.add("untrained", **_figures(_untrained(trained._loaded), sets))
        images = [s["image"] for s in list(iter_samples(sets["eval"]))[:16]]
        report.add("export", **_export_agreement(checkpoint, root, images))
    t, u = report.results["trained"], report.results["untrained"]
    for key in ("zeroshot_top1", "probe_top1", "image_to_text/R@1", "text_to_image/R@1"):
        report.ratio(f"{key} trained/untrained", t[key], u[key])
    return report.finish(args.json)


if __name__ == "__main__":
    main()
