"""Contrastive loss: the tiled Triton kernel against the PyTorch reference, forward + backward.

On a GPU: time (median of CUDA-synchronized runs) and peak memory (``max_memory_allocated`` above
the inputs) for B in {4k, 16k, 64k}, d=512, bf16 features; ratios ``memory/reference`` and
``time/reference`` at each B (the headline keys at B=16k). A reference that runs out of memory is
recorded as such.

On CPU the kernel runs under the Triton interpreter, which proves correctness only: the script then
uses small B, checks the loss and gradients against the reference, and measures the bytes each
implementation saves for the backward pass (autograd saved-tensor hooks: the activation memory that
grows with B), which is device-independent. Timings under the interpreter are not reported.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Report, base_parser  # noqa: E402

from unimed.kernels import clip_loss  # noqa: E402


def _inputs(b: int, d: int, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).to(device, dtype)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).to(device, dtype)
    scale = torch.tensor([1 / 0.07], device=device)
    return img.requires_grad_(), txt.requires_grad_(), scale.requires_grad_()


def saved_bytes(impl: str, b: int, d: int, device: str, dtype: torch.dtype) -> int:
    """Bytes autograd keeps for the backward of one loss call."""
    img, txt, scale = _inputs(b, d, device, dtype)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in (img.data_ptr(), txt.data_ptr()):  # the inputs exist anyway
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = clip_loss(img, txt, scale, impl=impl)
    loss.backward()
    return sum(seen.values())


def max_grad_error(b: int, d: int, device: str) -> float:
    """Largest relative gradient error of the kernel against the float64 reference."""
    from unimed.kernels import clip_loss_reference

    img, txt, scale = _inputs(b, d, device, torch.float32)
    clip_loss(img, txt, scale, impl="triton").backward()
    ref = [t.detach().double().requires_grad_() for t in (img, txt, scale)]
    clip_loss_reference(*ref).backward()
    return max(float((a.grad.double() - r.grad).abs().max() / r.grad.abs().max()) for a, r in zip((img, txt, scale), ref))


def gpu_run(impl: str, b: int, d: int, repeats: int) -> dict:
    img, txt, scale = _inputs(b, d, "cuda", torch.bfloat16)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        times = []
        for i in range(repeats + 1):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            clip_loss(img, txt, scale, impl=impl).backward()
            end.record()
            torch.cuda.synchronize()
            if i:
                times.append(start.elapsed_time(end))
            img.grad = txt.grad = scale.grad = None
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"oom": True}
    times.sort()
    return {"ms": round(times[len(times) // 2], 3), "peak_mb": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args(argv)
    report = Report("loss", args.quick)
    d = args.dim
    if torch.cuda.is_available():
        sizes = [4096, 16384] if args.quick else [4096, 16384, 65536]
        for b in sizes:
            fused = gpu_run("triton", b, d, 3 if args.quick else 10)
            ref = gpu_run("torch", b, d, 3 if args.quick else 10)
            report.add(f"B={b}", fused=fused, reference=ref)
            if not fused.get("oom") and not ref.get("oom"):
                report.ratio(f"memory/reference@{b}", fused["peak_mb"], ref["peak_mb"])
                report.ratio(f"time/reference@{b}", fused["ms"], ref["ms"])
        for key in ("memory/reference", "time/reference"):
            if f"{key}@16384" in report.ratios:
                report.ratios[key] = report.ratios[f"{key}@16384"]
    else:
        sizes = [256] if args.quick else [256, 1024]
        dim = 64 if args.quick else d
        for b in sizes:
            fused = saved_bytes("triton", b, dim, "cpu", torch.float32)
            ref = saved_bytes("torch", b, dim, "cpu", torch.float32)
            report.add(f"B={b},d={dim}", saved_mb_fused=round(fused / 2**20, 3), saved_mb_reference=round(ref / 2**20, 3),
                       max_rel_grad_error=max_grad_error(min(b, 256), dim, "cpu"),
                       note="CPU: Triton interpreter, correctness and saved-for-backward bytes only")
            report.ratio(f"memory/reference@{b}", fused, ref)
        report.ratios["memory/reference"] = report.ratios[f"memory/reference@{sizes[-1]}"]
    return report.finish(args.json)


if __name__ == "__main__":
    main()
