"""One prepared GPU run: every GPU figure of the project in one command, one JSON, under 9 minutes.

Sections, each in its own process with a share of the time budget, the JSON rewritten after each one
(a section that fails or runs out of time is recorded with its reason; the others still run):

- ``pytest_gpu``: ``pytest -m gpu`` (the DALI GPU-against-CPU pixels, the Triton kernel at bf16/large B).
- ``loss``: ``benchmarks/loss.py``: the Triton loss against the PyTorch reference at B = 4k, 16k, 64k
  (median ms and peak MiB of forward + backward).
- ``decode``: the real loader (StreamingDataset + DALI, nvJPEG, ``device="gpu"``; with ``--cpu``, the CPU
  path's worker decoding) over MDS shards of 512-px JPEGs, cropped to 224, against torchvision's batched GPU
  ``decode_jpeg`` + resize on the same bytes
  (a yardstick with no dataset, no augmentation and no shuffling: an upper bound for decoding alone).
- ``train``: ``benchmarks/train.py --section loader``: ViT-B/16 + BERT-base, bf16, batch 128: images/s and
  MFU with the real loader and with synthetic in-memory batches (``real/synthetic``), through Composer.
  Where Composer cannot be imported (the lent machine's torch is newer than composer 0.32.1 allows), a
  plain PyTorch step of the same model on synthetic batches is measured instead and marked so.

``--cpu``: the same sections at toy sizes on CPU (the kernel under the Triton interpreter, DALI's CPU
operators), which CI runs so that the script cannot rot; its figures mean nothing.
How the packages reach a machine without an index: ``benchmarks/gpu/README.md``.

Run: ``python benchmarks/gpu/run.py [--cpu] [--out DIR] [--budget-s 540]`` (``DIR`` default ``$OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SECTIONS = ("env", "pytest_gpu", "loss", "decode", "train")
#: Each section's share of what is left of the budget when it starts (the last takes all that is left).
SHARE = {"pytest_gpu": 0.2, "loss": 0.3, "decode": 0.35, "train": 1.0}


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mod in ("torch", "torchvision", "triton", "composer", "streaming", "nvidia.dali", "transformers"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[mod] = getattr(m, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a missing or broken package is a figure here
            out[mod] = f"missing: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    return out


def section_env(args) -> dict[str, Any]:
    from benchmarks.harness import machine

    return {"machine": machine(), "versions": _versions(), "cpu_mode": args.cpu}


def _child(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        out = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=max(timeout, 5),
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:] if isinstance(err.stdout, bytes) else (err.stdout or "")[-2000:]
        return {"status": "timeout", "after_s": round(time.perf_counter() - start, 1), "tail": str(tail)}
    result = {
        "status": "ok" if out.returncode == 0 else f"exit {out.returncode}",
        "rc": out.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if out.returncode != 0:
        result["tail"] = (out.stdout + out.stderr)[-3000:]
    result["stdout_tail"] = out.stdout[-1500:]
    return result


def section_pytest_gpu(args, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    if args.cpu:
        cmd.append("--collect-only")  # without CUDA the GPU tests can only be collected
    r = _child(cmd, timeout)
    lines = [ln for ln in r.get("stdout_tail", "").splitlines() if ln.strip()]
    r["summary"] = lines[-1] if lines else ""
    return r


def _json_child(script: str, extra: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        r = _child([sys.executable, str(ROOT / "benchmarks" / script), *extra, "--json", path], timeout, env)
        if os.path.isfile(path):
            r["figures"] = json.loads(Path(path).read_text())
    r.pop("stdout_tail", None)
    return r


def section_loss(args, timeout: float) -> dict[str, Any]:
    return _json_child("loss.py", ["--quick"] if args.cpu else [], timeout)


def section_train(args, timeout: float) -> dict[str, Any]:
    """Composer's run (``benchmarks/train.py``) where Composer imports; the plain PyTorch step always
    (its figure beside Composer's is the trainer's overhead; alone, it is the fallback)."""
    start = time.monotonic()
    plain = _child([sys.executable, __file__, "--_plain-step", *(["--cpu"] if args.cpu else [])], timeout * 0.3)
    plain["figures"] = _last_json(plain.pop("stdout_tail", ""))
    try:
        import composer  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return {"composer": f"missing: {type(err).__name__}: {err}", "plain_step": plain}
    extra = ["--section", "loader"] + (["--quick"] if args.cpu else [])
    r = _json_child("train.py", extra, timeout - (time.monotonic() - start))
    r["plain_step"] = plain
    return r


def _last_json(text: str) -> Any:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def plain_step(cpu: bool) -> dict[str, Any]:
    """ViT-B/16 + BERT-base (demo towers with ``cpu``), bf16 autocast, AdamW, synthetic batches, no Composer."""
    import torch

    from unimed.train.config import load_config
    from unimed.train.loss import contrastive_loss
    from unimed.train.weights import build_model

    name = "demo-cpu" if cpu else "vitb16-unimed"
    cfg = load_config(str(ROOT / "unimed" / "train" / "yamls" / f"{name}.yaml"), ["global_batch_size=null"])
    device = "cpu" if cpu else "cuda"
    batch, steps = (8, 6) if cpu else (128, 30)
    vocab = 30522
    model = build_model(cfg.model, vocab, 0).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    s, n = cfg.model.vision.image_size, cfg.model.text.context_length
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, s, s, generator=g).to(device)
    tokens = torch.randint(5, vocab, (batch, n), generator=g).to(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=not cpu):
            img, txt, scale = model(images, tokens)
        loss = contrastive_loss(img.float(), txt.float(), scale.float(), kind=cfg.model.loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not cpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    warm = sorted(times[steps // 3 :])
    step_s = warm[len(warm) // 2]
    return {
        "trainer": "plain torch (no Composer)",
        "model": name,
        "batch_size": batch,
        "images_per_second": round(batch / step_s, 1),
        "step_ms": round(step_s * 1e3, 2),
    }


def section_decode(args, timeout: float) -> dict[str, Any]:
    r = _child([sys.executable, __file__, "--_decode", *(["--cpu"] if args.cpu else [])], timeout)
    r["figures"] = _last_json(r.pop("stdout_tail", ""))
    return r


def decode(cpu: bool) -> dict[str, Any]:
    """img/s of the real loader (DALI) and of torchvision's batched decode_jpeg on the same JPEG bytes."""
    import numpy as np
    import torch
    import torchvision
    from torchvision.transforms import v2

    from unimed.shards import iter_samples
    from unimed.streaming.loader import LoaderConfig, build_loader
    from unimed.streaming.synthetic import SyntheticSpec, write_synthetic_shards
    from unimed.streaming.tokenizer import train_tokenizer

    images, size, batch = (64, 128, 16) if cpu else (4096, 512, 256)
    device = "cpu" if cpu else "cuda"
    out: dict[str, Any] = {"images": images, "stored_px": size, "batch_size": batch, "output_px": 224}
    with tempfile.TemporaryDirectory() as tmp:
        spec = SyntheticSpec(
            counts={"xray": images // 2, "pathology": images - images // 2},
            size=size,
            png_fraction=0.0,
            corrupt=0,
            seed=3,
        )
        folders = write_synthetic_shards(os.path.join(tmp, "shards"), spec)
        tok = train_tokenizer(
            os.path.dirname(next(iter(folders.values()))), os.path.join(tmp, "tok"), vocab_size=200, context_length=32
        )
        cfg = LoaderConfig(
            shards=list(folders.values()),
            tokenizer=tok,
            context_length=32,
            batch_size=batch,
            num_workers=1 if cpu else 8,
            image_size=224,
            device="cpu" if cpu else "gpu",
            dali_threads=2 if cpu else 4,
            drop_last=False,
            cache_dir=os.path.join(tmp, "cache"),
        )
        loader = build_loader(cfg).dataloader
        n, seconds = 0, 0.0
        for epoch in range(3):  # the first epoch warms up (workers, nvJPEG, allocator); two are timed
            t0 = time.perf_counter()
            for b in loader:
                n += int(b["image"].shape[0]) if epoch else 0
            if not cpu:
                torch.cuda.synchronize()
            seconds += (time.perf_counter() - t0) if epoch else 0.0
        out["dali_loader_img_s"] = round(n / seconds, 1)
        server = getattr(loader, "dali_server", None)  # the DALI path's (the CPU path decodes in its workers)
        if server is not None and server._is_thread_running():
            server.stop_thread()

        blobs = []
        for folder in folders.values():
            for sample in iter_samples(folder):
                blobs.append(torch.from_numpy(np.frombuffer(sample["image"], np.uint8).copy()))
        resize = v2.Resize((224, 224), antialias=True)

        def run() -> int:
            done = 0
            for i in range(0, len(blobs), batch):
                decoded = torchvision.io.decode_jpeg(
                    blobs[i : i + batch], device=device, mode=torchvision.io.ImageReadMode.RGB
                )
                stacked = torch.stack([resize(x) for x in decoded])
                done += int(stacked.shape[0])
            if not cpu:
                torch.cuda.synchronize()
            return done

        run()
        t0 = time.perf_counter()
        n = run()
        out["torchvision_decode_jpeg_img_s"] = round(n / (time.perf_counter() - t0), 1)
    out["dali/torchvision"] = round(out["dali_loader_img_s"] / out["torchvision_decode_jpeg_img_s"], 3)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="toy sizes on CPU: the dry run CI executes")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu.json (default $OUT)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget for every section")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--_decode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_plain-step", dest="plain_step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._decode:
        print(json.dumps(decode(args.cpu)))
        return {}
    if args.plain_step:
        print(json.dumps(plain_step(args.cpu)))
        return {}
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: run with --cpu for the dry run")
    out_dir = Path(args.out or "benchmarks/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu-dry-run.json" if args.cpu else "gpu.json")
    doc: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget_s, "sections": {}}
    deadline = time.monotonic() + args.budget_s
    for name in args.only or SECTIONS:
        left = deadline - time.monotonic()
        print(f"[gpu-bench] {name} ({left:.0f} s left)", flush=True)
        try:
            if name == "env":
                result = section_env(args)
            else:
                result = globals()[f"section_{name}"](args, left * SHARE[name])
        except Exception as err:  # noqa: BLE001 - recorded, and the next section still runs
            result = {"status": f"error: {type(err).__name__}: {err}"}
        doc["sections"][name] = result
        doc["elapsed_s"] = round(args.budget_s - (deadline - time.monotonic()), 1)
        path.write_text(json.dumps(doc, indent=2))
    print(f"[gpu-bench] wrote {path} in {doc['elapsed_s']} s")
    return doc


if __name__ == "__main__":
    main()
