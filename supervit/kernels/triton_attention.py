"""``attention`` on the Triton kernels of ``triton_attention_kernels.py``: launch configuration and wrappers.

The wrappers take [B, H, N, D] tensors with any strides (a non-unit last-dim stride costs a copy), zero-pad head
dims that are not a power of two (or below 16) to the kernels' HEAD_DIM, pick the dot precision (exact fp32
products unless the user allowed TF32) and launch under the tensors' CUDA device. On GPU the two main kernels are
autotuned per power-of-two bucket of N; under the interpreter they run one big tile.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton

from .contract import empty_token_major, token_major
from .triton_attention_kernels import (_LOG2E, _attention_bwd_kernel, _attention_fwd_kernel, _bwd_delta_kernel,
                                       _cls_score_kernel)
from .triton_launch import INTERPRET, configs_for_length, on_device, pow2_at_least, unit_last_dim

MAX_HEAD_DIM = 256
# Tiles of the delta kernel (default 4 warps), in elements of one fp32 [rows, D] tile: 4096 for its o and dO
# tiles (32 registers a thread each), 2048 for the CLS-row key tiles, which sit beside them.
_DELTA_TILE = 4096
_CLS_KEY_TILE = 2048
_INTERPRET_TILE = 128  # one or two big tiles per head under the interpreter (each program costs ~1 ms there)


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration: autotuned on GPU (keyed on the power-of-two bucket of N), one big tile under the
# interpreter.
# ----------------------------------------------------------------------------------------------------------------
# (block, block, warps, stages) per (kind, head dim): (BLOCK_M, BLOCK_N) forward, (BLOCK_SMALL, BLOCK_BIG)
# backward. Chosen from the ahead-of-time sm_90 compile (python tools/triton_aot.py) so that no config
# spills registers; which one is fastest is left to the autotuner. "ieee" = fp32 inputs with exact fp32 products,
# whose FMA-based dots need small tiles. A head dim uses the row of the smallest listed dim >= it.
_FWD_TABLE = {
    ("mma", 64): ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2)),
    ("mma", 128): ((128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 3), (32, 32, 4, 2)),
    ("mma", 256): ((64, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2), (16, 16, 8, 2)),
    ("ieee", 64): ((32, 16, 4, 2), (64, 16, 8, 2), (16, 16, 8, 2)),
    ("ieee", 256): ((16, 16, 8, 2),),
}
_BWD_TABLE = {
    ("mma", 64): ((32, 128, 8, 3), (64, 64, 8, 3), (32, 64, 8, 3), (16, 64, 8, 3), (32, 32, 4, 3), (16, 32, 4, 2),
                  (32, 256, 16, 2), (64, 256, 16, 2)),  # BIG=256: N <= 256 in one key block, 128 registers
    ("mma", 128): ((32, 32, 8, 3), (16, 32, 8, 2), (16, 64, 8, 3), (64, 64, 8, 3)),
    ("mma", 256): ((16, 16, 8, 2),),
    ("ieee", 256): ((16, 16, 8, 2), (16, 32, 8, 2)),
}


@functools.cache
def _tuned(kind: str, head_dim: int, backward: bool):
    """The autotuned fwd/bwd kernel for fp32-exact ("ieee") or tensor-core ("mma") dots at this head dim (the
    table's smallest tuned dim >= it; one lookup per call once seen)."""
    table = _BWD_TABLE if backward else _FWD_TABLE
    dims = sorted(d for k, d in table if k == kind)
    return _autotuned(kind, next((d for d in dims if d >= head_dim), dims[-1]), backward)


@functools.cache
def _autotuned(kind: str, dim: int, backward: bool):
    """One ``triton.autotune`` object per (kind, tuned dim, direction), shared by the head dims it serves."""
    table = _BWD_TABLE if backward else _FWD_TABLE
    names = ("BLOCK_SMALL", "BLOCK_BIG") if backward else ("BLOCK_M", "BLOCK_N")
    configs = [triton.Config(dict(zip(names, (a, b))), num_warps=w, num_stages=st)
               for a, b, w, st in table[(kind, dim)]]
    kernel = _attention_bwd_kernel if backward else _attention_fwd_kernel
    tune_key = ["N_BUCKET", "HEAD_DIM", "HAS_GS" if backward else "STORE_S0"]
    return triton.autotune(configs, key=tune_key, prune_configs_by={"early_config_prune": configs_for_length})(kernel)


def tf32_allowed() -> bool:
    """Whether the user allowed TF32 for fp32 matmuls, read through the API that cannot raise.

    Since torch 2.9 the legacy getter ``torch.backends.cuda.matmul.allow_tf32`` raises once the new
    ``fp32_precision`` API was used; ``fp32_precision`` reflects both APIs ("none" inherits the global setting).
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch before 2.9: only the legacy flag exists
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact fp32 products unless the user allowed TF32 for matmuls (half types ignore it)."""
    return "ieee" if dtype == torch.float32 and not tf32_allowed() else "tf32"


def _dot_kind(precision: str) -> str:
    return "ieee" if precision == "ieee" else "mma"


def _padded_dim(d: int) -> int:
    """The kernels' HEAD_DIM for head dim ``d`` (also the sequence bucket of the autotune key)."""
    return pow2_at_least(d, 16)


def _pad(t: torch.Tensor, dim: int) -> torch.Tensor:
    return unit_last_dim(t) if t.shape[-1] == dim else F.pad(t, (0, dim - t.shape[-1]))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a [B, H, N, D] tensor with a unit last-dim stride."""
    return t.stride(0), t.stride(1), t.stride(2)


def _interpret_tile(n: int) -> int:
    return min(_INTERPRET_TILE, _padded_dim(n))


# ----------------------------------------------------------------------------------------------------------------
# Wrappers (the triton backend calls these)
# ----------------------------------------------------------------------------------------------------------------
def attention_forward(q, k, v, scale: float, return_cls_score: bool, blocks: tuple[int, int] | None = None):
    """Fused attention forward.

    Args:
        q, k, v: [B, H, N, D], one dtype (fp32/fp16/bf16), D <= 256, any strides (a non-unit last-dim stride
            costs a copy).
        scale: logit scale.
        return_cls_score: also compute score [B, N-1] = head-mean softmax row 0 at the patch keys.
        blocks: (BLOCK_M, BLOCK_N) to bypass autotuning (tests); default: autotuned / interpreter tile.

    Returns:
        (out [B, H, N, D] q.dtype token-major, score [B, N-1] fp32 or [B, 0], lse [B, H, N] fp32 natural log).
    """
    batch, heads, tokens, dim = q.shape
    dp = _padded_dim(dim)
    if dp > MAX_HEAD_DIM:
        raise ValueError(f"head dim {dim} is above the Triton kernels' limit {MAX_HEAD_DIM}")
    q, k, v = (_pad(t, dp) for t in (q, k, v))
    out = empty_token_major(batch, heads, tokens, dp, q)  # [B, H, N, Dp] token-major
    lse = torch.empty((batch, heads, tokens), device=q.device, dtype=torch.float32)
    s0 = torch.empty_like(lse) if return_cls_score else lse  # [B, H, N] row-0 logits (log2 domain)
    args = (q, k, v, out, lse, s0, tokens, _padded_dim(tokens), scale * _LOG2E.value, heads,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out))
    meta = dict(HEAD_DIM=dp, STORE_S0=return_cls_score, DOT_PREC=_dot_precision(q.dtype))
    with on_device(q):
        if blocks is None and not INTERPRET:
            grid = lambda m: (triton.cdiv(tokens, m["BLOCK_M"]) * batch * heads,)  # noqa: E731
            _tuned(_dot_kind(meta["DOT_PREC"]), dp, backward=False)[grid](*args, **meta)
        else:
            bm, bn = blocks or (_interpret_tile(tokens),) * 2
            _attention_fwd_kernel[(triton.cdiv(tokens, bm) * batch * heads,)](*args, BLOCK_M=bm, BLOCK_N=bn, **meta)
        score = torch.empty((batch, tokens - 1 if return_cls_score else 0), device=q.device, dtype=torch.float32)
        if return_cls_score and tokens > 1:
            block = min(1024, pow2_at_least(tokens - 1, 16))  # patch keys per program: one or a few per sample
            _cls_score_kernel[(batch, triton.cdiv(tokens - 1, block))](s0, lse, score, tokens, heads, BLOCK=block)
    if dp != dim:
        out = token_major(out[..., :dim])
    return out, score, lse


def attention_backward(grad_out, grad_score, q, k, v, out, lse, scale: float, has_score_grad: bool,
                       blocks: tuple[int, int] | None = None):
    """Gradients (dq, dk, dv) of ``attention_forward`` for upstream grads on out and (optionally) on score.

    Args:
        grad_out, q, k, v, out: [B, H, N, D], any strides (a non-unit last-dim stride costs a copy);
        grad_score: [B, N-1] (read only when ``has_score_grad``); lse: [B, H, N] fp32 from the forward;
        blocks: (BLOCK_SMALL, BLOCK_BIG) to bypass autotuning.

    Returns:
        (dq, dk, dv), contiguous [B, H, N, D] in q.dtype.
    """
    batch, heads, tokens, dim = q.shape
    dp = _padded_dim(dim)
    q, k, v, out = (_pad(t, dp) for t in (q, k, v, out))
    grad_out = _pad(grad_out.to(q.dtype), dp)
    lse = lse.contiguous()
    gs = grad_score.contiguous().float() if has_score_grad else lse  # [B, N-1] fp32
    qk_scale = scale * _LOG2E.value
    delta = torch.empty_like(lse)  # [B, H, N]
    dq, dk, dv = (q.new_empty(q.shape) for _ in range(3))  # contiguous [B, H, N, Dp]
    with on_device(q):
        bm = _DELTA_TILE // dp if not INTERPRET else _interpret_tile(tokens)
        bn = _CLS_KEY_TILE // dp if not INTERPRET else bm
        _bwd_delta_kernel[(triton.cdiv(tokens, bm) * batch * heads,)](
            out, grad_out, q, k, lse, gs, delta, tokens, heads, qk_scale, *_strides(out), *_strides(grad_out),
            *_strides(q)[:2], *_strides(k), HEAD_DIM=dp, BLOCK_M=bm, BLOCK_N=bn, HAS_GS=has_score_grad)
        args = (q, k, v, grad_out, dq, dk, dv, lse, delta, gs, tokens, _padded_dim(tokens), heads, scale, qk_scale,
                *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
        meta = dict(HEAD_DIM=dp, HAS_GS=has_score_grad, DOT_PREC=_dot_precision(q.dtype))
        if blocks is None and not INTERPRET:
            grid = lambda m: (triton.cdiv(tokens, m["BLOCK_BIG"]) * batch * heads,)  # noqa: E731
            _tuned(_dot_kind(meta["DOT_PREC"]), dp, backward=True)[grid](*args, **meta)
        else:
            small, big = blocks or (_interpret_tile(tokens),) * 2
            _attention_bwd_kernel[(triton.cdiv(tokens, big) * batch * heads,)](
                *args, BLOCK_SMALL=small, BLOCK_BIG=big, **meta)
    if dp != dim:
        dq, dk, dv = (t[..., :dim].contiguous() for t in (dq, dk, dv))
    return dq, dk, dv
