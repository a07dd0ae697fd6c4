"""The Triton backend of the SuperViT ops (see dispatch.py for the backend contract).

Runs on CUDA tensors whenever Triton imports, and on CPU tensors only under ``TRITON_INTERPRET=1`` (set before
Triton is imported). Kernels: ``triton_attention.py`` (fused attention + CLS score, forward and backward) and
``triton_prune.py`` (top-k + gather fused, indexed-store backward). Cases the kernels do not cover delegate to
the reference backend, so the semantics are the reference's everywhere: float64 inputs, head dims above 256,
more than 8192 patch tokens for the in-program sort.
"""
from __future__ import annotations

import os

import torch

from . import reference

NAME = "triton"

try:
    from . import triton_attention as _attn
    from . import triton_prune as _prune
    _IMPORT_ERROR = ""
except Exception as err:  # noqa: BLE001 - a missing/broken triton makes the backend unavailable, with the reason
    _attn = _prune = None
    _IMPORT_ERROR = f"{type(err).__name__}: {err}"

# The kernels are compiled or interpreted depending on TRITON_INTERPRET when their module is imported.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def is_available(device: torch.device):
    """(ok, reason): CUDA with Triton importable, or CPU when the kernels run under TRITON_INTERPRET=1."""
    device = torch.device(device)
    if _IMPORT_ERROR:
        return False, f"triton cannot be imported ({_IMPORT_ERROR})"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available to torch"
        return True, ""
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return False, "Triton runs on CPU tensors only with TRITON_INTERPRET=1 set before triton is imported"
        if not _INTERPRETED:
            return False, "TRITON_INTERPRET=1 was set after the Triton kernels were compiled; set it before import"
        return True, ""
    return False, f"Triton kernels do not run on {device.type} tensors"


def _attention_by_reference(q) -> bool:
    return q.dtype == torch.float64 or q.shape[-1] > _attn.MAX_HEAD_DIM or q.numel() == 0


def _prune_by_reference(score) -> bool:
    return score.dtype == torch.float64 or score.shape[1] > _prune.MAX_PATCH_TOKENS or score.numel() == 0


def attention_forward(q, k, v, scale: float, return_cls_score: bool):
    """(out [B,H,N,D] q.dtype, score [B,N-1] fp32 or [B,0], lse [B,H,N] fp32) of softmax(q k^T * scale) v."""
    if _attention_by_reference(q):
        return reference.attention_forward(q, k, v, scale, return_cls_score)
    return _attn.attention_fwd(q, k, v, scale, return_cls_score)


def attention_backward(grad_out, grad_score, q, k, v, out, lse, scale: float, has_score_grad: bool):
    """(dq, dk, dv) for upstream grads on out [B,H,N,D] and (when has_score_grad) on score [B,N-1]."""
    if _attention_by_reference(q):
        return reference.attention_backward(grad_out, grad_score, q, k, v, out, lse, scale, has_score_grad)
    return _attn.attention_bwd(grad_out, grad_score, q, k, v, out, lse, scale, has_score_grad)


def keep_topk(score, k: int):
    """idx [B, k] int64: descending score, lower index first on ties."""
    if _prune_by_reference(score):
        return reference.keep_topk(score, k)
    return _prune.topk_indices(score, k)


def gather_tokens(x, idx):
    """[B, k+1, C] = [x[:, :1], x[b, 1 + idx[b]]]."""
    if x.numel() == 0:
        return reference.gather_tokens(x, idx)
    return _prune.gather_fwd(x, idx.long())


def gather_tokens_backward(grad_kept, idx, num_tokens: int):
    """[B, N, C]: grad_kept stored back at CLS and 1 + idx, zeros elsewhere (no atomics)."""
    if grad_kept.numel() == 0:
        return reference.gather_tokens_backward(grad_kept, idx, num_tokens)
    return _prune.gather_bwd(grad_kept, idx.long(), num_tokens)


def prune_tokens_forward(x, score, k: int):
    """(x_kept [B, k+1, C], idx [B, k]): top-k of score and the gather, in one launch for the whole batch."""
    if _prune_by_reference(score) or x.numel() == 0:
        return reference.prune_tokens_forward(x, score, k)
    return _prune.prune_fwd(x, score, k)
