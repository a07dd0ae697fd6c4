"""Triton kernels of ``keep_topk``, ``gather_tokens`` (and its backward) and ``prune_tokens`` (the two fused).

Ordering: each score is turned into one int64 key, ``order-preserving float bits << 32 | (PAD - index)``, so a
single descending sort (``tl.topk``/``tl.sort``, which return values only) yields descending score with the
lower index first on ties; the index is read back from the low half. -0.0 is folded onto +0.0 and every NaN
ranks above +inf, as ``torch.sort`` orders them.

Launch shape: program (b, chunk) sorts the scores of sample b (a few hundred keys: cheap, and redundant across
the chunks of one sample so no program waits for another) and writes the output rows [chunk * ROWS, +ROWS):
row 0 is CLS, row r >= 1 is the token of rank r - 1. One launch covers the whole batch.

Backward of ``gather_tokens``: program (b, chunk) owns destination rows [chunk * ROWS, +ROWS) of grad_x, finds
which kept row (if any) holds each token by matching against idx, and reads that row (zeros for dropped tokens):
every element is written once, deterministic, with no atomics and no separate zero fill.

Tokens, scores and indices are read contiguous (the wrappers copy a strided input; the models pass contiguous
ones).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import INTERPRET, on_device, pow2_at_least

MAX_PATCH_TOKENS = 8192  # one sample's scores are sorted inside one program (8192 int64 keys in registers)
FUSED_MAX_K = 1024  # above: top-k and gather as two launches (the [ROWS, K] one-hot rank pick would not fit)
_PAD_KEY = tl.constexpr(-(2 ** 63))
# GPU tiles. A program copies ROWS x BLOCK_C elements per step: 32 x 128 = 4096 (32 a thread at the default
# 4 warps, 16-byte vector loads along C). 32 rows keep several programs per sample at N = 197 (5 for the 139 kept
# rows at keep 0.7, 7 for the 197 rows of the backward) so that a batch of 1 still spreads over the SMs; each
# program re-sorts its sample's keys, which is cheap against the copy at these lengths.
_ROWS = 32
_BLOCK_C = 128
_K_STEP = 256  # kept indices matched per step of the gather backward: a [ROWS, K_STEP] int32 compare tile
# Interpreter tiles: one chunk per sample (each program instance costs about a millisecond there).
_INTERPRET_ROWS = 256
_INTERPRET_BLOCK_C = 512


@triton.jit
def _top_keys(Score, b, M, BLOCK_S: tl.constexpr, K_BLOCK: tl.constexpr):
    """The K_BLOCK largest packed keys of score row b (M scores), descending: [K_BLOCK] int64."""
    offs = tl.arange(0, BLOCK_S)  # [BLOCK_S] patch ids
    ok = offs < M
    s = tl.load(Score + b * M + offs, mask=ok, other=0.0).to(tl.float32)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 ties with +0.0
    bits = s.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed-int order == float order
    bits = tl.where(s != s, 0x7FFFFFFF, bits)  # NaN above +inf
    key = (bits.to(tl.int64) << 32) | (BLOCK_S - offs).to(tl.int64)  # lower index -> larger low half
    key = tl.where(ok, key, _PAD_KEY)
    if K_BLOCK == BLOCK_S:
        return tl.sort(key, descending=True)
    else:
        return tl.topk(key, K_BLOCK)


@triton.jit
def _copy_rows(X, Out, src_rows, dst_rows, row_ok, C, BLOCK_C: tl.constexpr):
    """Out[dst_rows[r], :] = X[src_rows[r], :] for the rows where row_ok (row ids already offset per sample)."""
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = row_ok[:, None] & (offs_c[None, :] < C)  # [ROWS, BLOCK_C]
        vals = tl.load(X + src_rows[:, None] * C + offs_c[None, :], mask=m)
        tl.store(Out + dst_rows[:, None] * C + offs_c[None, :], vals, mask=m)


@triton.jit
def _prune_tokens_kernel(X, Score, Out, Idx, N, C, k, BLOCK_S: tl.constexpr, K_BLOCK: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK_C: tl.constexpr, GATHER: tl.constexpr):
    """Program (b, chunk): top-k of score[b] and (GATHER) the output rows [chunk * ROWS, +ROWS) of x_kept[b];
    without GATHER, ``keep_topk`` alone (one program per sample stores every index)."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # [ROWS] output rows; row r >= 1 holds rank r - 1
    keys = _top_keys(Score, b, N - 1, BLOCK_S, K_BLOCK)  # [K_BLOCK]
    ranked = BLOCK_S - keys.to(tl.int32)  # [K_BLOCK] patch id of each rank (low half of the key)
    if GATHER:
        sel = tl.arange(0, K_BLOCK)[None, :] == rows[:, None] - 1  # [ROWS, K_BLOCK] one-hot rank pick
        patch = tl.sum(tl.where(sel, ranked[None, :], 0), 1)  # [ROWS] patch id of row r (0 for the CLS row)
        tl.store(Idx + b * k + rows - 1, patch.to(tl.int64), mask=(rows >= 1) & (rows <= k))
        src = tl.where(rows == 0, 0, patch + 1).to(tl.int64)  # token id in x
        _copy_rows(X + b * N * C, Out + b * (k + 1) * C, src, rows.to(tl.int64), rows <= k, C, BLOCK_C)
    else:  # indices only: one program per sample stores them all
        ranks = tl.arange(0, K_BLOCK)
        tl.store(Idx + b * k + ranks, ranked.to(tl.int64), mask=ranks < k)


@triton.jit
def _gather_tokens_kernel(X, Idx, Out, N, C, k, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (b, chunk): x_kept[b, r] = x[b, 0] for r = 0, else x[b, 1 + idx[b, r - 1]]."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    src = tl.load(Idx + b * k + rows - 1, mask=(rows >= 1) & (rows <= k), other=-1) + 1  # [ROWS] token ids
    _copy_rows(X + b * N * C, Out + b * (k + 1) * C, src.to(tl.int64), rows.to(tl.int64), rows <= k, C, BLOCK_C)


@triton.jit
def _gather_tokens_backward_kernel(G, Idx, Out, N, C, k, ROWS: tl.constexpr, K_STEP: tl.constexpr,
                                   BLOCK_C: tl.constexpr):
    """Program (b, chunk): grad_x[b, n] for n in [chunk * ROWS, +ROWS): the kept row holding n, else zeros."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # [ROWS] token ids in x
    src = tl.zeros([ROWS], tl.int32)  # kept row of token n, 0 if dropped (indices are unique)
    for r0 in range(0, k, K_STEP):
        ranks = r0 + tl.arange(0, K_STEP)
        idx = tl.load(Idx + b * k + ranks, mask=ranks < k, other=-2)  # [K_STEP] kept patch ids
        match = (idx[None, :] + 1) == rows[:, None]  # [ROWS, K_STEP]
        src += tl.sum(tl.where(match, ranks[None, :] + 1, 0), 1)
    has_src = (src > 0) | (rows == 0)
    G += b * (k + 1) * C
    Out += b * N * C
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c[None, :] < C
        vals = tl.load(G + src[:, None].to(tl.int64) * C + offs_c[None, :], mask=has_src[:, None] & c_ok, other=0.0)
        tl.store(Out + rows[:, None].to(tl.int64) * C + offs_c[None, :], vals, mask=(rows[:, None] < N) & c_ok)


# ----------------------------------------------------------------------------------------------------------------
# Wrappers (the triton backend calls these)
# ----------------------------------------------------------------------------------------------------------------
def _tiles(num_rows: int, channels: int, rows: int | None, block_c: int | None) -> tuple[int, int]:
    """(ROWS, BLOCK_C): fixed on GPU, one chunk per sample on the interpreter, unless a test asks for others."""
    if INTERPRET:
        default = min(_INTERPRET_ROWS, pow2_at_least(num_rows, 2)), min(_INTERPRET_BLOCK_C, pow2_at_least(channels, 2))
    else:
        default = _ROWS, _BLOCK_C
    return rows or default[0], block_c or default[1]


def _sort_width(num_scores: int) -> int:
    return pow2_at_least(num_scores, 2)


def _warps(block_s: int) -> int:
    return 4 if block_s <= 1024 else 8  # 8 warps keep the in-register sort of more than 1024 keys from spilling


def prune_tokens_forward(x, score, k: int, rows: int | None = None, block_c: int | None = None):
    """Fused top-k + gather in one launch for the whole batch.

    Args:
        x: [B, N, C] tokens (CLS at 0); score: [B, N-1] fp32/fp16/bf16; k: kept patch tokens, 1 <= k <= N-1.
        rows, block_c: tile overrides (tests).

    Returns:
        (x_kept [B, k+1, C], idx [B, k] int64), idx in descending score, lower index first on ties.
        Above FUSED_MAX_K kept tokens: ``keep_topk`` then ``gather_tokens`` (two launches), same results.
    """
    if k > FUSED_MAX_K:
        idx = keep_topk(score, k)
        return gather_tokens(x, idx, rows, block_c), idx
    x, score = x.contiguous(), score.contiguous()
    batch, tokens, channels = x.shape
    block_s = _sort_width(tokens - 1)
    rows, block_c = _tiles(k + 1, channels, rows, block_c)
    out = torch.empty((batch, k + 1, channels), device=x.device, dtype=x.dtype)
    idx = torch.empty((batch, k), device=x.device, dtype=torch.int64)
    with on_device(x):
        _prune_tokens_kernel[(batch, triton.cdiv(k + 1, rows))](
            x, score, out, idx, tokens, channels, k, BLOCK_S=block_s, K_BLOCK=_sort_width(k), ROWS=rows,
            BLOCK_C=block_c, GATHER=True, num_warps=_warps(block_s))
    return out, idx


def keep_topk(score, k: int):
    """idx [B, k] int64 of the k best scores per row of score [B, M] (descending, lower index on ties)."""
    score = score.contiguous()
    batch, num = score.shape
    block_s = _sort_width(num)
    idx = torch.empty((batch, k), device=score.device, dtype=torch.int64)
    with on_device(score):
        _prune_tokens_kernel[(batch, 1)](score, score, score, idx, num + 1, 1, k, BLOCK_S=block_s,
                                         K_BLOCK=_sort_width(k), ROWS=1, BLOCK_C=16, GATHER=False,
                                         num_warps=_warps(block_s))
    return idx


def gather_tokens(x, idx, rows: int | None = None, block_c: int | None = None):
    """x_kept [B, k+1, C] = [x[:, :1], x[b, 1 + idx[b]]] for x [B, N, C] and idx [B, k] int64."""
    x, idx = x.contiguous(), idx.long().contiguous()
    batch, tokens, channels = x.shape
    k = idx.shape[1]
    rows, block_c = _tiles(k + 1, channels, rows, block_c)
    out = torch.empty((batch, k + 1, channels), device=x.device, dtype=x.dtype)
    with on_device(x):
        _gather_tokens_kernel[(batch, triton.cdiv(k + 1, rows))](
            x, idx, out, tokens, channels, k, ROWS=rows, BLOCK_C=block_c)
    return out


def gather_tokens_backward(grad_kept, idx, num_tokens: int, rows: int | None = None, block_c: int | None = None,
                           k_step: int | None = None):
    """grad_x [B, N, C]: grad_kept [B, k+1, C] stored back at CLS and the tokens 1 + idx, zeros elsewhere."""
    grad_kept, idx = grad_kept.contiguous(), idx.long().contiguous()
    batch, _, channels = grad_kept.shape
    k = idx.shape[1]
    rows, block_c = _tiles(num_tokens, channels, rows, block_c)
    k_step = k_step or min(_K_STEP if not INTERPRET else 1024, pow2_at_least(k, 2))
    out = torch.empty((batch, num_tokens, channels), device=grad_kept.device, dtype=grad_kept.dtype)
    with on_device(grad_kept):
        _gather_tokens_backward_kernel[(batch, triton.cdiv(num_tokens, rows))](
            grad_kept, idx, out, num_tokens, channels, k, ROWS=rows, K_STEP=k_step,
            BLOCK_C=block_c)
    return out
