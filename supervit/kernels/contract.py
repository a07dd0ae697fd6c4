"""The op contract: what every SuperViT op takes and returns, written once.

For each op this module holds its schema (the ``torch.library`` signature), its fake implementation (the shapes,
dtypes and layout of the outputs, used by ``torch.compile``, export and ``opcheck``) and the facts of the case it
is called on (``Case``: device type, dtype, sequence length, head dim). Every registration uses these: the public
``supervit::`` ops of ``ops.py`` and the compiled extension's ``supervit::ext_*`` ops of ``ext_backend.py``.
``Backend`` says what a backend module provides; ``dispatch.backend_for`` hands a backend only the cases its
``supports`` accepts and sends the rest to the reference backend (``reference.py``, the executable specification).

Layouts: tokens ``x`` [B, N, C] with CLS at index 0; ``q, k, v`` [B, H, N, D]; ``score`` [B, N-1] over the patch
tokens; ``idx`` [B, k] int64 into the patch tokens; ``lse`` [B, H, N]. Inputs may be strided: every backend makes
contiguous what it needs (or reads the strides). The attention output is [B, H, N, D] stored token-major (see
``token_major``). Score and lse are in the accumulation dtype (``accumulation_dtype``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types, the dtype itself for float32/float64."""
    return torch.promote_types(dtype, torch.float32)


def keep_count(num_tokens: int, keep_ratio: float) -> int:
    """Number of patch tokens kept from a sequence of ``num_tokens`` (CLS included).

    ``min(ceil(keep_ratio * N), N - 1)`` with Python floats, as the SuperViT reference computes it.
    """
    return min(math.ceil(keep_ratio * num_tokens), num_tokens - 1)


def token_major(out: Tensor) -> Tensor:
    """``out`` [B, H, N, D] with its memory laid out as [B, N, H, D] (a copy only when it is not already).

    Every backend returns the attention output this way, as the flash kernels write it, so that merging the heads
    back into tokens, ``out.transpose(1, 2).reshape(B, N, H * D)``, is a view and costs no copy.
    """
    by_token = out.transpose(1, 2)  # [B, N, H, D]
    return out if by_token.is_contiguous() else by_token.contiguous().transpose(1, 2)


def empty_token_major(batch: int, heads: int, tokens: int, dim: int, like: Tensor) -> Tensor:
    """An uninitialized [B, H, N, D] tensor laid out token-major, with ``like``'s dtype and device."""
    return like.new_empty((batch, tokens, heads, dim)).transpose(1, 2)


class Case(NamedTuple):
    """What a backend needs to know to say whether it runs one call of an op (see ``OpSpec.case``).

    ``dtype`` is the dtype the op computes in (q for attention, score for the top-k and the prune, x or the
    gradient for the gathers); ``tokens`` is N, CLS included; ``head_dim`` is D for attention, 0 otherwise;
    ``empty`` is True when an input has no elements.
    """

    device_type: str
    dtype: torch.dtype
    tokens: int
    head_dim: int = 0
    empty: bool = False


# ----------------------------------------------------------------------------------------------------------------
# Fakes: output shapes, dtypes and layout of every op (the one statement of them).
# ----------------------------------------------------------------------------------------------------------------
def _attention_fake(q, k, v, scale, return_cls_score):
    batch, heads, tokens, dim = q.shape
    acc = accumulation_dtype(q.dtype)
    score_len = tokens - 1 if return_cls_score else 0
    return (empty_token_major(batch, heads, tokens, dim, q),  # out [B, H, N, D] token-major
            q.new_empty((batch, score_len), dtype=acc),  # score [B, N-1], or [B, 0] when not asked
            q.new_empty((batch, heads, tokens), dtype=acc))  # lse [B, H, N]


def _attention_backward_fake(grad_out, grad_score, q, k, v, out, lse, scale, has_score_grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous dq, dk, dv


def _keep_topk_fake(score, k):
    return score.new_empty((score.shape[0], k), dtype=torch.int64)


def _gather_tokens_fake(x, idx):
    return x.new_empty((x.shape[0], idx.shape[1] + 1, x.shape[2]))


def _gather_tokens_backward_fake(grad_kept, idx, num_tokens):
    return grad_kept.new_empty((grad_kept.shape[0], num_tokens, grad_kept.shape[2]))


def _prune_tokens_fake(x, score, k):
    return x.new_empty((x.shape[0], k + 1, x.shape[2])), x.new_empty((x.shape[0], k), dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# Case fields of a call (looked up on every call: each reads the tensor's metadata once).
# ----------------------------------------------------------------------------------------------------------------
def _attention_fields(q, *_):
    _, _, tokens, dim = q.shape
    return q.device.type, q.dtype, tokens, dim, q.numel() == 0


def _attention_backward_fields(grad_out, grad_score, q, *_):
    return _attention_fields(q)


def _score_fields(score, k):
    return score.device.type, score.dtype, score.shape[1] + 1, 0, score.numel() == 0


def _tokens_fields(x, *_):
    return x.device.type, x.dtype, x.shape[1], 0, x.numel() == 0


def _gather_backward_fields(grad_kept, idx, num_tokens):
    return grad_kept.device.type, grad_kept.dtype, num_tokens, 0, grad_kept.numel() == 0


def _prune_fields(x, score, k):
    return x.device.type, score.dtype, x.shape[1], 0, x.numel() == 0


# ----------------------------------------------------------------------------------------------------------------
# The ops.
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpSpec:
    """One op of the contract.

    Attributes:
        name: the registered name, ``supervit::<name>`` (public) and ``supervit::ext_<name>`` (extension).
        backend_fn: the name of the backend function that runs it (the ``Backend`` member).
        schema: its ``torch.library`` schema, arguments and returns.
        fake: its fake implementation (output metadata from input metadata).
        case_fields: the fields of one call's ``Case``, from the call's arguments, as a plain tuple (it hashes and
            compares equal to the ``Case``, and costs a fraction of building one: the dispatcher looks it up on
            every call).
    """

    name: str
    backend_fn: str
    schema: str
    fake: Callable
    case_fields: Callable[..., tuple]

    def case(self, *args) -> Case:
        """The ``Case`` of a call with ``args``."""
        return Case(*self.case_fields(*args))


OPS: dict[str, OpSpec] = {spec.backend_fn: spec for spec in (
    OpSpec("attention", "attention_forward",
           "(Tensor q, Tensor k, Tensor v, float scale, bool return_cls_score) -> (Tensor, Tensor, Tensor)",
           _attention_fake, _attention_fields),
    OpSpec("attention_backward", "attention_backward",
           "(Tensor grad_out, Tensor grad_score, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale,"
           " bool has_score_grad) -> (Tensor, Tensor, Tensor)",
           _attention_backward_fake, _attention_backward_fields),
    OpSpec("keep_topk", "keep_topk", "(Tensor score, int k) -> Tensor", _keep_topk_fake, _score_fields),
    OpSpec("gather_tokens", "gather_tokens", "(Tensor x, Tensor idx) -> Tensor", _gather_tokens_fake, _tokens_fields),
    OpSpec("gather_tokens_backward", "gather_tokens_backward",
           "(Tensor grad_kept, Tensor idx, int num_tokens) -> Tensor", _gather_tokens_backward_fake,
           _gather_backward_fields),
    OpSpec("prune_tokens", "prune_tokens_forward", "(Tensor x, Tensor score, int k) -> (Tensor, Tensor)",
           _prune_tokens_fake, _prune_fields),
)}
"""The contract's ops by backend function name."""


# What the compiled kernels (Triton and the CUDA extension) take: the dtypes, and the op groups whose limits
# their ``supports`` states (attention: head dims; top-k: the in-program sort's length).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ATTENTION_OPS = ("attention_forward", "attention_backward")
TOPK_OPS = ("keep_topk", "prune_tokens_forward")
GATHER_OPS = ("gather_tokens", "gather_tokens_backward")


@runtime_checkable
class Backend(Protocol):
    """What a backend module provides (``reference.py`` is the executable specification of every function).

    ``is_available`` answers for a device (fixed for the process); ``supports`` is the one capability query,
    asked per op (a key of ``OPS``) and ``Case``: a backend is only ever called on cases it supports, inputs as
    the caller passed them (strided views included). The op functions return what the fakes of ``OPS`` state.
    """

    NAME: str

    def is_available(self, device: torch.device) -> tuple[bool, str]:
        """(True, "") when the backend can run on ``device``, else (False, why)."""

    def supports(self, op: str, case: Case) -> bool:
        """Whether the backend runs ``op`` on ``case`` (else the reference does)."""

    def attention_forward(self, q: Tensor, k: Tensor, v: Tensor, scale: float,
                          return_cls_score: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(out [B,H,N,D] token-major, score [B,N-1] or [B,0], lse [B,H,N])."""

    def attention_backward(self, grad_out: Tensor, grad_score: Tensor, q: Tensor, k: Tensor, v: Tensor,
                           out: Tensor, lse: Tensor, scale: float,
                           has_score_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(dq, dk, dv) for upstream grads on out and (when ``has_score_grad``) on score."""

    def keep_topk(self, score: Tensor, k: int) -> Tensor:
        """idx [B, k] int64: descending score, the lower index first on ties."""

    def gather_tokens(self, x: Tensor, idx: Tensor) -> Tensor:
        """[B, k+1, C] = [x[:, :1], x[b, 1 + idx[b]]]."""

    def gather_tokens_backward(self, grad_kept: Tensor, idx: Tensor, num_tokens: int) -> Tensor:
        """[B, N, C]: the kept rows stored back (CLS and 1 + idx), zeros elsewhere."""

    def prune_tokens_forward(self, x: Tensor, score: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(x_kept [B, k+1, C], idx [B, k]): top-k of score, then the gather."""
