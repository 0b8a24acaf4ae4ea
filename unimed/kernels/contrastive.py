"""Tiled contrastive losses in Triton: the B×B logits matrix is never stored.

One primitive serves both losses: for ``rows`` [N, d] and ``cols`` [M, d], a per-row statistic over
all columns of ``x_ij = scale * rows_i · cols_j (+ bias)``:

* MODE 0 (InfoNCE): ``lse_i = log Σ_j exp(x_ij)`` with a running max and sum-exp;
* MODE 1 (SigLIP): ``sp_i = Σ_j softplus(x_ij)``.

Each program owns a block of rows and walks the column blocks, so memory is O(N·d + N). The backward
recomputes the tiles from the saved statistic: one kernel accumulates the row gradients (and the
scale/bias gradient parts), one the column gradients. The positive-pair terms are O(N·d) and stay in
PyTorch autograd (see :mod:`unimed.kernels.dispatch`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["row_stat"]


@triton.jit
def _tile(PTR, idx, n, stride, dk, D, UPCAST: tl.constexpr):
    """Rows ``idx`` (masked at ``n``) of a row-major [n, D] matrix, zero-padded to the block width."""
    t = tl.load(PTR + idx[:, None] * stride + dk[None, :], mask=(idx[:, None] < n) & (dk[None, :] < D), other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _stat_fwd(R, C, SCALE, BIAS, OUT, N, M, D, stride_r, stride_c,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dk = tl.arange(0, BLOCK_D)
    rmask = rows < N
    r = _tile(R, rows, N, stride_r, dk, D, UPCAST)
    s = tl.load(SCALE).to(tl.float32)
    b = tl.load(BIAS).to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < M
        c = _tile(C, cols, M, stride_c, dk, D, UPCAST)
        x = tl.dot(r, tl.trans(c), input_precision=PREC) * s
        if MODE == 0:
            x = tl.where(cmask[None, :], x, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, 1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
            m_i = m_new
        else:
            x = x + b
            sp = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
            l_i += tl.sum(tl.where(cmask[None, :], sp, 0.0), 1)
    if MODE == 0:
        out = m_i + tl.log(l_i)
    else:
        out = l_i
    tl.store(OUT + rows, out, mask=rmask)


@triton.jit
def _prob(S, s, b, stat, MODE: tl.constexpr):
    """d stat_i / d x_ij for a tile: softmax (MODE 0) or sigmoid (MODE 1)."""
    if MODE == 0:
        p = tl.exp(S * s - stat[:, None])
    else:
        p = 1.0 / (1.0 + tl.exp(-(S * s + b)))
    return p


@triton.jit
def _stat_bwd_rows(R, C, SCALE, BIAS, STAT, G, DR, DS, DB, N, M, D, stride_r, stride_c,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dk = tl.arange(0, BLOCK_D)
    rmask = rows < N
    dmask = dk[None, :] < D
    r = _tile(R, rows, N, stride_r, dk, D, UPCAST)
    s = tl.load(SCALE).to(tl.float32)
    b = tl.load(BIAS).to(tl.float32)
    stat = tl.load(STAT + rows, mask=rmask, other=0.0)
    g = tl.load(G + rows, mask=rmask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ds = tl.zeros([BLOCK_M], tl.float32)
    db = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < M
        c = _tile(C, cols, M, stride_c, dk, D, UPCAST)
        S = tl.dot(r, tl.trans(c), input_precision=PREC)
        p = _prob(S, s, b, stat, MODE)
        p = tl.where(cmask[None, :], p, 0.0) * g[:, None]
        acc += tl.dot(p.to(c.dtype), c, input_precision=PREC)
        ds += tl.sum(p * S, 1)
        db += tl.sum(p, 1)
    tl.store(DR + rows[:, None] * D + dk[None, :], acc * s, mask=rmask[:, None] & dmask)
    tl.store(DS + rows, ds, mask=rmask)
    tl.store(DB + rows, db, mask=rmask)


@triton.jit
def _stat_bwd_cols(R, C, SCALE, BIAS, STAT, G, DC, N, M, D, stride_r, stride_c,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    dk = tl.arange(0, BLOCK_D)
    cmask = cols < M
    dmask = dk[None, :] < D
    c = _tile(C, cols, M, stride_c, dk, D, UPCAST)
    s = tl.load(SCALE).to(tl.float32)
    b = tl.load(BIAS).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < N
        r = _tile(R, rows, N, stride_r, dk, D, UPCAST)
        stat = tl.load(STAT + rows, mask=rmask, other=0.0)
        g = tl.load(G + rows, mask=rmask, other=0.0)
        S = tl.dot(r, tl.trans(c), input_precision=PREC)
        p = _prob(S, s, b, stat, MODE)
        p = tl.where(rmask[:, None] & cmask[None, :], p, 0.0) * g[:, None]
        acc += tl.dot(tl.trans(p).to(r.dtype), r, input_precision=PREC)
    tl.store(DC + cols[:, None] * D + dk[None, :], acc * s, mask=cmask[:, None] & dmask)


def _blocks(d: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    block = 64 if block_d <= 128 else (32 if block_d <= 512 else 16)
    return block, block, block_d


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _upcast(x: torch.Tensor) -> bool:
    """Half-precision tiles go to the tensor cores as they are on a GPU; the CPU interpreter has no
    bfloat16 arithmetic, so there they are widened to float32 after loading."""
    return x.dtype != torch.float32 and x.device.type != "cuda"


class _RowStat(torch.autograd.Function):
    """Per-row statistic over all columns (log-sum-exp or softplus sum) with a tiled backward."""

    @staticmethod
    def forward(ctx, rows, cols, scale, bias, mode: int):  # type: ignore[override]
        rows_c, cols_c = rows.contiguous(), cols.contiguous()
        n, d = rows_c.shape
        m = cols_c.shape[0]
        bm, bn, bd = _blocks(d)
        scale_f = scale.detach().reshape(1).float().contiguous()
        bias_f = bias.detach().reshape(1).float().contiguous()
        out = torch.empty(n, device=rows.device, dtype=torch.float32)
        _stat_fwd[(triton.cdiv(n, bm),)](rows_c, cols_c, scale_f, bias_f, out, n, m, d, rows_c.stride(0),
                                         cols_c.stride(0), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, MODE=mode,
                                         PREC=_prec(rows_c), UPCAST=_upcast(rows_c))
        ctx.save_for_backward(rows_c, cols_c, scale_f, bias_f, out)
        ctx.mode = mode
        ctx.shapes = (scale.shape, scale.dtype, bias.shape, bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, cols, scale, bias, stat = ctx.saved_tensors
        n, d = rows.shape
        m = cols.shape[0]
        bm, bn, bd = _blocks(d)
        g = grad.float().contiguous()
        drows = torch.empty((n, d), device=rows.device, dtype=torch.float32)
        dcols = torch.empty((m, d), device=rows.device, dtype=torch.float32)
        ds = torch.empty(n, device=rows.device, dtype=torch.float32)
        db = torch.empty(n, device=rows.device, dtype=torch.float32)
        meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, MODE=ctx.mode, PREC=_prec(rows), UPCAST=_upcast(rows))
        _stat_bwd_rows[(triton.cdiv(n, bm),)](rows, cols, scale, bias, stat, g, drows, ds, db, n, m, d,
                                              rows.stride(0), cols.stride(0), **meta)
        _stat_bwd_cols[(triton.cdiv(m, bn),)](rows, cols, scale, bias, stat, g, dcols, n, m, d,
                                              rows.stride(0), cols.stride(0), **meta)
        scale_shape, scale_dtype, bias_shape, bias_dtype = ctx.shapes
        dscale = ds.sum().reshape(scale_shape).to(scale_dtype)
        dbias = db.sum().reshape(bias_shape).to(bias_dtype)
        return drows.to(rows.dtype), dcols.to(cols.dtype), dscale, dbias, None


def row_stat(rows: torch.Tensor, cols: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             mode: int) -> torch.Tensor:
    """The per-row statistic (MODE 0: log-sum-exp; 1: softplus sum) of ``scale * rows @ cols.T + bias``."""
    if bias is None:
        bias = torch.zeros(1, device=rows.device, dtype=torch.float32)
    out = _RowStat.apply(rows, cols, scale, bias, mode)
    return out
