"""The public ops, registered with torch.library in the ``supervit`` namespace.

Each op is a ``torch.library.custom_op`` with the schema and fake implementation of ``contract.OPS`` and an
autograd formula, so it works under ``torch.compile(fullgraph=True)``, export and ``torch.library.opcheck``. Its
implementation asks ``dispatch.backend_for`` which backend runs the call and passes the arguments as they are
(strided views included: every backend makes contiguous what it needs).

An eager call with nothing to record (no autograd graph to build, plain tensors, no compiler, tracer, dispatch
or function mode, or functorch transform active) skips the custom-op layer and runs that same implementation
directly: at batch 1 the layer's ~15 us per call is a visible share of a sub-network's latency (``fast_path``;
``SUPERVIT_FAST_PATH=0`` turns it off).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import validation as check
from .contract import OPS, OpSpec, accumulation_dtype, keep_count
from .dispatch import backend_for
from .fast_path import nothing_to_record as _nothing_to_record


def _register(backend_fn: str):
    """(the ``supervit::`` custom op of ``contract.OPS[backend_fn]``, its implementation): the backend chosen
    per call runs it."""
    spec: OpSpec = OPS[backend_fn]
    fields_of = spec.case_fields

    def run(*args):
        return getattr(backend_for(backend_fn, fields_of(*args)), backend_fn)(*args)

    run.__name__ = run.__qualname__ = spec.name
    op = torch.library.custom_op(f"supervit::{spec.name}", run, mutates_args=(), schema=spec.schema)
    op.register_fake(spec.fake)
    return op, run


_attention, _run_attention = _register("attention_forward")
_attention_backward, _ = _register("attention_backward")
_keep_topk, _run_keep_topk = _register("keep_topk")
_gather_tokens, _run_gather_tokens = _register("gather_tokens")
_gather_tokens_backward, _ = _register("gather_tokens_backward")
_prune_tokens, _run_prune_tokens = _register("prune_tokens_forward")


# ----------------------------------------------------------------------------------------------------------------
# Autograd formulas
# ----------------------------------------------------------------------------------------------------------------
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
        grad_score = q.new_zeros((q.shape[0], 0), dtype=accumulation_dtype(q.dtype))
    dq, dk, dv = _attention_backward(grad_out, grad_score, q, k, v, out, lse, ctx.scale, has_score_grad)
    return dq, dk, dv, None, None


_attention.register_autograd(_attention_grad, setup_context=_attention_setup)


def _gather_setup(ctx, inputs, output):
    x, idx = inputs[0], inputs[1]
    ctx.save_for_backward(output[1] if isinstance(output, tuple) else idx)
    ctx.num_tokens = x.shape[1]


def _gather_grad(ctx, grad_kept, *_unused):
    (idx,) = ctx.saved_tensors
    return _gather_tokens_backward(grad_kept, idx, ctx.num_tokens), None


_gather_tokens.register_autograd(_gather_grad, setup_context=_gather_setup)


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
        return_cls_score: also return score [B, N-1] (fp32; fp64 for fp64 inputs) = mean over heads of the softmax
            row of the CLS query (token 0) at the patch keys 1..N-1. It is differentiable w.r.t. q and k.

    Returns:
        out [B, H, N, D], or (out, score) when ``return_cls_score``. ``out`` is stored token-major
        (``out.transpose(1, 2)`` is contiguous), so ``out.transpose(1, 2).reshape(B, N, H * D)`` is a free view.
    """
    check.check_qkv(q, k, v)
    if return_cls_score and q.shape[2] < 2:
        raise ValueError(f"return_cls_score needs N >= 2 tokens (CLS + patches), got N = {q.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else check.check_scale(scale)
    return attention_unchecked(q, k, v, scale, bool(return_cls_score))


def attention_unchecked(q: Tensor, k: Tensor, v: Tensor, scale: float, return_cls_score: bool):
    """``attention`` without its argument checks, for callers that build valid q, k, v themselves (the models:
    at batch 1 every Python step of a call shows in the latency); the same dispatch and autograd."""
    op = _run_attention if _nothing_to_record(q, k, v) else _attention
    out, score, _ = op(q, k, v, scale, return_cls_score)
    return (out, score) if return_cls_score else out


def keep_topk(score: Tensor, k: int) -> Tensor:
    """Indices [B, k] (int64) of the k highest scores per row, descending, the lower index first on ties.

    Args:
        score: [B, N-1] scores of the patch tokens.
        k: number kept, in [1, N-1].
    """
    check.check_tensor("score", score, 2, layout="[B, N-1]")
    k = check.check_k(k, score.shape[1])
    return (_run_keep_topk if _nothing_to_record(score) else _keep_topk)(score, k)


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
    return (_run_gather_tokens if _nothing_to_record(x, idx) else _gather_tokens)(x, idx.long())


def prune_tokens(x: Tensor, score: Tensor, keep_ratio: float) -> tuple[Tensor, Tensor]:
    """Keep CLS and the ``min(ceil(keep_ratio * N), N - 1)`` best-scored patch tokens, best first.

    Args:
        x: [B, N, C] tokens, CLS at index 0.
        score: [B, N-1] score of each patch token.
        keep_ratio: in (0, 1].

    Returns:
        (x_kept [B, k+1, C], idx [B, k] int64 into the patch tokens).
    """
    check.check_prune_inputs(x, score)
    return prune_tokens_unchecked(x, score, check.check_keep_ratio(keep_ratio))


def prune_tokens_unchecked(x: Tensor, score: Tensor, keep_ratio: float) -> tuple[Tensor, Tensor]:
    """``prune_tokens`` without its argument checks (``keep_ratio`` a float in (0, 1]), for the models."""
    k = keep_count(x.shape[1], keep_ratio)
    return (_run_prune_tokens if _nothing_to_record(x, score) else _prune_tokens)(x, score, k)
