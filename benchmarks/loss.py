"""Contrastive loss: the tiled Triton kernel against the PyTorch reference, forward + backward.

On a GPU: median time (CUDA-synchronized, after warm-up, which also runs the autotuner) and peak
memory (``max_memory_allocated`` above the inputs) of one ``clip_loss(...).backward()`` for B in
{4k, 16k, 64k}, d=512, bf16 unit-norm features; ratios ``memory/reference`` and ``time/reference``
at each B, the headline keys at B=16k. A reference that runs out of memory is recorded as such.

On CPU the kernel runs only under the Triton interpreter, which proves correctness, not speed: the
script then uses small B, checks loss and gradients against the float64 reference, and measures the
bytes each implementation keeps for the backward pass (autograd saved-tensor hooks), the memory that
grows with B whatever the device. Interpreter timings are not reported.
"""

from __future__ import annotations

import gc
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, base_parser, time_call  # noqa: E402

from unimed.kernels import clip_loss, clip_loss_reference  # noqa: E402

IMPLS = {"fused": "triton", "reference": "torch"}


def _inputs(b: int, d: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).to(device, dtype)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).to(device, dtype)
    scale = torch.tensor([1 / 0.07], device=device)
    return img.requires_grad_(), txt.requires_grad_(), scale.requires_grad_()


def saved_bytes(impl: str, b: int, d: int) -> int:
    """Bytes autograd keeps for the backward of one loss call, beyond the input features."""
    img, txt, scale = _inputs(b, d, "cpu", torch.float32)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in (img.data_ptr(), txt.data_ptr(), scale.data_ptr()):
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = clip_loss(img, txt, scale, impl=impl)
    loss.backward()
    return sum(seen.values())


def max_error(b: int, d: int, device: str) -> float:
    """Largest relative error of the kernel's loss and gradients against the float64 reference."""
    img, txt, scale = _inputs(b, d, device, torch.float32, seed=1)
    loss = clip_loss(img, txt, scale, impl="triton")
    loss.backward()
    ref = [t.detach().double().requires_grad_() for t in (img, txt, scale)]
    ref_loss = clip_loss_reference(*ref)
    ref_loss.backward()
    errs = [abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))]
    errs += [float((a.grad.double() - r.grad).abs().max() / r.grad.abs().max()) for a, r in zip((img, txt, scale), ref)]
    return max(errs)


def gpu_run(impl: str, b: int, d: int, repeats: int) -> dict[str, float | bool]:
    """Median milliseconds and peak MiB (above the inputs) of forward + backward on the GPU."""
    tensors = list(_inputs(b, d, "cuda", torch.bfloat16))

    def step() -> None:
        img, txt, scale = tensors
        img.grad = txt.grad = scale.grad = None
        clip_loss(img, txt, scale, impl=impl).backward()
        torch.cuda.synchronize()

    try:
        step()  # compile and autotune outside the measurement
        for t in tensors:
            t.grad = None
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - base
        seconds = time_call(step, repeats=repeats, warmup=1)
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        tensors.clear()
        gc.collect()
        torch.cuda.empty_cache()
    return {"ms": round(seconds * 1e3, 3), "peak_mb": round(peak / 2**20, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="feature width d (default 512)")
    args = parser.parse_args(argv)
    report = Report("loss", args.quick)
    d = args.dim
    if torch.cuda.is_available():
        sizes = [4096, 16384] if args.quick else [4096, 16384, 65536]
        report.add("check", max_rel_error_fp32=max_error(1000, d, "cuda"))
        for b in sizes:
            runs = {name: gpu_run(impl, b, d, 5 if args.quick else 20) for name, impl in IMPLS.items()}
            report.add(f"B={b},d={d}", **runs)
            fused, ref = runs["fused"], runs["reference"]
            if not fused.get("oom") and not ref.get("oom"):
                report.ratio(f"memory/reference@{b}", fused["peak_mb"], ref["peak_mb"])
                report.ratio(f"time/reference@{b}", fused["ms"], ref["ms"])
        for key in ("memory/reference", "time/reference"):
            if f"{key}@16384" in report.ratios:
                report.ratios[key] = report.ratios[f"{key}@16384"]
    else:
        sizes = [128] if args.quick else [128, 512]
        dim = 64 if args.quick else min(d, 128)
        for b in sizes:
            fused, ref = saved_bytes("triton", b, dim), saved_bytes("torch", b, dim)
            report.add(
                f"B={b},d={dim}",
                saved_kib_fused=round(fused / 1024, 2),
                saved_kib_reference=round(ref / 1024, 2),
                max_rel_error_fp32=max_error(min(b, 128), dim, "cpu"),
                note="CPU: Triton interpreter; correctness and saved-for-backward bytes only, no timings",
            )
            report.ratio(f"memory/reference@{b}", fused, ref)
        report.ratios["memory/reference"] = report.ratios[f"memory/reference@{sizes[-1]}"]
    return report.finish(args.json)


if __name__ == "__main__":
    main()
