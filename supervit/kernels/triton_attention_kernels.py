"""Triton kernels of ``attention``: a flash-style forward that also yields the CLS score, and its backward.

The wrappers that launch them (tiles, autotuning, padding) are in ``triton_attention.py``.

Layout: q, k, v, grad_out and out are [B, H, N, D] tensors with a unit last-dim stride, read through their other
strides (the models pass q, k, v as views of the fused qkv projection and out token-major, [B, N, H, D] in
memory; neither is copied). The kernels write out token-major and dq, dk, dv contiguous. A flat grid runs over
(b * H + h, row block). Logits live in the log2 domain (q.k * scale * log2(e)) so the kernels use exp2; ``lse``
is stored in natural-log units, as the reference backend stores it, so forward and backward of different backends
stay interchangeable.

CLS score without the N x N matrix: before its main loop, the forward program that owns query row 0 computes that
row's raw logits from q[0] and K (one fp32 row per head, [B, H, N]); its registers are free again before the
online-softmax loop starts, so the score costs the main loop no registers or shared memory. A tiny second kernel
turns the row into ``mean_h exp(s - lse)`` over the patch keys once the final lse is known (a deterministic sum
over heads, no atomics).

Backward: ``delta = rowsum(dO * O)``; for the CLS row, the score gradient adds ``grad_score[j-1] / H`` to dP at
key columns j >= 1, so delta of row 0 also gets ``sum_j P0j grad_score / H``. One launch then computes dK, dV
(program = key block, loop over query blocks). When the whole sequence fits in one key block (N <= BLOCK_BIG)
that program also owns every dQ row and writes dQ = dS K inside the same loop (5 matmuls per tile, as
FlashAttention-2); otherwise it then computes dQ of its query block in a second loop over key blocks (7 matmuls).
Every output is written by exactly one program: no atomics, deterministic.

Head dims that are not a power of two (or below 16) are zero-padded by the wrappers; the kernels themselves
take a power-of-two HEAD_DIM in [16, 256].
"""
from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by the kernels
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _block_and_head(N, BLOCK: tl.constexpr):
    """(row block, b*H+h) of this program on a flat grid: the blocks of one head run next to each other (their
    K/V stay in L2) and B*H is not bounded by the 65535 limit of a second grid axis."""
    pid = tl.program_id(0)
    num_blocks = tl.cdiv(N, BLOCK)
    return pid % num_blocks, (pid // num_blocks).to(tl.int64)


@triton.jit
def _head(P, bh, H, s_b, s_h):
    """Pointer to head b*H+h of a [B, H, N, D] tensor with batch / head strides s_b, s_h."""
    return P + (bh // H) * s_b + (bh % H) * s_h


@triton.jit
def _load_rows(P, offs, offs_d, s_n, N, MASK: tl.constexpr):
    """[len(offs), D] rows ``offs`` of one head (row stride s_n); rows >= N read as 0 when MASK."""
    ptrs = P + offs[:, None] * s_n + offs_d[None, :]
    if MASK:
        return tl.load(ptrs, mask=offs[:, None] < N, other=0.0)
    return tl.load(ptrs)


@triton.jit
def _cls_logits(q0, K, start, offs_d, N, sk_n, qk_scale, BLOCK_N: tl.constexpr):
    """(s0 [BLOCK_N] fp32 log2 logits q[0].k_j * scale of keys j in [start, +BLOCK_N), key ids [BLOCK_N])."""
    offs_n = start + tl.arange(0, BLOCK_N)
    k = _load_rows(K, offs_n, offs_d, sk_n, N, True).to(tl.float32)  # [BLOCK_N, D]
    return tl.sum(k * q0[None, :], 1) * qk_scale, offs_n


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_block(acc, m_i, l_i, q, K, V, start, offs_d, N, sk_n, sv_n, qk_scale,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key block of the online softmax; returns the updated (acc, m_i, l_i)."""
    offs_n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key ids
    k = _load_rows(K, offs_n, offs_d, sk_n, N, MASK)  # [BLOCK_N, D]
    v = _load_rows(V, offs_n, offs_d, sv_n, N, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # [BLOCK_M, BLOCK_N] log2 logits
    if MASK:
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # [BLOCK_M]
    p = tl.math.exp2(s - m_new[:, None])  # [BLOCK_M, BLOCK_N]
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)  # [BLOCK_M, D]
    return acc, m_new, l_i


@triton.jit
def _attention_fwd_kernel(Q, K, V, Out, Lse, S0, N, N_BUCKET, qk_scale, H,
                          sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          STORE_S0: tl.constexpr, DOT_PREC: tl.constexpr):
    """out = softmax(q k^T * scale) v for one (query block, b*H+h); writes out, lse and (opt.) row-0 logits."""
    pid_m, bh = _block_and_head(N, BLOCK_M)
    Q = _head(Q, bh, H, sq_b, sq_h)
    K = _head(K, bh, H, sk_b, sk_h)
    V = _head(V, bh, H, sv_b, sv_h)
    offs_d = tl.arange(0, HEAD_DIM)
    if STORE_S0:
        if pid_m == 0:  # this program owns the CLS query row: its raw logits for the score pass
            q0 = tl.load(Q + offs_d).to(tl.float32)  # [D]
            for start in range(0, N, BLOCK_N):
                s0, offs_n = _cls_logits(q0, K, start, offs_d, N, sk_n, qk_scale, BLOCK_N)
                tl.store(S0 + bh * N + offs_n, s0, mask=offs_n < N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] query ids
    row_ok = offs_m < N
    q = _load_rows(Q, offs_m, offs_d, sq_n, N, True)  # [BLOCK_M, D]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = N - N % BLOCK_N
    for start in range(0, n_full, BLOCK_N):  # full key blocks: no masks
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K, V, start, offs_d, N, sk_n, sv_n, qk_scale,
                                   BLOCK_N, False, DOT_PREC)
    if n_full < N:  # the ragged tail
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K, V, n_full, offs_d, N, sk_n, sv_n, qk_scale,
                                   BLOCK_N, True, DOT_PREC)
    out = acc / l_i[:, None]
    Out = _head(Out, bh, H, so_b, so_h)
    tl.store(Out + offs_m[:, None] * so_n + offs_d[None, :], out.to(Out.dtype.element_ty), mask=row_ok[:, None])
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
def _bwd_delta_kernel(O, DO, Q, K, Lse, GS, Delta, N, H, qk_scale,
                      so_b, so_h, so_n, sd_b, sd_h, sd_n, sq_b, sq_h, sk_b, sk_h, sk_n,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_GS: tl.constexpr):
    """delta = rowsum(dO * O); row 0 also gets sum_j P0j * grad_score[j-1] / H when the score has a gradient."""
    pid_m, bh = _block_and_head(N, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(_head(O, bh, H, so_b, so_h), offs_m, offs_d, so_n, N, True).to(tl.float32)  # [BLOCK_M, D]
    do = _load_rows(_head(DO, bh, H, sd_b, sd_h), offs_m, offs_d, sd_n, N, True).to(tl.float32)
    delta = tl.sum(o * do, 1)  # [BLOCK_M]
    if HAS_GS:
        if pid_m == 0:
            q0 = tl.load(_head(Q, bh, H, sq_b, sq_h) + offs_d).to(tl.float32)  # [D] the CLS query
            K = _head(K, bh, H, sk_b, sk_h)
            GS += (bh // H) * (N - 1) - 1  # GS[j] = grad_score[b, j - 1] for key id j >= 1
            lse2 = tl.load(Lse + bh * N) * _LOG2E
            extra = tl.zeros([BLOCK_N], tl.float32)
            for start in range(0, N, BLOCK_N):
                s0, offs_n = _cls_logits(q0, K, start, offs_d, N, sk_n, qk_scale, BLOCK_N)
                g = tl.load(GS + offs_n, mask=(offs_n >= 1) & (offs_n < N), other=0.0)
                extra += tl.math.exp2(s0 - lse2) * g  # P[0, j] * grad_score[j - 1]
            delta = tl.where(offs_m == 0, delta + tl.sum(extra, 0) / H, delta)
    tl.store(Delta + bh * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _dkdv_block(dk, dv, k, v, gs_k, Q, DO, Lse, Delta, start, offs_d, N, sq_n, sd_n, qk_scale,
                BLOCK_Q: tl.constexpr, MASK: tl.constexpr, HAS_GS: tl.constexpr, DOT_PREC: tl.constexpr):
    """Contribution of query block [start, +BLOCK_Q) to dK, dV of one key block (kept transposed: [keys, queries]).

    Returns (dk, dv, ds_t): ds_t [BIG, SMALL] = dS^T of this tile (unscaled), for the one-key-block dQ."""
    offs_q = start + tl.arange(0, BLOCK_Q)  # [SMALL] query ids
    q = _load_rows(Q, offs_q, offs_d, sq_n, N, MASK)  # [SMALL, D]
    do = _load_rows(DO, offs_q, offs_d, sd_n, N, MASK)
    if MASK:
        q_ok = offs_q < N
        lse2 = tl.load(Lse + offs_q, mask=q_ok, other=float("inf")) * _LOG2E  # padded rows -> P = 0
        delta = tl.load(Delta + offs_q, mask=q_ok, other=0.0)
    else:
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
    return dk, dv, ds_t


@triton.jit
def _dq_block(dq, q, do, lse2, delta, offs_q, K, V, GS, start, offs_d, N, sk_n, sv_n, qk_scale, inv_h, first_rows,
              BLOCK_K: tl.constexpr, MASK: tl.constexpr, HAS_GS: tl.constexpr, DOT_PREC: tl.constexpr):
    """Contribution of key block [start, +BLOCK_K) to dQ of one query block."""
    offs_n = start + tl.arange(0, BLOCK_K)  # [SMALL] key ids
    kb = _load_rows(K, offs_n, offs_d, sk_n, N, MASK)  # [SMALL, D]
    vb = _load_rows(V, offs_n, offs_d, sv_n, N, MASK)
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


# A separate compiled variant for one key block: the fused dQ path would otherwise hold its registers in every
# launch. Within one autotune bucket of N it is fixed per config (N <= BLOCK_BIG iff BLOCK_BIG >= the bucket).
@triton.heuristics({"ONE_KEY_BLOCK": lambda args: args["N"] <= args["BLOCK_BIG"]})
@triton.jit
def _attention_bwd_kernel(Q, K, V, DO, DQ, DK, DV, Lse, Delta, GS, N, N_BUCKET, H, scale, qk_scale,
                          sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sd_b, sd_h, sd_n,
                          HEAD_DIM: tl.constexpr, BLOCK_SMALL: tl.constexpr, BLOCK_BIG: tl.constexpr,
                          HAS_GS: tl.constexpr, DOT_PREC: tl.constexpr, ONE_KEY_BLOCK: tl.constexpr):
    """Program (i, b*H+h): dK, dV of key block i (loop over query blocks), and dQ: in the same loop when key
    block 0 is the whole sequence (ONE_KEY_BLOCK), else of query block i in a second loop over key blocks."""
    pid, bh = _block_and_head(N, BLOCK_BIG)
    Q = _head(Q, bh, H, sq_b, sq_h)
    K = _head(K, bh, H, sk_b, sk_h)
    V = _head(V, bh, H, sv_b, sv_h)
    DO = _head(DO, bh, H, sd_b, sd_h)
    out_base = bh * N * HEAD_DIM  # dq, dk, dv are contiguous
    Lse += bh * N
    Delta += bh * N
    GS += (bh // H) * (N - 1) - 1  # GS[j] = grad_score[b, j - 1] for key id j >= 1
    offs_d = tl.arange(0, HEAD_DIM)
    inv_h = 1.0 / H
    n_full = N - N % BLOCK_SMALL

    # ---- dK, dV of the key block [pid * BLOCK_BIG, +BLOCK_BIG) (and all of dQ when it is the only block) ----
    offs_k = pid * BLOCK_BIG + tl.arange(0, BLOCK_BIG)  # [BIG] key ids
    k_ok = offs_k < N
    k = _load_rows(K, offs_k, offs_d, sk_n, N, True)  # [BIG, D]
    v = _load_rows(V, offs_k, offs_d, sv_n, N, True)
    dk = tl.zeros([BLOCK_BIG, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_BIG, HEAD_DIM], tl.float32)
    gs_k = tl.zeros([BLOCK_BIG], tl.float32)
    if HAS_GS:
        gs_k = tl.load(GS + offs_k, mask=(offs_k >= 1) & k_ok, other=0.0) * inv_h  # [BIG]
    for start in range(0, n_full, BLOCK_SMALL):
        dk, dv, ds_t = _dkdv_block(dk, dv, k, v, gs_k, Q, DO, Lse, Delta, start, offs_d, N, sq_n, sd_n, qk_scale,
                                   BLOCK_SMALL, False, HAS_GS, DOT_PREC)
        if ONE_KEY_BLOCK:  # padded key rows of k are 0: they add nothing to dQ = dS K
            dq_rows = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PREC)  # [SMALL, D]
            offs_q = start + tl.arange(0, BLOCK_SMALL)
            tl.store(DQ + out_base + offs_q[:, None] * HEAD_DIM + offs_d[None, :],
                     (dq_rows * scale).to(DQ.dtype.element_ty))
    if n_full < N:
        dk, dv, ds_t = _dkdv_block(dk, dv, k, v, gs_k, Q, DO, Lse, Delta, n_full, offs_d, N, sq_n, sd_n, qk_scale,
                                   BLOCK_SMALL, True, HAS_GS, DOT_PREC)
        if ONE_KEY_BLOCK:
            dq_rows = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PREC)
            offs_q = n_full + tl.arange(0, BLOCK_SMALL)
            tl.store(DQ + out_base + offs_q[:, None] * HEAD_DIM + offs_d[None, :],
                     (dq_rows * scale).to(DQ.dtype.element_ty), mask=offs_q[:, None] < N)
    kv_off = out_base + offs_k[:, None] * HEAD_DIM + offs_d[None, :]  # [BIG, D]
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=k_ok[:, None])
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=k_ok[:, None])

    # ---- dQ of the query block [pid * BLOCK_BIG, +BLOCK_BIG) when there are several key blocks ----
    if not ONE_KEY_BLOCK:
        offs_q = pid * BLOCK_BIG + tl.arange(0, BLOCK_BIG)  # [BIG] query ids
        q_ok = offs_q < N
        q = _load_rows(Q, offs_q, offs_d, sq_n, N, True)
        do = _load_rows(DO, offs_q, offs_d, sd_n, N, True)
        lse2 = tl.load(Lse + offs_q, mask=q_ok, other=float("inf")) * _LOG2E  # padded rows -> P = 0
        delta = tl.load(Delta + offs_q, mask=q_ok, other=0.0)
        dq = tl.zeros([BLOCK_BIG, HEAD_DIM], tl.float32)
        first_rows = pid == 0
        for start in range(0, n_full, BLOCK_SMALL):
            dq = _dq_block(dq, q, do, lse2, delta, offs_q, K, V, GS, start, offs_d, N, sk_n, sv_n, qk_scale, inv_h,
                           first_rows, BLOCK_SMALL, False, HAS_GS, DOT_PREC)
        if n_full < N:
            dq = _dq_block(dq, q, do, lse2, delta, offs_q, K, V, GS, n_full, offs_d, N, sk_n, sv_n, qk_scale, inv_h,
                           first_rows, BLOCK_SMALL, True, HAS_GS, DOT_PREC)
        tl.store(DQ + out_base + offs_q[:, None] * HEAD_DIM + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=q_ok[:, None])
