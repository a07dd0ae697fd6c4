"""Pure-PyTorch reference of every SuperViT op: the executable specification.

Two layers live here:

* differentiable composites (``attention``, ``keep_topk``, ``gather_tokens``, ``prune_tokens``) written with
  ordinary autograd-aware PyTorch; tests use them as the oracle for values and gradients;
* the reference *backend* (``attention_forward``/``attention_backward``, ``gather_tokens_backward`` ...),
  the explicit forward/backward pairs with the same signatures every other backend implements.

Shapes, dtypes and layouts are those of ``contract.py``; the reference runs every case of every op.
"""
from __future__ import annotations

import torch

from .contract import Case, accumulation_dtype, keep_count, token_major

NAME = "reference"


# ----------------------------------------------------------------------------------------------------------------
# Differentiable composites (the specification).
# ----------------------------------------------------------------------------------------------------------------
def attention(q, k, v, scale=None, return_cls_score=False):
    """softmax(q k^T * scale) v, optionally with the head-mean CLS attention row over the patch keys."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = accumulation_dtype(q.dtype)
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
    acc = accumulation_dtype(q.dtype)
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
    acc = accumulation_dtype(q.dtype)
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


def supports(op: str, case: Case) -> bool:
    """Every case of every op."""
    return True
