"""The compiled-extension backend: the kernels of csrc/ (``supervit._C``) behind the backend contract.

``supervit._C`` registers ``torch.ops.supervit.ext_*`` with PyTorch's dispatcher, a CPU kernel (C++/OpenMP)
for every op and a CUDA kernel when the CUDA sources were compiled in; the dispatcher picks the kernel by the
tensors' device. The functions below are the backend contract of ``dispatch.py`` (same signatures and
semantics as the reference backend in ``reference.py``).

When the extension was not built, importing this module still works: ``is_available`` answers False with the
reason, and one warning says that the pure-PyTorch reference backend runs instead.
"""
from __future__ import annotations

import warnings

import torch

from .reference import compute_dtype, empty_token_major

NAME = "ext"
# q, k, v (and grad_out, out in the backward) may arrive as strided views (unit last-dim stride): the CPU flash
# kernels and the score loops read them through their strides (ops.py then skips the copies); the CUDA path copies
# what its kernels need.
STRIDED_QKV = True

try:
    from supervit import _C  # noqa: F401 - loading the library registers torch.ops.supervit.ext_*

    _LOAD_ERROR = ""
except Exception as err:  # noqa: BLE001 - a missing or broken build only disables this backend
    _LOAD_ERROR = (f"supervit._C was not built or cannot be loaded ({type(err).__name__}: {err}); reinstall "
                   "with `pip install --no-build-isolation -e .` and a C++ compiler (see setup.py)")

_warned = False
_OPS = ("ext_attention_forward", "ext_attention_backward", "ext_keep_topk", "ext_gather_tokens",
        "ext_gather_tokens_backward", "ext_prune_tokens")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


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
    for op in _OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"supervit::{op}", key):
            why = "it was built without CUDA sources (see setup.py)" if kind == "cuda" else "a partial build"
            return False, f"supervit._C has no {key} kernel for supervit::{op}: {why}"
    if kind == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


# ----------------------------------------------------------------------------------------------------------------
# The backend contract (see reference.py for the semantics and layouts; STRIDED_QKV above for the strides).
# ----------------------------------------------------------------------------------------------------------------
def attention_forward(q, k, v, scale: float, return_cls_score: bool):
    """(out [B,H,N,D] token-major q.dtype, score [B,N-1] or [B,0], lse [B,H,N]); score/lse fp32 (fp64 for fp64)."""
    return torch.ops.supervit.ext_attention_forward(q, k, v, float(scale), bool(return_cls_score))


def attention_backward(grad_out, grad_score, q, k, v, out, lse, scale: float, has_score_grad: bool):
    """(dq, dk, dv) for upstream grads on ``out`` and (when ``has_score_grad``) on ``score``."""
    return torch.ops.supervit.ext_attention_backward(grad_out, grad_score, q, k, v, out, lse, float(scale),
                                                     bool(has_score_grad))


def keep_topk(score, k: int):
    """idx [B,k] int64: descending score, lower index first on ties."""
    return torch.ops.supervit.ext_keep_topk(score, int(k))


def gather_tokens(x, idx):
    """[B,k+1,C] = [x[:, :1], x[b, 1 + idx[b]]]."""
    return torch.ops.supervit.ext_gather_tokens(x, idx)


def gather_tokens_backward(grad_kept, idx, num_tokens: int):
    """[B,N,C]: plain indexed store of the kept rows, zeros elsewhere (deterministic)."""
    return torch.ops.supervit.ext_gather_tokens_backward(grad_kept, idx, int(num_tokens))


def prune_tokens_forward(x, score, k: int):
    """(x_kept [B,k+1,C], idx [B,k]): top-k and gather fused in one pass per sample."""
    return torch.ops.supervit.ext_prune_tokens(x, score, int(k))


# Fake (meta) implementations, so the ext ops also trace under torch.compile when called directly.
if not _LOAD_ERROR:
    @torch.library.register_fake("supervit::ext_attention_forward")
    def _(q, k, v, scale, return_cls_score):
        batch, heads, tokens, dim = q.shape
        acc = compute_dtype(q.dtype)
        score_len = tokens - 1 if return_cls_score else 0
        return (empty_token_major(batch, heads, tokens, dim, q), q.new_empty((batch, score_len), dtype=acc),
                q.new_empty((batch, heads, tokens), dtype=acc))

    @torch.library.register_fake("supervit::ext_attention_backward")
    def _(grad_out, grad_score, q, k, v, out, lse, scale, has_score_grad):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    @torch.library.register_fake("supervit::ext_keep_topk")
    def _(score, k):
        return score.new_empty((score.shape[0], k), dtype=torch.int64)

    @torch.library.register_fake("supervit::ext_gather_tokens")
    def _(x, idx):
        return x.new_empty((x.shape[0], idx.shape[1] + 1, x.shape[2]))

    @torch.library.register_fake("supervit::ext_gather_tokens_backward")
    def _(grad_kept, idx, num_tokens):
        return grad_kept.new_empty((grad_kept.shape[0], num_tokens, grad_kept.shape[2]))

    @torch.library.register_fake("supervit::ext_prune_tokens")
    def _(x, score, k):
        return x.new_empty((x.shape[0], k + 1, x.shape[2])), x.new_empty((x.shape[0], k), dtype=torch.int64)
