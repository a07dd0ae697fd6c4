"""The compiled-extension backend: the kernels of csrc/ (``supervit._C``) behind ``contract.Backend``.

This module defines the ops ``supervit::ext_<name>`` with the schemas and fakes of ``contract.OPS`` and then
loads ``supervit._C``, which attaches a CPU kernel (C++/OpenMP) to every op and a CUDA kernel when the CUDA
sources were compiled in; PyTorch's dispatcher picks the kernel by the tensors' device.

When the extension was not built, importing this module still works: ``is_available`` answers False with the
reason, and one warning says that the pure-PyTorch reference backend runs instead.
"""
from __future__ import annotations

import warnings

import torch

from .contract import ATTENTION_OPS, KERNEL_DTYPES, OPS, TOPK_OPS, Case

NAME = "ext"
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}

for _spec in OPS.values():
    torch.library.define(f"supervit::ext_{_spec.name}", _spec.schema)
    torch.library.register_fake(f"supervit::ext_{_spec.name}", _spec.fake)

try:
    from supervit import _C  # noqa: F401 - loading the library attaches the kernels of torch.ops.supervit.ext_*

    _LOAD_ERROR = ""
except Exception as err:  # noqa: BLE001 - a missing or broken build only disables this backend
    _LOAD_ERROR = (f"supervit._C was not built or cannot be loaded ({type(err).__name__}: {err}); reinstall "
                   "with `pip install --no-build-isolation -e .` and a C++ compiler (see setup.py)")

_ops = torch.ops.supervit
_warned = False


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"SuperViT: compiled kernels unavailable, using the PyTorch reference ops: {reason}",
                      RuntimeWarning, stacklevel=3)


def is_available(device: torch.device):
    """(True, "") when supervit._C is loaded and has kernels for ``device``'s type, else (False, why)."""
    if _LOAD_ERROR:
        _warn_once(_LOAD_ERROR)
        return False, _LOAD_ERROR
    kind = torch.device(device).type
    if kind not in _status:
        _status[kind] = _kernel_status(kind)
    return _status[kind]


_status: dict[str, tuple[bool, str]] = {}


def _kernel_status(kind: str) -> tuple[bool, str]:
    """Whether the dispatcher has a kernel of every ext op for device type ``kind`` (fixed once loaded)."""
    key = _DISPATCH_KEYS.get(kind)
    if key is None:
        return False, f"supervit._C has no kernels for device type {kind!r}"
    for spec in OPS.values():
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"supervit::ext_{spec.name}", key):
            why = "it was built without CUDA sources (see setup.py)" if kind == "cuda" else "a partial build"
            return False, f"supervit._C has no {key} kernel for supervit::ext_{spec.name}: {why}"
    if kind == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


# The CUDA kernels take fp32/fp16/bf16; attention runs on ATen's memory-efficient SDPA (head dims a multiple of
# CUDA_HEAD_DIM_MULTIPLE up to CUDA_MAX_HEAD_DIM); the top-k sorts one sample's scores in one block's shared
# memory (at most CUDA_MAX_SORT_TOKENS patch tokens). The limits come from csrc/cuda_kernels.h through _C.
# The CPU kernels take every floating dtype and length.


def supports(op: str, case: Case) -> bool:
    """Every non-empty case on CPU; on CUDA the dtypes, head dims and lengths the CUDA kernels take."""
    if case.empty or _LOAD_ERROR:
        return False
    if case.device_type != "cuda":
        return True
    if op in ATTENTION_OPS:
        return (case.dtype in KERNEL_DTYPES and case.head_dim % _C.CUDA_HEAD_DIM_MULTIPLE == 0
                and case.head_dim <= _C.CUDA_MAX_HEAD_DIM)
    if op in TOPK_OPS:
        return case.dtype in KERNEL_DTYPES and case.tokens - 1 <= _C.CUDA_MAX_SORT_TOKENS
    return True


# The op functions of ``contract.Backend`` are the ext ops themselves (their kernels come from supervit._C).
attention_forward = _ops.ext_attention.default
attention_backward = _ops.ext_attention_backward.default
keep_topk = _ops.ext_keep_topk.default
gather_tokens = _ops.ext_gather_tokens.default
gather_tokens_backward = _ops.ext_gather_tokens_backward.default
prune_tokens_forward = _ops.ext_prune_tokens.default
