"""Triton kernels of the fused attention: a flash-style forward that also yields the CLS score, and its backward.

Layout: q, k, v are contiguous [B, H, N, D]; out is [B, H, N, D] stored token-major ([B, N, H, D] contiguous, as
every backend returns it, so that merging heads is a free view); the kernels address out through its strides. A
flat grid runs over (b * H + h, row block). Logits live in the log2 domain (q.k * scale * log2(e)) so the kernels
use exp2; ``lse`` is stored in natural-log units, as the reference backend stores it, so forward and backward of
different backends stay interchangeable.

CLS score without the N x N matrix: the forward program that owns query row 0 stores that row's raw logits
(one fp32 row per head, [B, H, N]); a tiny second kernel turns them into ``mean_h exp(s - lse)`` over the
patch keys once the final lse is known (a deterministic sum over heads, no atomics).

Backward (standard flash backward): ``delta = rowsum(dO * O)``; for the CLS row, the score gradient adds
``grad_score[j-1] / H`` to dP at key columns j >= 1, so delta of row 0 also gets ``sum_j P0j grad_score / H``.
One launch then computes dK, dV (program = key block, loop over query blocks) and dQ (program = query block,
loop over key blocks): every output is written by exactly one program, no atomics.

Head dims that are not a power of two (or below 16) are zero-padded by the wrappers; the kernels themselves
take a power-of-two HEAD_DIM in [16, 256].
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .reference import empty_token_major, token_major

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 256
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _block_and_head(N, BLOCK: tl.constexpr):
    """(row block, b*H+h) of this program on a flat grid: the blocks of one head run next to each other (their
    K/V stay in L2) and B*H is not bounded by the 65535 limit of a second grid axis."""
    pid = tl.program_id(0)
    num_blocks = tl.cdiv(N, BLOCK)
    return pid % num_blocks, (pid // num_blocks).to(tl.int64)


@triton.jit
def _out_rows(bh, offs_m, offs_d, H, so_b, so_h, so_n):
    """[BLOCK_M, D] offsets of rows ``offs_m`` of head b*H+h in ``out``, addressed through its strides."""
    return (bh // H) * so_b + (bh % H) * so_h + offs_m[:, None] * so_n + offs_d[None, :]


@triton.jit
def _fwd_block(acc, m_i, l_i, q, K, V, S0, start, offs_d, N, qk_scale, first_rows,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASK: tl.constexpr, STORE_S0: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key block of the online softmax; returns the updated (acc, m_i, l_i)."""
    offs_n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key ids
    kv_off = offs_n[:, None] * HEAD_DIM + offs_d[None, :]  # [BLOCK_N, D]
    if MASK:
        k = tl.load(K + kv_off, mask=offs_n[:, None] < N, other=0.0)
        v = tl.load(V + kv_off, mask=offs_n[:, None] < N, other=0.0)
    else:
        k = tl.load(K + kv_off)
        v = tl.load(V + kv_off)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # [BLOCK_M, BLOCK_N] log2 logits
    if MASK:
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))
    if STORE_S0:
        if first_rows:  # this program owns the CLS query row: keep its raw logits for the score pass
            rows = tl.arange(0, BLOCK_M)[:, None]  # [BLOCK_M, 1]
            tl.store(S0 + offs_n[None, :] + rows * 0, s, mask=(rows == 0) & (offs_n[None, :] < N))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # [BLOCK_M]
    p = tl.math.exp2(s - m_new[:, None])  # [BLOCK_M, BLOCK_N]
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)  # [BLOCK_M, D]
    return acc, m_new, l_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, Out, Lse, S0, N, N_BUCKET, qk_scale, H, so_b, so_h, so_n,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     STORE_S0: tl.constexpr, DOT_PREC: tl.constexpr):
    """out = softmax(q k^T * scale) v for one (query block, b*H+h); writes out, lse and (opt.) row-0 logits."""
    pid_m, bh = _block_and_head(N, BLOCK_M)
    base = bh * N * HEAD_DIM
    Q += base
    K += base
    V += base
    S0 += bh * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] query ids
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q_off = offs_m[:, None] * HEAD_DIM + offs_d[None, :]  # [BLOCK_M, D]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    first_rows = pid_m == 0
    n_full = N - N % BLOCK_N
    for start in range(0, n_full, BLOCK_N):  # full key blocks: no masks
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K, V, S0, start, offs_d, N, qk_scale, first_rows,
                                   BLOCK_M, BLOCK_N, HEAD_DIM, False, STORE_S0, DOT_PREC)
    if n_full < N:  # the ragged tail
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K, V, S0, n_full, offs_d, N, qk_scale, first_rows,
                                   BLOCK_M, BLOCK_N, HEAD_DIM, True, STORE_S0, DOT_PREC)
    out = acc / l_i[:, None]
    o_off = _out_rows(bh, offs_m, offs_d, H, so_b, so_h, so_n)  # [BLOCK_M, D]
    tl.store(Out + o_off, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + bh * N + offs_m, (m_i + tl.math.log2(l_i)) * _LN2, mask=row_ok)


@triton.jit
def _cls_score_kernel(S0, Lse, Score, N, H, BLOCK: tl.constexpr):
    """score[b, j] = mean_h exp(s0[b, h, 1 + j] - lse[b, h, 0]) for a block of patch keys j."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] patch ids (key id - 1)
    ok = offs < N - 1
    acc = tl.zeros([BLOCK], tl.float32)
    for h in range(H):
        row = (b * H + h) * N
        lse2 = tl.load(Lse + row) * _LOG2E
        s = tl.load(S0 + row + 1 + offs, mask=ok, other=float("-inf"))
        acc += tl.math.exp2(s - lse2)
    tl.store(Score + b * (N - 1) + offs, acc / H, mask=ok)


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(O, DO, Q, K, Lse, GS, Delta, N, H, qk_scale, so_b, so_h, so_n,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_GS: tl.constexpr):
    """delta = rowsum(dO * O); row 0 also gets sum_j P0j * grad_score[j-1] / H when the score has a gradient."""
    pid_m, bh = _block_and_head(N, BLOCK_M)
    base = bh * N * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    off = base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]  # [BLOCK_M, D]
    o_off = _out_rows(bh, offs_m, offs_d, H, so_b, so_h, so_n)  # out through its strides
    o = tl.load(O + o_off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)  # [BLOCK_M]
    if HAS_GS:
        if pid_m == 0:
            b = bh // H
            q0 = tl.load(Q + base + offs_d).to(tl.float32)  # [D] the CLS query
            lse2 = tl.load(Lse + bh * N) * _LOG2E
            extra = tl.zeros([BLOCK_N], tl.float32)
            for start in range(0, N, BLOCK_N):
                offs_n = start + tl.arange(0, BLOCK_N)
                kt = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :],
                             mask=offs_n[:, None] < N, other=0.0).to(tl.float32)  # [BLOCK_N, D]
                p0 = tl.math.exp2(tl.sum(kt * q0[None, :], 1) * qk_scale - lse2)  # [BLOCK_N] P[0, j]
                g = tl.load(GS + b * (N - 1) + offs_n - 1, mask=(offs_n >= 1) & (offs_n < N), other=0.0)
                extra += p0 * g
            delta = tl.where(offs_m == 0, delta + tl.sum(extra, 0) / H, delta)
    tl.store(Delta + bh * N + offs_m, delta, mask=row_ok)


@triton.jit
def _dkdv_block(dk, dv, k, v, gs_k, Q, DO, Lse, Delta, start, offs_d, N, qk_scale,
                BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, HAS_GS: tl.constexpr,
                DOT_PREC: tl.constexpr):
    """Contribution of query block [start, +BLOCK_Q) to dK, dV of one key block (kept transposed: [keys, queries])."""
    offs_q = start + tl.arange(0, BLOCK_Q)  # [SMALL] query ids
    q_off = offs_q[:, None] * HEAD_DIM + offs_d[None, :]  # [SMALL, D]
    if MASK:
        q_ok = offs_q < N
        q = tl.load(Q + q_off, mask=q_ok[:, None], other=0.0)
        do = tl.load(DO + q_off, mask=q_ok[:, None], other=0.0)
        lse2 = tl.load(Lse + offs_q, mask=q_ok, other=float("inf")) * _LOG2E  # padded rows -> P = 0
        delta = tl.load(Delta + offs_q, mask=q_ok, other=0.0)
    else:
        q = tl.load(Q + q_off)
        do = tl.load(DO + q_off)
        lse2 = tl.load(Lse + offs_q) * _LOG2E
        delta = tl.load(Delta + offs_q)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # [BIG, SMALL] = S^T
    p_t = tl.math.exp2(s_t - lse2[None, :])
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # [BIG, SMALL] = dP^T
    if HAS_GS:
        if start == 0:  # the CLS query row: dP[0, j] += grad_score[j - 1] / H
            dp_t += tl.where(offs_q[None, :] == 0, gs_k[:, None], 0.0)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _dq_block(dq, q, do, lse2, delta, offs_q, K, V, GS, start, offs_d, N, qk_scale, inv_h, first_rows,
              BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, HAS_GS: tl.constexpr,
              DOT_PREC: tl.constexpr):
    """Contribution of key block [start, +BLOCK_K) to dQ of one query block."""
    offs_n = start + tl.arange(0, BLOCK_K)  # [SMALL] key ids
    kv_off = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    if MASK:
        kb = tl.load(K + kv_off, mask=offs_n[:, None] < N, other=0.0)
        vb = tl.load(V + kv_off, mask=offs_n[:, None] < N, other=0.0)
    else:
        kb = tl.load(K + kv_off)
        vb = tl.load(V + kv_off)
    s = tl.dot(q, tl.trans(kb), input_precision=DOT_PREC) * qk_scale  # [BIG, SMALL]
    if MASK:
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))
    p = tl.math.exp2(s - lse2[:, None])
    dp = tl.dot(do, tl.trans(vb), input_precision=DOT_PREC)  # [BIG, SMALL]
    if HAS_GS:
        if first_rows:  # this block holds the CLS query row
            gs_n = tl.load(GS + offs_n, mask=(offs_n >= 1) & (offs_n < N), other=0.0) * inv_h  # [SMALL]
            dp += tl.where(offs_q[:, None] == 0, gs_n[None, :], 0.0)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(kb.dtype), kb, input_precision=DOT_PREC)
    return dq


@triton.jit
def _attn_bwd_kernel(Q, K, V, DO, DQ, DK, DV, Lse, Delta, GS, N, N_BUCKET, H, scale, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_SMALL: tl.constexpr, BLOCK_BIG: tl.constexpr,
                     HAS_GS: tl.constexpr, DOT_PREC: tl.constexpr):
    """Program (i, b*H+h): dK, dV of key block i (loop over query blocks), then dQ of query block i."""
    pid, bh = _block_and_head(N, BLOCK_BIG)
    b = bh // H
    base = bh * N * HEAD_DIM
    Q += base
    K += base
    V += base
    DO += base
    Lse += bh * N
    Delta += bh * N
    GS += b * (N - 1) - 1  # GS[j] = grad_score[b, j - 1] for key id j >= 1
    offs_d = tl.arange(0, HEAD_DIM)
    inv_h = 1.0 / H
    n_full = N - N % BLOCK_SMALL

    # ---- dK, dV of the key block [pid * BLOCK_BIG, +BLOCK_BIG) ----
    offs_k = pid * BLOCK_BIG + tl.arange(0, BLOCK_BIG)  # [BIG] key ids
    k_ok = offs_k < N
    kv_off = offs_k[:, None] * HEAD_DIM + offs_d[None, :]  # [BIG, D]
    k = tl.load(K + kv_off, mask=k_ok[:, None], other=0.0)
    v = tl.load(V + kv_off, mask=k_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_BIG, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_BIG, HEAD_DIM], tl.float32)
    gs_k = tl.zeros([BLOCK_BIG], tl.float32)
    if HAS_GS:
        gs_k = tl.load(GS + offs_k, mask=(offs_k >= 1) & k_ok, other=0.0) * inv_h  # [BIG]
    for start in range(0, n_full, BLOCK_SMALL):
        dk, dv = _dkdv_block(dk, dv, k, v, gs_k, Q, DO, Lse, Delta, start, offs_d, N, qk_scale,
                             BLOCK_SMALL, HEAD_DIM, False, HAS_GS, DOT_PREC)
    if n_full < N:
        dk, dv = _dkdv_block(dk, dv, k, v, gs_k, Q, DO, Lse, Delta, n_full, offs_d, N, qk_scale,
                             BLOCK_SMALL, HEAD_DIM, True, HAS_GS, DOT_PREC)
    tl.store(DK + base + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=k_ok[:, None])
    tl.store(DV + base + kv_off, dv.to(DV.dtype.element_ty), mask=k_ok[:, None])

    # ---- dQ of the query block [pid * BLOCK_BIG, +BLOCK_BIG) ----
    offs_q = pid * BLOCK_BIG + tl.arange(0, BLOCK_BIG)  # [BIG] query ids
    q_ok = offs_q < N
    q_off = offs_q[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_off, mask=q_ok[:, None], other=0.0)
    do = tl.load(DO + q_off, mask=q_ok[:, None], other=0.0)
    lse2 = tl.load(Lse + offs_q, mask=q_ok, other=float("inf")) * _LOG2E  # padded rows -> P = 0
    delta = tl.load(Delta + offs_q, mask=q_ok, other=0.0)
    dq = tl.zeros([BLOCK_BIG, HEAD_DIM], tl.float32)
    first_rows = pid == 0
    for start in range(0, n_full, BLOCK_SMALL):
        dq = _dq_block(dq, q, do, lse2, delta, offs_q, K, V, GS, start, offs_d, N, qk_scale, inv_h, first_rows,
                       BLOCK_SMALL, HEAD_DIM, False, HAS_GS, DOT_PREC)
    if n_full < N:
        dq = _dq_block(dq, q, do, lse2, delta, offs_q, K, V, GS, n_full, offs_d, N, qk_scale, inv_h, first_rows,
                       BLOCK_SMALL, HEAD_DIM, True, HAS_GS, DOT_PREC)
    tl.store(DQ + base + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=q_ok[:, None])


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration: autotuned on GPU (keyed on the power-of-two bucket of N), one big tile under the
# interpreter (each program instance costs about a millisecond there).
# ----------------------------------------------------------------------------------------------------------------
def _bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _prune_by_length(configs, named_args, **_):
    """Drop tiles far larger than the sequence (keep at least one config)."""
    limit = max(32, named_args["N_BUCKET"])
    kept = [c for c in configs if max(v for n, v in c.kwargs.items() if n.startswith("BLOCK")) <= limit]
    return kept or configs[-1:]


# (block, block, warps, stages) per (kind, head dim). Chosen from an ahead-of-time sm_90 compile sweep so that no
# config spills registers (or spills least); which one is fastest is left to the autotuner. "ieee" = fp32 inputs
# with exact fp32 products, whose FMA-based dots need small tiles.
_FWD_TABLE = {
    ("mma", 64): ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2)),
    ("mma", 128): ((128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 3), (32, 32, 4, 2)),
    ("mma", 256): ((64, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2), (16, 16, 8, 2)),
    ("ieee", 64): ((32, 16, 4, 2), (64, 16, 8, 2), (16, 16, 8, 2)),
    ("ieee", 256): ((16, 16, 8, 2),),
}
_BWD_TABLE = {
    ("mma", 64): ((32, 128, 8, 3), (64, 64, 8, 3), (32, 64, 8, 3), (16, 64, 8, 3), (32, 32, 4, 3), (16, 32, 4, 2)),
    ("mma", 128): ((32, 32, 8, 3), (16, 32, 8, 2), (16, 64, 8, 3), (64, 64, 8, 3)),
    ("mma", 256): ((16, 16, 8, 2),),
    ("ieee", 256): ((16, 16, 8, 2), (16, 32, 8, 2)),
}
_tuned_kernels: dict = {}


def _tuned(kind: str, head_dim: int, backward: bool):
    """The autotuned fwd/bwd kernel for fp32-exact ("ieee") or tensor-core ("mma") dots at this head dim."""
    table = _BWD_TABLE if backward else _FWD_TABLE
    dims = sorted(d for k, d in table if k == kind)
    dim = next((d for d in dims if d >= head_dim), dims[-1])  # the row for the smallest listed dim >= head_dim
    key = (kind, dim, backward)
    if key not in _tuned_kernels:
        names = ("BLOCK_SMALL", "BLOCK_BIG") if backward else ("BLOCK_M", "BLOCK_N")
        configs = [triton.Config(dict(zip(names, (a, b))), num_warps=w, num_stages=st)
                   for a, b, w, st in table[(kind, dim)]]
        kernel = _attn_bwd_kernel if backward else _attn_fwd_kernel
        tune_key = ["N_BUCKET", "HEAD_DIM", "HAS_GS" if backward else "STORE_S0"]
        _tuned_kernels[key] = triton.autotune(configs, key=tune_key,
                                              prune_configs_by={"early_config_prune": _prune_by_length})(kernel)
    return _tuned_kernels[key]


def _interp_block(n: int) -> int:
    return min(128, _bucket(n))


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact fp32 products unless the user allowed TF32 for matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _dot_kind(precision: str) -> str:
    return "ieee" if precision == "ieee" else "mma"


def _padded_dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _pad(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t if t.shape[-1] == dim else F.pad(t, (0, dim - t.shape[-1]))


# ----------------------------------------------------------------------------------------------------------------
# Wrappers (the triton backend calls these)
# ----------------------------------------------------------------------------------------------------------------
def attention_fwd(q, k, v, scale: float, return_cls_score: bool, blocks: tuple[int, int] | None = None):
    """Fused attention forward.

    Args:
        q, k, v: [B, H, N, D] contiguous, one dtype (fp32/fp16/bf16), D <= 256.
        scale: logit scale.
        return_cls_score: also compute score [B, N-1] = head-mean softmax row 0 at the patch keys.
        blocks: (BLOCK_M, BLOCK_N) to bypass autotuning (tests); default: autotuned / interpreter tile.

    Returns:
        (out [B, H, N, D] q.dtype, score [B, N-1] fp32 or [B, 0], lse [B, H, N] fp32 natural log).
    """
    batch, heads, tokens, dim = q.shape
    dp = _padded_dim(dim)
    if dp > MAX_HEAD_DIM:
        raise ValueError(f"head dim {dim} is above the Triton kernels' limit {MAX_HEAD_DIM}")
    q, k, v = (_pad(t, dp).contiguous() for t in (q, k, v))
    out = empty_token_major(batch, heads, tokens, dp, q)  # [B, H, N, Dp] token-major
    lse = torch.empty((batch, heads, tokens), device=q.device, dtype=torch.float32)
    s0 = torch.empty_like(lse) if return_cls_score else lse  # [B, H, N] row-0 logits (log2 domain)
    args = (q, k, v, out, lse, s0, tokens, _bucket(tokens), scale * 1.4426950408889634, heads, *out.stride()[:3])
    meta = dict(HEAD_DIM=dp, STORE_S0=return_cls_score, DOT_PREC=_dot_precision(q.dtype))
    if blocks is None and not _INTERPRET:
        grid = lambda m: (triton.cdiv(tokens, m["BLOCK_M"]) * batch * heads,)  # noqa: E731
        _tuned(_dot_kind(meta["DOT_PREC"]), dp, backward=False)[grid](*args, **meta)
    else:
        bm, bn = blocks or (_interp_block(tokens),) * 2
        _attn_fwd_kernel[(triton.cdiv(tokens, bm) * batch * heads,)](*args, BLOCK_M=bm, BLOCK_N=bn, **meta)
    if return_cls_score:
        score = torch.empty((batch, tokens - 1), device=q.device, dtype=torch.float32)
        if tokens > 1:
            block = min(1024, _bucket(tokens - 1))
            _cls_score_kernel[(batch, triton.cdiv(tokens - 1, block))](s0, lse, score, tokens, heads, BLOCK=block)
    else:
        score = torch.empty((batch, 0), device=q.device, dtype=torch.float32)
    if dp != dim:
        out = token_major(out[..., :dim])
    return out, score, lse


def attention_bwd(grad_out, grad_score, q, k, v, out, lse, scale: float, has_score_grad: bool,
                  blocks: tuple[int, int] | None = None):
    """Gradients (dq, dk, dv) of ``attention_fwd`` for upstream grads on out and (optionally) on score.

    Args:
        grad_out, q, k, v, out: [B, H, N, D] (out in any layout with a unit last-dim stride);
        grad_score: [B, N-1] fp32 (read only when ``has_score_grad``); lse: [B, H, N] fp32 from the forward;
        blocks: (BLOCK_SMALL, BLOCK_BIG) to bypass autotuning.
    """
    batch, heads, tokens, dim = q.shape
    dp = _padded_dim(dim)
    q, k, v, grad_out = (_pad(t, dp).contiguous() for t in (q, k, v, grad_out))
    out = _pad(out, dp)
    out = out if out.stride(-1) == 1 else out.contiguous()
    grad_out = grad_out.to(q.dtype)
    lse = lse.contiguous()
    gs = grad_score.contiguous().float() if has_score_grad else lse  # [B, N-1] fp32
    qk_scale = scale * 1.4426950408889634
    delta = torch.empty_like(lse)  # [B, H, N]
    bm = max(16, 4096 // dp) if not _INTERPRET else _interp_block(tokens)  # [BLOCK_M, D] fp32 tiles of o, do
    _bwd_delta_kernel[(triton.cdiv(tokens, bm) * batch * heads,)](
        out, grad_out, q, k, lse, gs, delta, tokens, heads, qk_scale, *out.stride()[:3],
        HEAD_DIM=dp, BLOCK_M=bm, BLOCK_N=max(16, 2048 // dp) if not _INTERPRET else bm, HAS_GS=has_score_grad)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = (q, k, v, grad_out, dq, dk, dv, lse, delta, gs, tokens, _bucket(tokens), heads, scale, qk_scale)
    meta = dict(HEAD_DIM=dp, HAS_GS=has_score_grad, DOT_PREC=_dot_precision(q.dtype))
    if blocks is None and not _INTERPRET:
        grid = lambda m: (triton.cdiv(tokens, m["BLOCK_BIG"]) * batch * heads,)  # noqa: E731
        _tuned(_dot_kind(meta["DOT_PREC"]), dp, backward=True)[grid](*args, **meta)
    else:
        small, big = blocks or (_interp_block(tokens),) * 2
        _attn_bwd_kernel[(triton.cdiv(tokens, big) * batch * heads,)](*args, BLOCK_SMALL=small, BLOCK_BIG=big, **meta)
    if dp != dim:
        dq, dk, dv = (t[..., :dim].contiguous() for t in (dq, dk, dv))
    return dq, dk, dv
