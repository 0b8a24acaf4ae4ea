"""Autograd wrappers of the tiled kernels: per-row statistics whose backward recomputes the tiles.

The losses are assembled in :mod:`unimed.kernels.dispatch` from these statistics and the positive
pairs (an O(N·d) term left to PyTorch autograd). What is saved for the backward is the features
(which exist anyway), the scale, the bias and the O(N + M) statistics: never a B×B matrix.
"""

from __future__ import annotations

import torch

from unimed.kernels.contrastive import row_grad, row_stat

__all__ = ["pair_lse", "row_lse", "softplus_sum"]


class _RowStats(torch.autograd.Function):
    """Statistics of ``x = scale * a @ b.T (+ bias)`` over its rows (and, if ``both``, its columns)."""

    @staticmethod
    def forward(
        ctx, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, mode: int, both: bool
    ):  # type: ignore[override]
        stat_a = row_stat(a, b, scale, bias, mode)
        stat_b = row_stat(b, a, scale, bias, mode) if both else None
        ctx.save_for_backward(a, b, scale, bias, stat_a, stat_b)
        ctx.mode, ctx.both = mode, both
        return (stat_a, stat_b) if both else stat_a

    @staticmethod
    def backward(ctx, g_a: torch.Tensor | None, g_b: torch.Tensor | None = None):  # type: ignore[override]
        a, b, scale, bias, stat_a, stat_b = ctx.saved_tensors
        g_a = torch.zeros_like(stat_a) if g_a is None else g_a
        row_a = (stat_a, g_a)
        row_b = None
        if ctx.both:
            row_b = (stat_b, torch.zeros_like(stat_b) if g_b is None else g_b)
        da, ds, dbias = row_grad(a, b, scale, bias, ctx.mode, row=row_a, col=row_b)
        db, _, _ = row_grad(b, a, scale, bias, ctx.mode, row=row_b, col=row_a)
        dscale = ds.sum().reshape(scale.shape).to(scale.dtype) if ctx.needs_input_grad[2] else None
        dbias_out = None
        if bias is not None and ctx.needs_input_grad[3]:
            dbias_out = dbias.sum().reshape(bias.shape).to(bias.dtype)
        return da, db, dscale, dbias_out, None, None


def row_lse(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``logsumexp_j(scale * a_i · b_j)`` for each row i of ``a`` [N, d] against ``b`` [M, d]; float32 [N]."""
    return _RowStats.apply(a, b, scale, None, 0, False)


def pair_lse(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column log-sum-exps of ``scale * a @ b.T``: both directions of CLIP in one autograd node.

    The backward combines both softmaxes in each tile, so it recomputes every tile twice (once for
    ``da``, once for ``db``) instead of four times for two separate :func:`row_lse` calls.
    """
    return _RowStats.apply(a, b, scale, None, 0, True)


def softplus_sum(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``Σ_j softplus(scale * a_i · b_j + bias)`` for each row i of ``a``; float32 [N]."""
    return _RowStats.apply(a, b, scale, bias, 1, False)
