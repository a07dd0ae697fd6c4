"""The Triton backend of the SuperViT ops (the ``contract.Backend`` interface).

Runs on CUDA tensors whenever Triton imports, and on CPU tensors only under ``TRITON_INTERPRET=1`` (set before
Triton is imported). Kernels: ``triton_attention.py`` (``attention`` with the CLS score, forward and backward) and
``triton_prune.py`` (``keep_topk``, ``gather_tokens`` and its backward, ``prune_tokens``). ``supports`` states the
cases the kernels cover; the dispatcher sends every other case (float64, head dims above 256, more than 8192
patch tokens for the in-program sort, empty tensors) to the reference backend.
"""
from __future__ import annotations

import os

import torch

from .contract import Case

NAME = "triton"

try:
    from . import triton_attention as _attention
    from . import triton_prune as _prune
    from .triton_launch import INTERPRET as _INTERPRETED  # the mode the kernels were built in, fixed at import
    _IMPORT_ERROR = ""
except Exception as err:  # noqa: BLE001 - a missing/broken triton makes the backend unavailable, with the reason
    _attention = _prune = None
    _INTERPRETED = False
    _IMPORT_ERROR = f"{type(err).__name__}: {err}"

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def supports(op: str, case: Case) -> bool:
    """Whether the kernels run ``op`` on ``case``: fp32/fp16/bf16 attention with head dim <= 256, top-k of at most
    8192 patch scores, any gather; never empty tensors."""
    if case.empty:
        return False
    if op in ("attention_forward", "attention_backward"):
        return case.dtype in _KERNEL_DTYPES and case.head_dim <= _attention.MAX_HEAD_DIM
    if op in ("keep_topk", "prune_tokens_forward"):
        return case.dtype in _KERNEL_DTYPES and case.tokens - 1 <= _prune.MAX_PATCH_TOKENS
    return op in ("gather_tokens", "gather_tokens_backward")


def attention_forward(q, k, v, scale: float, return_cls_score: bool):
    """(out [B,H,N,D] q.dtype token-major, score [B,N-1] fp32 or [B,0], lse [B,H,N] fp32)."""
    return _attention.attention_forward(q, k, v, scale, return_cls_score)


def attention_backward(grad_out, grad_score, q, k, v, out, lse, scale: float, has_score_grad: bool):
    """(dq, dk, dv) for upstream grads on out [B,H,N,D] and (when has_score_grad) on score [B,N-1]."""
    return _attention.attention_backward(grad_out, grad_score, q, k, v, out, lse, scale, has_score_grad)


def keep_topk(score, k: int):
    """idx [B, k] int64: descending score, lower index first on ties."""
    return _prune.keep_topk(score, k)


def gather_tokens(x, idx):
    """[B, k+1, C] = [x[:, :1], x[b, 1 + idx[b]]]."""
    return _prune.gather_tokens(x, idx)


def gather_tokens_backward(grad_kept, idx, num_tokens: int):
    """[B, N, C]: grad_kept stored back at CLS and 1 + idx, zeros elsewhere (no atomics)."""
    return _prune.gather_tokens_backward(grad_kept, idx, num_tokens)


def prune_tokens_forward(x, score, k: int):
    """(x_kept [B, k+1, C], idx [B, k]): top-k of score and the gather, in one launch for the whole batch."""
    return _prune.prune_tokens_forward(x, score, k)
