"""One call site for the losses: picks the Triton kernel on CUDA and the PyTorch reference elsewhere.

``impl`` is ``auto`` (the default), ``triton`` or ``torch``; ``$UNIMED_KERNELS`` overrides ``auto``.
The choice is logged once with its reason. The Triton path runs on CPU only under the interpreter
(``TRITON_INTERPRET=1`` set before Triton is first imported), which is how the tests check it.
"""

from __future__ import annotations

import logging
import os

import torch

from unimed.kernels import reference

__all__ = ["choose_impl", "contrastive_ce", "clip_loss", "siglip_loss"]

log = logging.getLogger(__name__)
_LOGGED: set[tuple[str, str]] = set()
IMPLS = ("auto", "triton", "torch")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose_impl(impl: str, device: torch.device) -> str:
    """Resolve ``impl`` for tensors on ``device``; raise ValueError where the choice cannot run."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    reason = f"impl={impl}"
    if impl == "auto":
        env = os.environ.get("UNIMED_KERNELS", "").strip().lower()
        if env in ("triton", "torch"):
            impl, reason = env, f"UNIMED_KERNELS={env}"
        elif device.type == "cuda" and _triton_available():
            impl, reason = "triton", "CUDA tensors and Triton available"
        else:
            impl, reason = "torch", f"{device.type} tensors" + ("" if _triton_available() else ", no Triton")
    if impl == "triton":
        if not _triton_available():
            raise ValueError("impl='triton' needs the triton package")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("impl='triton' on CPU runs only under the interpreter: set TRITON_INTERPRET=1 "
                             "before importing triton")
    key = (impl, reason)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("unimed.kernels: contrastive loss uses %s (%s)", impl, reason)
    return impl


def _positives(rows: torch.Tensor, cols: torch.Tensor, offset: int) -> torch.Tensor:
    """rows_i · cols_{i+offset}, the positive-pair similarities (O(N·d), autograd)."""
    n = rows.shape[0]
    if offset < 0 or offset + n > cols.shape[0]:
        raise ValueError(f"positives rows {n} at offset {offset} do not fit {cols.shape[0]} columns")
    return (rows.float() * cols[offset:offset + n].float()).sum(dim=1)


def contrastive_ce(rows: torch.Tensor, cols: torch.Tensor, logit_scale: torch.Tensor, offset: int = 0,
                   impl: str = "auto") -> torch.Tensor:
    """Mean over rows of the cross-entropy of ``scale * rows @ cols.T`` against column ``i + offset``."""
    which = choose_impl(impl, rows.device)
    if which == "torch":
        return reference.contrastive_ce_reference(rows, cols, logit_scale, offset)
    from unimed.kernels.contrastive import row_stat

    lse = row_stat(rows, cols, logit_scale, None, 0)
    return (lse - logit_scale.reshape(()).float() * _positives(rows, cols, offset)).mean()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              impl: str = "auto", *, image_all: torch.Tensor | None = None, text_all: torch.Tensor | None = None,
              offset: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE, the scalar mean loss.

    Single process: ``clip_loss(img, txt, scale)``. Distributed (gather with gradient): pass this
    rank's features as ``image_features``/``text_features``, the gathered ones as ``image_all``/
    ``text_all`` and ``offset = rank * local_batch``; each direction then compares the local rows
    with all columns, and memory stays O(B·d + B) in the Triton path.
    """
    image_all = image_features if image_all is None else image_all
    text_all = text_features if text_all is None else text_all
    return 0.5 * (contrastive_ce(image_features, text_all, logit_scale, offset, impl)
                  + contrastive_ce(text_features, image_all, logit_scale, offset, impl))


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, impl: str = "auto", *, text_all: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """Sigmoid (SigLIP) loss, ``-Σ log σ(z·(scale·x·y + bias)) / N``, tiled like :func:`clip_loss`.

    Uses ``softplus(-x) = softplus(x) - x`` for the positives, so the kernel sums ``softplus`` over
    all pairs and the positives are corrected in PyTorch.
    """
    text_all = text_features if text_all is None else text_all
    which = choose_impl(impl, image_features.device)
    if which == "torch":
        return reference.siglip_loss_reference(image_features, text_all, logit_scale, logit_bias,
                                               offset=offset)
    from unimed.kernels.contrastive import row_stat

    n = image_features.shape[0]
    total = row_stat(image_features, text_all, logit_scale, logit_bias, 1).sum()
    pos = logit_scale.reshape(()).float() * _positives(image_features, text_all, offset) + logit_bias.reshape(()).float()
    return (total - pos.sum()) / n
