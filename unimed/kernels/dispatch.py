"""One call site for the contrastive losses: the Triton kernels on CUDA, the PyTorch references elsewhere.

``impl`` is ``auto`` (the default), ``triton`` or ``torch``; ``$UNIMED_KERNELS=torch|triton``
overrides ``auto``. The choice is made in :func:`choose_impl` and logged once with its reason. The
Triton path runs on CPU only under the interpreter (``TRITON_INTERPRET=1`` set before the kernels
module is first imported), which is how the tests check it.

Distributed use (gather with gradient): each rank passes its own rows as ``image_features`` /
``text_features`` [B_local, d], the gathered features of all ranks as ``image_all`` / ``text_all``
[B_global, d], and ``offset = rank * B_local``: the positive of local row i is global column
``i + offset``. The loss is then this rank's mean over its own rows (open_clip's ``local_loss``);
averaging it over ranks gives the global loss, and the kernels never hold more than O(B_global·d).
"""

from __future__ import annotations

import logging
import os
import sys

import torch

from unimed.kernels import reference

__all__ = ["IMPLS", "choose_impl", "clip_loss", "contrastive_ce", "siglip_loss"]

log = logging.getLogger(__name__)
IMPLS: tuple[str, ...] = ("auto", "triton", "torch")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOGGED: set[tuple[str, str]] = set()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreted() -> bool:
    """Whether the kernels run (or, not yet imported, would run) under Triton's CPU interpreter."""
    module = sys.modules.get("unimed.kernels.contrastive")
    if module is not None:
        return bool(module.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def choose_impl(impl: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Resolve ``impl`` for features on ``device`` of ``dtype``: ``"triton"`` or ``"torch"``.

    ``auto`` follows ``$UNIMED_KERNELS`` when set, else takes Triton for CUDA tensors of a dtype the
    kernels take (fp32, bf16, fp16). An explicit choice that cannot run raises ValueError.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device = torch.device(device)
    reason = f"impl={impl}"
    if impl == "auto":
        env = os.environ.get("UNIMED_KERNELS", "").strip().lower()
        if env and env not in ("triton", "torch", "auto"):
            raise ValueError(f"UNIMED_KERNELS must be triton, torch or auto, got {env!r}")
        if env in ("triton", "torch"):
            impl, reason = env, f"UNIMED_KERNELS={env}"
        elif device.type != "cuda":
            impl, reason = "torch", f"{device.type} tensors"
        elif dtype not in _KERNEL_DTYPES:
            impl, reason = "torch", f"{dtype} features"
        elif not _triton_available():
            impl, reason = "torch", "triton is not installed"
        else:
            impl, reason = "triton", "CUDA tensors and Triton available"
    if impl == "triton":
        if not _triton_available():
            raise ValueError("impl='triton' needs the triton package; use impl='torch'")
        if device.type != "cuda" and not _interpreted():
            raise ValueError(
                "impl='triton' on CPU runs only under Triton's interpreter: set TRITON_INTERPRET=1 "
                "before unimed.kernels runs its first kernel, or use impl='torch'"
            )
        if dtype not in _KERNEL_DTYPES:
            raise ValueError(
                f"the Triton kernels take float32, bfloat16 or float16 features, not {dtype}; use impl='torch'"
            )
    if (impl, reason) not in _LOGGED:
        _LOGGED.add((impl, reason))
        log.info("unimed.kernels: contrastive losses use %s (%s)", impl, reason)
    return impl


def _prepare(*features: torch.Tensor) -> list[torch.Tensor]:
    """Check shapes; give all features one dtype (autocast's, when autocast is on) and a contiguous layout."""
    for x in features:
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"features must be non-empty [B, d] matrices, got shape {tuple(x.shape)}")
        if x.shape[1] != features[0].shape[1]:
            raise ValueError(f"feature widths differ: {features[0].shape[1]} and {x.shape[1]}")
    device_type = features[0].device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)  # as the reference's matmul would run
    else:
        dtype = features[0].dtype
        for x in features[1:]:
            dtype = torch.promote_types(dtype, x.dtype)
    return [x.to(dtype).contiguous() for x in features]


def _scale(logit_scale: torch.Tensor) -> torch.Tensor:
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must hold one value, got shape {tuple(logit_scale.shape)}")
    return logit_scale.reshape(1)


def _positives(rows: torch.Tensor, cols: torch.Tensor, offset: int) -> torch.Tensor:
    """``rows_i · cols_{i+offset}`` in float32: the positive-pair similarities (O(N·d), autograd)."""
    n = rows.shape[0]
    if offset < 0 or offset + n > cols.shape[0]:
        raise ValueError(f"{n} rows at label offset {offset} do not fit {cols.shape[0]} columns")
    return (rows.float() * cols[offset : offset + n].float()).sum(dim=1)


def contrastive_ce(
    rows: torch.Tensor, cols: torch.Tensor, logit_scale: torch.Tensor, offset: int = 0, impl: str = "auto"
) -> torch.Tensor:
    """One direction of CLIP: mean over rows of the cross-entropy of ``scale * rows @ cols.T``, label ``i + offset``."""
    which = choose_impl(impl, rows.device, rows.dtype)
    scale = _scale(logit_scale)
    if which == "torch":
        return reference.contrastive_ce_reference(rows, cols, scale, offset)
    from unimed.kernels.functions import row_lse

    rows, cols = _prepare(rows, cols)
    pos = _positives(rows, cols, offset)
    return (row_lse(rows, cols, scale) - scale.float() * pos).mean()


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    impl: str = "auto",
    *,
    image_all: torch.Tensor | None = None,
    text_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP), the scalar ``(CE_image→text + CE_text→image) / 2``.

    ``logit_scale`` is the multiplier of the similarities (already exponentiated), a 1-element
    tensor; the features are used as given (normalize them first, as CLIP does). Single process:
    ``clip_loss(img, txt, scale)``. Distributed: see the module docstring (``image_all``,
    ``text_all``, ``offset``).
    """
    image_all = image_features if image_all is None else image_all
    text_all = text_features if text_all is None else text_all
    which = choose_impl(impl, image_features.device, image_features.dtype)
    scale = _scale(logit_scale)
    if which == "torch":
        return reference.clip_loss_reference(
            image_features, text_features, scale, image_all=image_all, text_all=text_all, offset=offset
        )
    from unimed.kernels.functions import pair_lse, row_lse

    if image_all is image_features and text_all is text_features and offset == 0:
        img, txt = _prepare(image_features, text_features)
        if img.shape[0] != txt.shape[0]:
            raise ValueError(f"{img.shape[0]} image rows but {txt.shape[0]} text rows")
        lse_rows, lse_cols = pair_lse(img, txt, scale)  # one node, both directions
        pos = scale.float() * _positives(img, txt, 0)
        return 0.5 * (lse_rows.mean() + lse_cols.mean()) - pos.mean()
    img, txt, img_all, txt_all = _prepare(image_features, text_features, image_all, text_all)
    i2t = row_lse(img, txt_all, scale) - scale.float() * _positives(img, txt_all, offset)
    t2i = row_lse(txt, img_all, scale) - scale.float() * _positives(txt, img_all, offset)
    return 0.5 * (i2t.mean() + t2i.mean())


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    impl: str = "auto",
    *,
    text_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Sigmoid (SigLIP) loss ``-Σ_ij log σ(z_ij (scale x_i·y_j + bias)) / N``, z = +1 on positives, else -1.

    Tiled like :func:`clip_loss`: the kernel sums ``softplus(x)`` over all pairs and the positives
    are corrected in PyTorch (``softplus(-x) = softplus(x) - x``). Distributed: local image rows
    against the gathered ``text_all`` with ``offset = rank * B_local``.
    """
    text_all = text_features if text_all is None else text_all
    which = choose_impl(impl, image_features.device, image_features.dtype)
    scale = _scale(logit_scale)
    if logit_bias.numel() != 1:
        raise ValueError(f"logit_bias must hold one value, got shape {tuple(logit_bias.shape)}")
    bias = logit_bias.reshape(1)
    if which == "torch":
        return reference.siglip_loss_reference(
            image_features, text_features, scale, bias, text_all=text_all, offset=offset
        )
    from unimed.kernels.functions import softplus_sum

    img, txt_all = _prepare(image_features, text_all)
    total = softplus_sum(img, txt_all, scale, bias).sum()
    pos = scale.float() * _positives(img, txt_all, offset) + bias.float()
    return (total - pos.sum()) / img.shape[0]
