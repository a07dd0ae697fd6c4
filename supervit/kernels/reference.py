"""Pure-PyTorch reference of every SuperViT op: the executable specification.

Two layers live here:

* differentiable composites (``attention``, ``keep_topk``, ``gather_tokens``, ``prune_tokens``) written with
  ordinary autograd-aware PyTorch; tests use them as the oracle for values and gradients;
* the reference *backend* (``attention_forward``/``attention_backward``, ``gather_tokens_backward`` ...),
  the explicit forward/backward pairs with the same signatures every other backend implements.

Layouts: tokens ``x`` are [B, N, C] with the CLS token at index 0; ``q, k, v`` are [B, H, N, D]; the attention
output of the backends is [B, H, N, D] stored token-major (see ``token_major``);
``score`` is [B, N-1] (float32) over the patch tokens; ``idx`` is [B, k] int64 into the patch tokens.
"""
from __future__ import annotations

import math

import torch

NAME = "reference"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types, the dtype itself for float32/float64."""
    return torch.promote_types(dtype, torch.float32)


def keep_count(num_tokens: int, keep_ratio: float) -> int:
    """Number of patch tokens kept from a sequence of ``num_tokens`` (CLS included).

    ``min(ceil(keep_ratio * N), N - 1)`` with Python floats, as the SuperViT reference computes it.
    """
    return min(math.ceil(keep_ratio * num_tokens), num_tokens - 1)


def token_major(out: torch.Tensor) -> torch.Tensor:
    """``out`` [B, H, N, D] with its memory laid out as [B, N, H, D] (a copy only when it is not already).

    Every backend returns the attention output this way, as the flash kernels write it, so that merging the heads
    back into tokens, ``out.transpose(1, 2).reshape(B, N, H * D)``, is a view and costs no copy.
    """
    by_token = out.transpose(1, 2)  # [B, N, H, D]
    return out if by_token.is_contiguous() else by_token.contiguous().transpose(1, 2)


def empty_token_major(batch: int, heads: int, tokens: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized [B, H, N, D] tensor laid out token-major, with ``like``'s dtype and device."""
    return like.new_empty((batch, tokens, heads, dim)).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# Differentiable composites (the specification).
# ----------------------------------------------------------------------------------------------------------------
def attention(q, k, v, scale=None, return_cls_score=False):
    """softmax(q k^T * scale) v, optionally with the head-mean CLS attention row over the patch keys."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = compute_dtype(q.dtype)
    probs = torch.softmax((q @ k.transpose(-2, -1)).to(acc) * scale, dim=-1)  # [B, H, N, N]
    out = (probs.to(v.dtype) @ v)  # [B, H, N, D]
    if not return_cls_score:
        return out
    score = probs[:, :, 0, 1:].mean(dim=1).to(acc)  # [B, N-1]
    return out, score


def keep_topk(score, k):
    """Indices of the ``k`` highest scores per row, descending score, the lower index first on ties."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices  # [B, N-1]
    return order[:, :k].contiguous()


def gather_tokens(x, idx):
    """[CLS] followed by the patch tokens ``idx`` of every sample: [B, k+1, C]."""
    patch = torch.gather(x[:, 1:], 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, k, C]
    return torch.cat([x[:, :1], patch], dim=1)


def prune_tokens(x, score, keep_ratio):
    """Keep CLS and the ``keep_count(N, keep_ratio)`` best-scored patch tokens; returns (x_kept, idx)."""
    idx = keep_topk(score, keep_count(x.shape[1], keep_ratio))
    return gather_tokens(x, idx), idx


# ----------------------------------------------------------------------------------------------------------------
# The reference backend: explicit forward / backward pairs.
# ----------------------------------------------------------------------------------------------------------------
def attention_forward(q, k, v, scale: float, return_cls_score: bool):
    """Returns (out [B,H,N,D] token-major in q.dtype, score [B,N-1] fp32 or [B,0] when not asked, lse [B,H,N] fp32).

    (fp64 inputs keep fp64 for score and lse.)
    """
    acc = compute_dtype(q.dtype)
    logits = (q @ k.transpose(-2, -1)).to(acc) * scale  # [B, H, N, N]
    lse = torch.logsumexp(logits, dim=-1)  # [B, H, N]
    probs = torch.exp(logits - lse.unsqueeze(-1))
    out = token_major(probs.to(v.dtype) @ v)
    if return_cls_score:
        score = probs[:, :, 0, 1:].mean(dim=1)
    else:
        score = q.new_empty((q.shape[0], 0), dtype=acc)
    return out, score, lse


def attention_backward(grad_out, grad_score, q, k, v, out, lse, scale: float, has_score_grad: bool):
    """Gradients (dq, dk, dv) of ``attention_forward`` for upstream grads on ``out`` and on ``score``.

    The score adds ``grad_score / H`` to dP at the CLS query row, patch-key columns, before the softmax backward.
    """
    acc = compute_dtype(q.dtype)
    logits = (q @ k.transpose(-2, -1)).to(acc) * scale
    probs = torch.exp(logits - lse.unsqueeze(-1))  # [B, H, N, N]
    grad_out_acc = grad_out.to(acc)
    grad_probs = grad_out_acc @ v.to(acc).transpose(-2, -1)  # [B, H, N, N]
    if has_score_grad:
        num_heads = q.shape[1]
        grad_probs[:, :, 0, 1:] += grad_score.to(acc).unsqueeze(1) / num_heads
    row_dot = (grad_probs * probs).sum(dim=-1, keepdim=True)  # [B, H, N, 1]
    grad_logits = probs * (grad_probs - row_dot) * scale
    dq = grad_logits @ k.to(acc)
    dk = grad_logits.transpose(-2, -1) @ q.to(acc)
    dv = probs.transpose(-2, -1) @ grad_out_acc
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def gather_tokens_backward(grad_kept, idx, num_tokens: int):
    """Scatter [B, k+1, C] gradients back to [B, N, C]; zeros at the dropped tokens."""
    batch, _, channels = grad_kept.shape
    grad_x = grad_kept.new_zeros((batch, num_tokens, channels))
    grad_x[:, 0] = grad_kept[:, 0]
    grad_x[:, 1:].scatter_(1, idx.unsqueeze(-1).expand(-1, -1, channels), grad_kept[:, 1:])
    return grad_x


def prune_tokens_forward(x, score, k: int):
    """Top-k of ``score`` and the gather of [CLS] + kept tokens: (x_kept [B,k+1,C], idx [B,k])."""
    idx = keep_topk(score, k)
    return gather_tokens(x, idx), idx


def is_available(device: torch.device):
    """The reference runs everywhere."""
    return True, ""
