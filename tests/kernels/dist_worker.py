"""Two gloo ranks: the kernels on local rows against all-gathered columns give the global loss and grads.

Run as a script by ``test_contrastive.py`` (``python dist_worker.py WORLD``); exits non-zero when a
rank's loss or gradients differ from the float64 single-process reference.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

N_LOCAL, DIM = 20, 64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _run(rank: int, world: int, init: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (CPU)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from torch.distributed.nn.functional import all_gather

    from unimed.kernels import clip_loss, clip_loss_reference, siglip_loss, siglip_loss_reference

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(N_LOCAL * world, DIM, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(N_LOCAL * world, DIM, generator=g, dtype=torch.float64), dim=1)
    scale, bias = torch.tensor([25.0], dtype=torch.float64), torch.tensor([-3.0], dtype=torch.float64)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    cases = {
        "clip": (
            lambda i, t, s, b, ia, ta: clip_loss(
                i, t, s, impl="triton", image_all=ia, text_all=ta, offset=rank * N_LOCAL
            ),
            clip_loss_reference,
        ),
        "siglip": (
            lambda i, t, s, b, ia, ta: siglip_loss(i, t, s, b, impl="triton", text_all=ta, offset=rank * N_LOCAL),
            siglip_loss_reference,
        ),
    }
    for name, (fn, ref_fn) in cases.items():
        ref_leaves = [x.clone().requires_grad_() for x in (img, txt, scale, bias)]
        args = ref_leaves[:3] + ([ref_leaves[3]] if name == "siglip" else [])
        ref = ref_fn(*args)
        ref.backward()
        leaves = [x.float().clone().requires_grad_() for x in (img[sl], txt[sl], scale, bias)]
        img_all = torch.cat(all_gather(leaves[0]), dim=0)
        txt_all = torch.cat(all_gather(leaves[1]), dim=0)
        loss = fn(*leaves, img_all, txt_all)
        (loss / world).backward()  # what data-parallel averaging does
        total = loss.detach().double() / world
        dist.all_reduce(total)
        checks = {
            "loss": abs(float(total) - float(ref)) / abs(float(ref)),
            "img": _rel(leaves[0].grad, ref_leaves[0].grad[sl]),
            "txt": _rel(leaves[1].grad, ref_leaves[1].grad[sl]),
        }
        for i, key in ((2, "scale"), (3, "bias")):
            if ref_leaves[i].grad is not None:
                grad = leaves[i].grad.double()
                dist.all_reduce(grad)
                checks[key] = _rel(grad, ref_leaves[i].grad)
        bad = {k: v for k, v in checks.items() if not v < 1e-4}  # NaN fails too
        if bad:
            raise AssertionError(f"rank {rank} {name}: relative errors {bad}")
    dist.destroy_process_group()


def main(world: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_run, args=(world, f"file://{tmp}/store"), nprocs=world, join=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
