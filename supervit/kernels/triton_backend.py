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

from .contract import ATTENTION_OPS, GATHER_OPS, KERNEL_DTYPES, TOPK_OPS, Case

NAME = "triton"

try:
    from . import triton_attention as _attention
    from . import triton_prune as _prune
    # the op functions of contract.Backend, as the kernel modules define them
    from .triton_attention import attention_backward, attention_forward
    from .triton_prune import gather_tokens, gather_tokens_backward, keep_topk, prune_tokens_forward
    from .triton_launch import INTERPRET as _INTERPRETED  # the mode the kernels were built in, fixed at import
    _IMPORT_ERROR = ""
except Exception as err:  # noqa: BLE001 - a missing/broken triton makes the backend unavailable, with the reason
    _attention = _prune = None
    attention_forward = attention_backward = keep_topk = gather_tokens = gather_tokens_backward = None
    prune_tokens_forward = None
    _INTERPRETED = False
    _IMPORT_ERROR = f"{type(err).__name__}: {err}"


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
    if op in ATTENTION_OPS:
        return case.dtype in KERNEL_DTYPES and case.head_dim <= _attention.MAX_HEAD_DIM
    if op in TOPK_OPS:
        return case.dtype in KERNEL_DTYPES and case.tokens - 1 <= _prune.MAX_PATCH_TOKENS
    return op in GATHER_OPS
