"""The public ops, registered with torch.library in the ``supervit`` namespace.

Each op is a ``torch.library.custom_op`` with a fake (meta) implementation and an autograd formula, so it works
under ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``. The implementation of every op asks
``dispatch.select_backend`` which backend runs it on the tensors' device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import validation as check
from .dispatch import select_backend
from .reference import compute_dtype, empty_token_major, keep_count, token_major


# ----------------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("supervit::attention", mutates_args=())
def _attention(q: Tensor, k: Tensor, v: Tensor, scale: float, return_cls_score: bool) -> tuple[Tensor, Tensor, Tensor]:
    backend = select_backend(q.device)
    prep = _qkv_prep(backend)
    out, score, lse = backend.attention_forward(prep(q), prep(k), prep(v), scale, return_cls_score)
    return token_major(out), score, lse  # a no-op for the shipped backends, which write out token-major


def _qkv_prep(backend):
    """How q, k, v reach ``backend``: contiguous, or as they are for a backend that reads them through their
    strides (``STRIDED_QKV = True``; the fused qkv projection's views then cost no copy)."""
    return _as_is if getattr(backend, "STRIDED_QKV", False) else Tensor.contiguous


def _as_is(t: Tensor) -> Tensor:
    return t


@_attention.register_fake
def _(q, k, v, scale, return_cls_score):
    batch, heads, tokens, dim = q.shape
    score_len = tokens - 1 if return_cls_score else 0
    return (
        empty_token_major(batch, heads, tokens, dim, q),
        q.new_empty((batch, score_len), dtype=compute_dtype(q.dtype)),
        q.new_empty((batch, heads, tokens), dtype=compute_dtype(q.dtype)),
    )


@torch.library.custom_op("supervit::attention_backward", mutates_args=())
def _attention_backward(
    grad_out: Tensor, grad_score: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    scale: float, has_score_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    backend = select_backend(q.device)
    prep = _qkv_prep(backend)
    return backend.attention_backward(
        prep(grad_out), grad_score.contiguous(), prep(q), prep(k), prep(v), prep(out), lse.contiguous(), scale,
        has_score_grad,
    )


@_attention_backward.register_fake
def _(grad_out, grad_score, q, k, v, out, lse, scale, has_score_grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, scale, return_cls_score = inputs
    out, _, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.return_cls_score = return_cls_score


def _attention_grad(ctx, grad_out, grad_score, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    has_score_grad = ctx.return_cls_score and grad_score is not None
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if not has_score_grad:
        grad_score = q.new_zeros((q.shape[0], 0), dtype=compute_dtype(q.dtype))
    dq, dk, dv = _attention_backward(grad_out, grad_score, q, k, v, out, lse, ctx.scale, has_score_grad)
    return dq, dk, dv, None, None


_attention.register_autograd(_attention_grad, setup_context=_attention_setup)


# ----------------------------------------------------------------------------------------------------------------
# keep_topk, gather_tokens, prune_tokens
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("supervit::keep_topk", mutates_args=())
def _keep_topk(score: Tensor, k: int) -> Tensor:
    return select_backend(score.device).keep_topk(score.contiguous(), k)


@_keep_topk.register_fake
def _(score, k):
    return score.new_empty((score.shape[0], k), dtype=torch.int64)


@torch.library.custom_op("supervit::gather_tokens", mutates_args=())
def _gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    return select_backend(x.device).gather_tokens(x.contiguous(), idx.contiguous())


@_gather_tokens.register_fake
def _(x, idx):
    return x.new_empty((x.shape[0], idx.shape[1] + 1, x.shape[2]))


@torch.library.custom_op("supervit::gather_tokens_backward", mutates_args=())
def _gather_tokens_backward(grad_kept: Tensor, idx: Tensor, num_tokens: int) -> Tensor:
    return select_backend(grad_kept.device).gather_tokens_backward(grad_kept.contiguous(), idx.contiguous(), num_tokens)


@_gather_tokens_backward.register_fake
def _(grad_kept, idx, num_tokens):
    return grad_kept.new_empty((grad_kept.shape[0], num_tokens, grad_kept.shape[2]))


def _gather_setup(ctx, inputs, output):
    x, idx = inputs[0], inputs[1]
    ctx.save_for_backward(output[1] if isinstance(output, tuple) else idx)
    ctx.num_tokens = x.shape[1]


def _gather_grad(ctx, grad_kept, *_unused):
    (idx,) = ctx.saved_tensors
    return _gather_tokens_backward(grad_kept, idx, ctx.num_tokens), None


_gather_tokens.register_autograd(_gather_grad, setup_context=_gather_setup)


@torch.library.custom_op("supervit::prune_tokens", mutates_args=())
def _prune_tokens(x: Tensor, score: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return select_backend(x.device).prune_tokens_forward(x.contiguous(), score.contiguous(), k)


@_prune_tokens.register_fake
def _(x, score, k):
    return x.new_empty((x.shape[0], k + 1, x.shape[2])), x.new_empty((x.shape[0], k), dtype=torch.int64)


def _prune_grad(ctx, grad_kept, _grad_idx):
    (idx,) = ctx.saved_tensors
    return _gather_tokens_backward(grad_kept, idx, ctx.num_tokens), None, None


_prune_tokens.register_autograd(_prune_grad, setup_context=_gather_setup)


# ----------------------------------------------------------------------------------------------------------------
# Public API (argument checks, then the registered op)
# ----------------------------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, return_cls_score: bool = False):
    """Softmax attention over [B, H, N, D] tensors, optionally with the CLS score.

    Args:
        q, k, v: [B, H, N, D] queries, keys, values (one shape, dtype and device).
        scale: logit scale, a finite number > 0; defaults to D ** -0.5.
        return_cls_score: also return score [B, N-1] (fp32; fp64 for fp64 inputs) = mean over heads of the softmax row of the CLS
            query (token 0) at the patch keys 1..N-1. It is differentiable w.r.t. q and k.

    Returns:
        out [B, H, N, D], or (out, score) when ``return_cls_score``. ``out`` is stored token-major
        (``out.transpose(1, 2)`` is contiguous), so ``out.transpose(1, 2).reshape(B, N, H * D)`` is a free view.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check.check_tensor(name, t, 4, layout="[B, H, N, D]")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"q, k, v must have one shape [B, H, N, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check.check_same_device(q=q, k=k, v=v)
    if return_cls_score and q.shape[2] < 2:
        raise ValueError(f"return_cls_score needs N >= 2 tokens (CLS + patches), got N = {q.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else check.check_scale(scale)
    out, score, _ = _attention(q, k, v, scale, bool(return_cls_score))
    return (out, score) if return_cls_score else out


def keep_topk(score: Tensor, k: int) -> Tensor:
    """Indices [B, k] (int64) of the k highest scores per row, descending, the lower index first on ties.

    Args:
        score: [B, N-1] scores of the patch tokens.
        k: number kept, in [1, N-1].
    """
    check.check_tensor("score", score, 2, layout="[B, N-1]")
    k = check.check_k(k, score.shape[1])
    return _keep_topk(score, k)


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """[CLS] + the patch tokens ``idx``: [B, k+1, C] = cat(x[:, :1], x[b, 1 + idx[b]]).

    Args:
        x: [B, N, C] tokens, CLS at index 0.
        idx: [B, k] unique indices into the N-1 patch tokens.
    """
    check.check_tensor("x", x, 3, layout="[B, N, C]")
    check.check_tensor("idx", idx, 2, dtypes=check.INDEX_DTYPES, layout="[B, k]")
    check.check_same_device(x=x, idx=idx)
    if idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx batch size must equal x batch size {x.shape[0]}, got {idx.shape[0]}")
    check.check_k(idx.shape[1], x.shape[1] - 1)
    check.check_indices_in_range(idx, x.shape[1] - 1)
    return _gather_tokens(x, idx.long())


def prune_tokens(x: Tensor, score: Tensor, keep_ratio: float) -> tuple[Tensor, Tensor]:
    """Keep CLS and the ``min(ceil(keep_ratio * N), N - 1)`` best-scored patch tokens, best first.

    Args:
        x: [B, N, C] tokens, CLS at index 0.
        score: [B, N-1] score of each patch token.
        keep_ratio: in (0, 1].

    Returns:
        (x_kept [B, k+1, C], idx [B, k] int64 into the patch tokens).
    """
    check.check_tensor("x", x, 3, layout="[B, N, C]")
    check.check_tensor("score", score, 2, layout="[B, N-1]")
    check.check_same_device(x=x, score=score)
    if score.shape != (x.shape[0], x.shape[1] - 1):
        raise ValueError(f"score must have shape [B, N-1] = {(x.shape[0], x.shape[1] - 1)}, got {tuple(score.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"x must hold CLS and at least one patch token (N >= 2), got N = {x.shape[1]}")
    k = keep_count(x.shape[1], check.check_keep_ratio(keep_ratio))
    return _prune_tokens(x, score, k)
