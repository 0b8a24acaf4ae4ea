"""FSDP2 on gloo ranks against one process on the same global batch: gradients, the loss log, precision.

``test_dist_grads.py`` runs :func:`run` twice: in its own process (the reference: one process, the whole
global batch, no FSDP) and as ``composer -n 2 tests/train/dist_worker.py OUT TOKENIZER OVERRIDE...`` (FSDP2,
each rank its half of every global batch); the overrides are the test's ``tiny_overrides()`` (its fixture). Each run
trains two steps with the real Composer
``Trainer`` on the same in-memory global batches and writes, under OUT: ``grads-W.pt`` (every
parameter's full gradient after each backward, from rank 0), ``loss-W.jsonl`` (the ``LossLog``),
``local-W-R.json`` (each rank's own loss and batch size). The sharded run also writes
``precision.json``: what the logit scale, the towers and the loss compute in when the model is sharded
for ``amp_bf16`` (the policies are real FSDP2 policies; bf16 matmuls run on CPU).
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
from composer.core import Callback, DataSpec, Event

GLOBAL_BATCH, STEPS = 16, 2


def overrides(tiny: list[str], out: str, world: int) -> list[str]:
    """The tiny demo config (``tiny``: the test's tiny overrides) at a global batch of 16, dropout off (both
    runs must compute the same)."""
    extra = {
        "global_batch_size": GLOBAL_BATCH,
        "max_duration": f"{STEPS}ba",
        "model.text.dropout": 0.0,
        "loss_log": os.path.join(out, f"loss-{world}.jsonl"),
        "data.context_length": 16,
        "model.text.context_length": 16,
        "autoresume": "false",
        "save_folder": "null",
    }
    return [*tiny, *(f"{k}={v}" for k, v in extra.items())]


def global_batches(vocab: int, pad_id: int, context: int, size: int) -> list[dict[str, torch.Tensor]]:
    """``STEPS`` global batches: random images, captions of random lengths ([CLS] ... [SEP] then padding)."""
    g = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(STEPS):
        tokens = torch.randint(5, vocab, (GLOBAL_BATCH, context), generator=g)
        lengths = torch.randint(3, context + 1, (GLOBAL_BATCH,), generator=g)
        tokens[torch.arange(context)[None, :] >= lengths[:, None]] = pad_id
        tokens[:, 0] = 2
        batches.append(
            {
                "image": torch.randn(GLOBAL_BATCH, 3, size, size, generator=g),
                "tokens": tokens,
                "valid": torch.ones(GLOBAL_BATCH, dtype=torch.bool),
            }
        )
    return batches


def _loader(batches: list[dict[str, torch.Tensor]], rank: int, world: int) -> DataSpec:
    per = GLOBAL_BATCH // world
    mine = [{k: v[rank * per : (rank + 1) * per] for k, v in b.items()} for b in batches]

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from mine

    loader = torch.utils.data.DataLoader(Rows(), batch_size=None)
    return DataSpec(loader, get_num_samples_in_batch=lambda b: int(b["image"].shape[0]))


class _Capture(Callback):
    """After each backward: every full gradient (a collective under FSDP2) and this rank's own loss."""

    def __init__(self, out: str, world: int) -> None:
        self.out, self.world, self.grads, self.local = out, world, [], []

    def run_event(self, event: Event, state, logger) -> None:
        from composer.utils import dist

        if event == Event.AFTER_BACKWARD:
            grads = {}
            for name, p in state.model.named_parameters():
                g = p.grad
                if g is not None and hasattr(g, "full_tensor"):
                    g = g.full_tensor()
                grads[name] = None if g is None else g.detach().clone()
            self.grads.append(grads)
            self.local.append({"loss": float(state.loss.detach()), "rows": int(state.batch["image"].shape[0])})
        elif event == Event.FIT_END:
            rank = dist.get_global_rank()
            with open(os.path.join(self.out, f"local-{self.world}-{rank}.json"), "w") as fh:
                json.dump(self.local, fh)
            if rank == 0:
                torch.save(self.grads, os.path.join(self.out, f"grads-{self.world}.pt"))


def run(out: str, tokenizer: str, tiny: list[str], world: int) -> None:
    """Train ``STEPS`` steps of the tiny config on this process's rows of the shared global batches."""
    from composer.utils import dist

    from unimed.streaming.tokenizer import CaptionTokenizer
    from unimed.train.config import load_config
    from unimed.train.trainer import build_trainer

    cfg = load_config("demo-cpu", overrides(tiny, out, world))
    tok = CaptionTokenizer(tokenizer, cfg.data.context_length)
    batches = global_batches(tok.vocab_size, tok.pad_id, cfg.data.context_length, cfg.data.image_size)
    rank = int(os.environ.get("RANK", "0"))
    trainer = build_trainer(cfg, [_Capture(out, world)], train_dataloader=_loader(batches, rank, world))
    assert dist.get_world_size() == world and cfg.data.batch_size == GLOBAL_BATCH // world
    trainer.fit()
    trainer.close()
    if world > 1:
        _precision(out, cfg, tok, batches[0], rank, world)


def _precision(out: str, cfg, tok, batch: dict[str, torch.Tensor], rank: int, world: int) -> None:
    """Shard a fresh model for amp_bf16 the way the trainer does (our towers, then Composer's own pass
    over the root) and record the dtypes its forward and loss produce."""
    from composer.core.precision import Precision
    from composer.distributed.fsdp2 import prepare_fully_shard
    from composer.distributed.fsdp2_utils import generate_composer_model_policy
    from composer.utils.parallelism import FSDP2Config

    from unimed.train.composer_model import UnimedCLIP, shard_towers
    from unimed.train.trainer import _parallelism
    from unimed.train.weights import build_model

    torch.manual_seed(cfg.seed)
    model = UnimedCLIP(build_model(cfg.model, tok.vocab_size, tok.pad_id))
    shard_towers(model.model, "amp_bf16")
    root = _parallelism(cfg)["fsdp"]["mixed_precision"]  # what the trainer hands Composer for the root
    prepare_fully_shard(
        model, FSDP2Config(mixed_precision=root), Precision.AMP_BF16, generate_composer_model_policy(model)
    )
    per = GLOBAL_BATCH // world
    rows = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}
    image, text, scale = model(rows)
    loss = model.loss((image, text, scale), rows)
    loss.backward()
    states = {
        "root": model.model._get_fsdp_state(),
        "block": model.model.visual.transformer.resblocks[0]._get_fsdp_state(),
        "text_tower": model.model.text._get_fsdp_state(),
    }
    doc = {
        "policy": {k: str(s._mp_policy.param_dtype) for k, s in states.items()},
        "scale_dtype": str(scale.dtype),
        "scale": float(scale),
        "expected_scale": float(torch.tensor([math.log(cfg.model.init_logit_scale)]).exp()),
        "image_dtype": str(image.dtype),
        "loss_dtype": str(loss.dtype),
        "logit_scale_grad_dtype": str(model.model.logit_scale.grad.dtype),
        "logit_scale_dtype": str(model.model.logit_scale.dtype),
    }
    if rank == 0:
        with open(os.path.join(out, "precision.json"), "w") as fh:
            json.dump(doc, fh)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3:], int(os.environ.get("WORLD_SIZE", "1")))
