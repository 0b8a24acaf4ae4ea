"""Tiled contrastive-loss kernels in Triton: the B×B logits matrix is never stored.

Two kernels serve both losses. With ``x_ij = scale * a_i · b_j (+ bias)`` for ``a`` [N, d] and
``b`` [M, d]:

* :func:`row_stat` (forward), one program per block of rows walking all column blocks:
  MODE 0 (InfoNCE) ``lse_i = log Σ_j exp(x_ij)`` with a running max and sum-exp;
  MODE 1 (SigLIP) ``sp_i = Σ_j softplus(x_ij)``.
* :func:`row_grad` (backward) recomputes the tiles from the saved statistics and accumulates
  ``da_i = scale * Σ_j w_ij b_j``, plus ``Σ_j w_ij s_ij`` (the scale's gradient) and ``Σ_j w_ij``
  (the bias's), where ``w_ij = ∂L/∂x_ij`` is built from a row term (softmax over j, weighted by
  ``g_row_i``) and/or a column term (softmax over i, weighted by ``g_col_j``). The column gradient
  ``db`` is the same kernel on the transposed problem, so no atomics are needed.

Memory is O((N + M)·d + N + M). Dot products take d in chunks of BLOCK_K; the backward writes its
output in chunks of BLOCK_DO columns of d (a second grid axis), so wide features (d = 512, 1024) need
no [BLOCK_M, d] accumulator when the tuner prefers recomputation. On CUDA the block sizes are
autotuned; under the interpreter (``TRITON_INTERPRET=1``, CPU) one large-tile configuration is used.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "row_stat", "row_grad"]

#: Whether the kernels below were built for Triton's CPU interpreter (decided at import time).
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _scores(
    A,
    B,
    rows,
    cols,
    N,
    M,
    D,
    stride_a,
    stride_b,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The tile ``A[rows] @ B[cols].T`` in float32, over d in chunks of BLOCK_K (zero-padded)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, D, BLOCK_K):
        kk = k + tl.arange(0, BLOCK_K)
        a = tl.load(A + rows[:, None] * stride_a + kk[None, :], mask=(rows[:, None] < N) & (kk[None, :] < D), other=0.0)
        b = tl.load(B + cols[:, None] * stride_b + kk[None, :], mask=(cols[:, None] < M) & (kk[None, :] < D), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, tl.trans(b), input_precision=PREC)
    return acc


@triton.jit
def _row_stat_kernel(
    A,
    B,
    SCALE,
    BIAS,
    OUT,
    N,
    M,
    D,
    stride_a,
    stride_b,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    MODE: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    s = tl.load(SCALE)
    bias = tl.load(BIAS)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < M
        x = _scores(A, B, rows, cols, N, M, D, stride_a, stride_b, BLOCK_M, BLOCK_N, BLOCK_K, PREC, UPCAST) * s
        if MODE == 0:  # running max and sum-exp; exp2 of differences, the max itself stays exact
            x = tl.where(cmask[None, :], x, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(x, 1))
            l_i = l_i * tl.exp2((m_i - m_new) * 1.4426950408889634) + tl.sum(
                tl.exp2((x - m_new[:, None]) * 1.4426950408889634), 1
            )
            m_i = m_new
        else:  # stable softplus
            x = x + bias
            sp = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
            l_i += tl.sum(tl.where(cmask[None, :], sp, 0.0), 1)
    if MODE == 0:
        out = m_i + tl.log(l_i)
    else:
        out = l_i
    tl.store(OUT + rows, out, mask=rows < N)


@triton.jit
def _row_grad_kernel(
    A,
    B,
    SCALE,
    BIAS,
    STAT_R,
    G_R,
    STAT_C,
    G_C,
    DA,
    DS,
    DB,
    N,
    M,
    D,
    stride_a,
    stride_b,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    MODE: tl.constexpr,
    HAS_ROW: tl.constexpr,
    HAS_COL: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dout = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    rmask = rows < N
    s = tl.load(SCALE)
    bias = tl.load(BIAS)
    stat_r = tl.load(STAT_R + rows, mask=rmask, other=0.0)
    g_r = tl.load(G_R + rows, mask=rmask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
    ds = tl.zeros([BLOCK_M], tl.float32)
    db = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < M
        S = _scores(A, B, rows, cols, N, M, D, stride_a, stride_b, BLOCK_M, BLOCK_N, BLOCK_K, PREC, UPCAST)
        stat_c = tl.load(STAT_C + cols, mask=cmask, other=0.0)
        g_c = tl.load(G_C + cols, mask=cmask, other=0.0)
        w = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if MODE == 0:  # softmax over the row and/or over the column, from the saved log-sum-exps
            x = S * s
            if HAS_ROW:
                w += g_r[:, None] * tl.exp(x - stat_r[:, None])
            if HAS_COL:
                w += g_c[None, :] * tl.exp(x - stat_c[None, :])
        else:  # d softplus(x)/dx = sigmoid(x), without overflowing exp
            x = S * s + bias
            e = tl.exp(-tl.abs(x))
            p = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            if HAS_ROW:
                w += g_r[:, None] * p
            if HAS_COL:
                w += g_c[None, :] * p
        w = tl.where(rmask[:, None] & cmask[None, :], w, 0.0)
        b = tl.load(B + cols[:, None] * stride_b + dout[None, :], mask=cmask[:, None] & (dout[None, :] < D), other=0.0)
        if UPCAST:
            b = b.to(tl.float32)
        acc += tl.dot(w.to(b.dtype), b, input_precision=PREC)
        ds += tl.sum(w * S, 1)
        db += tl.sum(w, 1)
    tl.store(DA + rows[:, None] * D + dout[None, :], acc * s, mask=rmask[:, None] & (dout[None, :] < D))
    if tl.program_id(1) == 0:
        tl.store(DS + rows, ds, mask=rmask)
        tl.store(DB + rows, db, mask=rmask)


def _prec(x: torch.Tensor) -> str:
    """fp32 dot products follow torch's own TF32 switch; half types go to the tensor cores as they are."""
    if x.dtype == torch.float32 and (INTERPRETED or not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


def _interp_meta(d: int, grad: bool) -> dict[str, int]:
    """Large tiles for the interpreter, where each tile is one numpy call and loops cost Python time."""
    bd = max(16, triton.next_power_of_2(d))
    meta = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": bd}
    if grad:
        meta["BLOCK_DO"] = bd
    return meta


@functools.cache
def _tuned(grad: bool, d_pad: int):
    """Autotuned CUDA launchers; configs that exceed the device's resources are skipped by the tuner."""
    Config = triton.Config
    if not grad:
        configs = [
            Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in [
                (128, 64, 64, 8, 3),
                (128, 128, 64, 8, 3),
                (64, 128, 64, 4, 3),
                (128, 64, 32, 4, 4),
                (64, 64, 64, 4, 3),
            ]
        ]
        return triton.autotune(configs, key=["M", "D", "MODE"])(_row_stat_kernel)
    dos = sorted({min(d_pad, x) for x in (128, 256, 512)})
    configs = [
        Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "BLOCK_DO": do}, num_warps=w, num_stages=st)
        for do in dos
        for bm, bn, w, st in [(64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3)]
        if bm * do <= 64 * 512 and (w == 8 or do <= 256)
    ]  # fp32 accumulators that fit in registers
    return triton.autotune(configs, key=["M", "D", "MODE", "HAS_ROW", "HAS_COL"])(_row_grad_kernel)


def _scalars(scale: torch.Tensor, bias: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, ...]:
    s = scale.detach().reshape(1).to(device, torch.float32)
    b = torch.zeros(1, device=device) if bias is None else bias.detach().reshape(1).to(device, torch.float32)
    return s, b


def row_stat(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, mode: int
) -> torch.Tensor:
    """Per-row statistic of ``scale * a @ b.T (+ bias)``: log-sum-exp (mode 0) or softplus sum (mode 1).

    ``a`` [N, d] and ``b`` [M, d] must be contiguous and of one dtype; the result is float32 [N].
    """
    n, d = a.shape
    m = b.shape[0]
    if max(a.numel(), b.numel()) >= 2**31:
        raise ValueError("the kernels index with 32-bit offsets: features must hold fewer than 2**31 values")
    s, bias_t = _scalars(scale, bias, a.device)
    out = torch.empty(n, device=a.device, dtype=torch.float32)
    args = (a, b, s, bias_t, out, n, m, d, a.stride(0), b.stride(0))
    if INTERPRETED:
        meta = _interp_meta(d, grad=False)
        _row_stat_kernel[(triton.cdiv(n, meta["BLOCK_M"]),)](*args, **meta, MODE=mode, PREC=_prec(a), UPCAST=True)
    else:
        with torch.cuda.device(a.device):
            _tuned(False, max(16, triton.next_power_of_2(d)))[lambda c: (triton.cdiv(n, c["BLOCK_M"]),)](
                *args, MODE=mode, PREC=_prec(a), UPCAST=False
            )
    return out


def row_grad(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    mode: int,
    row: tuple[torch.Tensor, torch.Tensor] | None,
    col: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of row statistics of ``x = scale * a @ b.T (+ bias)``, with respect to ``a``.

    ``row = (stat_a [N], g_a [N])`` when the loss holds ``Σ_i g_a_i * stat_a_i`` (the statistic of each
    row of x); ``col = (stat_b [M], g_b [M])`` when it holds ``Σ_j g_b_j * stat_b_j`` (the statistic of
    each column of x, i.e. of the rows of the transposed problem). Returns ``da`` [N, d] in ``a``'s
    dtype and, per row, ``Σ_j w_ij s_ij`` and ``Σ_j w_ij`` with ``w = ∂L/∂x`` and ``s = a @ b.T``:
    their totals are the gradients of the scale and of the bias.
    """
    if row is None and col is None:
        raise ValueError("row_grad needs a row term, a column term or both")
    n, d = a.shape
    m = b.shape[0]
    dev = a.device
    s, bias_t = _scalars(scale, bias, dev)
    zeros_n, zeros_m = torch.zeros(n, device=dev), torch.zeros(m, device=dev)
    stat_r, g_r = (zeros_n, zeros_n) if row is None else (t.float().contiguous() for t in row)
    stat_c, g_c = (zeros_m, zeros_m) if col is None else (t.float().contiguous() for t in col)
    da = torch.empty((n, d), device=dev, dtype=a.dtype)
    ds = torch.empty(n, device=dev, dtype=torch.float32)
    db = torch.empty(n, device=dev, dtype=torch.float32)
    args = (a, b, s, bias_t, stat_r, g_r, stat_c, g_c, da, ds, db, n, m, d, a.stride(0), b.stride(0))
    flags = {"MODE": mode, "HAS_ROW": row is not None, "HAS_COL": col is not None, "PREC": _prec(a)}
    if INTERPRETED:
        meta = _interp_meta(d, grad=True)
        grid = (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(d, meta["BLOCK_DO"]))
        _row_grad_kernel[grid](*args, **meta, **flags, UPCAST=True)
    else:
        with torch.cuda.device(dev):
            _tuned(True, max(16, triton.next_power_of_2(d)))[
                lambda c: (triton.cdiv(n, c["BLOCK_M"]), triton.cdiv(d, c["BLOCK_DO"]))
            ](*args, **flags, UPCAST=False)
    return da, ds, db
