"""Translations of the ``supervit`` ops for export: core ATen (torch.export) and standard ONNX.

An exported program that still calls ``torch.ops.supervit.*`` needs this package wherever it is loaded. Replacing
every op by its translation, written with the executable specification in ``reference.py``, leaves a program of
core ATen ops only (matmul, softmax, sort, gather, cat) that loads with torch alone, compiles with AOTInductor
into a package the C++ runtime can run, and converts to ONNX.

* ``aten_translations()``: ``{op overload: translation}``, one entry per supervit op, for
  ``ExportedProgram.run_decompositions`` (see ``decomposition_table``).
* ``onnx_translations()``: the one ATen op of those translations the ONNX exporter has no function for: the
  stable sort of ``keep_topk`` becomes ONNX ``TopK`` over the whole axis, whose tie rule (the lower index first)
  is the stable sort's and ours.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import ops as _ops  # noqa: F401  (registers torch.ops.supervit.*)
from . import reference
from .contract import accumulation_dtype, token_major


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, return_cls_score: bool):
    """``supervit::attention``: (out [B,H,N,D] token-major, score [B,N-1] or [B,0], lse [B,H,N]).

    out and score come from one softmax (``reference.attention``); lse, the saved statistic of the backward, is
    the log-sum-exp of the same logits (dropped from an inference graph, where nothing reads it).
    """
    acc = accumulation_dtype(q.dtype)
    result = reference.attention(q, k, v, scale, return_cls_score)
    out, score = result if return_cls_score else (result, q.new_empty((q.shape[0], 0), dtype=acc))
    lse = torch.logsumexp((q @ k.transpose(-2, -1)).to(acc) * scale, dim=-1)  # [B, H, N]
    return token_major(out), score, lse


def aten_translations() -> dict:
    """``{torch.ops.supervit.<op>.default: translation}`` for every supervit op: attention as above, every other op
    its reference function (same signature; keep_topk is a stable descending sort cut at k, ties to the lower
    index)."""
    ops = torch.ops.supervit
    return {
        ops.attention.default: attention,
        ops.attention_backward.default: reference.attention_backward,
        ops.keep_topk.default: reference.keep_topk,
        ops.gather_tokens.default: reference.gather_tokens,
        ops.gather_tokens_backward.default: reference.gather_tokens_backward,
        ops.prune_tokens.default: reference.prune_tokens_forward,
    }


def decomposition_table() -> dict:
    """torch.export's default decompositions (to core ATen) plus the supervit translations."""
    table = torch.export.default_decompositions()
    table.update(aten_translations())
    return table


def to_core_aten(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every supervit op replaced by its translation (core ATen only)."""
    return program.run_decompositions(decomposition_table())


def onnx_translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` of a ``to_core_aten`` program."""
    from onnxscript import opset18 as onnx_op

    def stable_sort(self, stable=None, dim: int = -1, descending: bool = False):
        # aten.sort.stable -> TopK over the whole axis, sorted; TopK puts the lower index first among equal values,
        # which is what a stable sort does in either direction.
        axis_len = onnx_op.Reshape(onnx_op.Gather(onnx_op.Shape(self), dim, axis=0),
                                   onnx_op.Constant(value_ints=[1]))
        return onnx_op.TopK(self, axis_len, axis=dim, largest=1 if descending else 0, sorted=1)

    return {torch.ops.aten.sort.stable: stable_sort}
