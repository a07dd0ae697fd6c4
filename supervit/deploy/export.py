"""Export one sub-network to ONNX, a ``.pt2`` program or an AOTInductor package, loadable without this package.

Mechanism: ``torch.export`` traces the sub-network (``SubnetModule``: fixed size and keep rate, one position table);
``supervit.kernels.export_decompositions`` then replaces every supervit op by its core-ATen translation, so the
saved program holds standard ops only. ONNX is converted from that program by ``torch.onnx.export(dynamo=True)``
(the stable sort of the top-k becomes ONNX TopK); AOTInductor compiles it into a package whose C++ code runs
without Python. Every file is written to a temporary name in the target folder and renamed at the end; on any
failure nothing is left behind.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..files import atomic_write
from ..kernels import export_decompositions
from ..models.subnet import SubnetError, check_subnet
from . import DeployError
from .options import FORMATS, SUFFIX
from .runners import INPUT_SHAPE_KEY, load_runner

DYNAMIC_TRACE_BATCH = 2  # the batch traced for a dynamic-batch export (1 would be specialized as a constant)


def check_export_subnet(model: nn.Module, img_size, keep_ratio) -> tuple[int, float]:
    """(img_size, keep_ratio) if the model was trained for it (the one rule set of sub-networks, trained keep
    rates only); DeployError naming the accepted values otherwise."""
    try:
        return check_subnet(model, img_size, keep_ratio, trained=True)
    except SubnetError as err:
        raise DeployError(str(err)) from None


class OnePositionTable(nn.Module):
    """Stands in for a super-network's ``pos_embed_list``, holding only the table of one size (entry ``index``)."""

    def __init__(self, table: torch.Tensor, index: int, count: int):
        super().__init__()
        self.table = nn.Parameter(table.detach().clone(), requires_grad=False)  # (1, 1 + g*g, C)
        self.index, self.count = index, count

    def __getitem__(self, i: int) -> nn.Parameter:
        if i != self.index:
            raise IndexError(f"this sub-network holds position table {self.index} only, not {i}")
        return self.table

    def __len__(self) -> int:
        return self.count


class SubnetModule(nn.Module):
    """Sub-network (img_size, keep_ratio) of ``model``: ``forward(x [B, C, S_in, S_in]) -> logits [B, K]``.

    The super-network is deep-copied (the caller's model is left as it is); the copy holds the position table of
    ``img_size`` only. The input may have any side ``S_in``: it is resized to ``img_size`` inside,
    as the super-network does.

    Args:
        model: a SuperVisionTransformer (DeiT or LV-ViT body).
        img_size, keep_ratio: the operating point; both must be among those the model was trained for.
        with_kept: also return the kept patch-token indices of each pruning block, ``(logits, idx_1, idx_2, ...)``
            with idx_i [B, k_i] int64 into the patch tokens of that block's input (none when keep_ratio == 1).
    """

    def __init__(self, model: nn.Module, img_size: int, keep_ratio: float, with_kept: bool = False):
        super().__init__()
        self.img_size, self.keep_ratio = check_export_subnet(model, img_size, keep_ratio)
        index = model.img_sizes.index(self.img_size)
        net = copy.deepcopy(model).eval()
        net.pos_embed_list = OnePositionTable(model.pos_embed_list[index], index, len(model.pos_embed_list))
        net.set_subnet(self.img_size, self.keep_ratio)
        net.requires_grad_(False)
        self.net = net
        self.with_kept = bool(with_kept)

    def forward(self, x: torch.Tensor):
        if not self.with_kept:
            return self.net(x, img_size=self.img_size, keep_ratio=self.keep_ratio)
        tokens, kept = self.net.forward_trace(x, self.img_size, self.keep_ratio)
        return (self.net.forward_head(tokens), *kept)


@dataclass
class ExportResult:
    """What ``export_subnet`` wrote."""

    path: str
    format: str
    img_size: int
    keep_ratio: float
    batch: int | None      # None: any batch size
    input_size: int        # side of the square input image the export takes
    output_names: list
    seconds: float         # wall time of the whole export (AOTInductor: including the C++ compilation)
    size_bytes: int


def output_names(subnet: SubnetModule) -> list[str]:
    """``["logits"]`` plus ``kept_<block>`` for each pruning block when the export returns kept indices."""
    if not subnet.with_kept or subnet.keep_ratio >= 1.0:
        return ["logits"]
    return ["logits"] + [f"kept_{i}" for i in subnet.net.prune_layers]


def check_export_args(model: nn.Module, fmt: str, out, batch, input_size) -> tuple[str, int]:
    """(absolute output path, input side) after checking every argument; DeployError naming the bad one."""
    if fmt not in FORMATS:
        raise DeployError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    side = _input_side(model, batch, input_size)
    path = os.path.abspath(os.fspath(out))
    if not path.endswith(SUFFIX[fmt]):
        raise DeployError(f"out must end with {SUFFIX[fmt]!r} for format {fmt!r}, got {os.fspath(out)!r}")
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise DeployError(f"out {os.fspath(out)!r} is a directory; give a file path ending with {SUFFIX[fmt]!r}")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise DeployError(f"out {os.fspath(out)!r}: cannot write to {folder!r} (not an existing writable folder)")
    return path, side


def _input_side(model: nn.Module, batch, input_size) -> int:
    """The input side (``input_size`` or the model's largest size) after checking it and ``batch``."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise DeployError(f"batch must be an int >= 1 (or None for a dynamic batch), got {batch!r}")
    side = model.img_sizes[-1] if input_size is None else input_size
    if isinstance(side, bool) or not isinstance(side, int) or side < model.patch_size:
        raise DeployError(f"input_size must be an int >= the patch size {model.patch_size}, got {input_size!r}")
    return side


def export_program(model: nn.Module, img_size: int, keep_ratio: float, batch: int | None = None,
                   input_size: int | None = None,
                   with_kept: bool = False) -> tuple[torch.export.ExportedProgram, SubnetModule]:
    """(core-ATen ExportedProgram of sub-network (img_size, keep_ratio), the traced ``SubnetModule``).

    Args:
        model: the super-network (its weights are copied; the model itself is not changed).
        img_size, keep_ratio: a trained operating point.
        batch: a fixed batch size, or None for any batch size (dimension ``batch`` of input and outputs).
        input_size: side of the input image; defaults to the model's largest size (resized inside).
        with_kept: also output the kept token indices of each pruning block (see ``SubnetModule``).
    """
    img_size, keep_ratio = check_export_subnet(model, img_size, keep_ratio)
    side = _input_side(model, batch, input_size)
    subnet = SubnetModule(model, img_size, keep_ratio, with_kept=with_kept)
    example = torch.randn(batch or DYNAMIC_TRACE_BATCH, model.in_chans, side, side)
    dynamic = None if batch else {"x": {0: torch.export.Dim("batch", min=1)}}
    with torch.no_grad():
        program = torch.export.export(subnet, (example,), dynamic_shapes=dynamic)
    return export_decompositions.to_core_aten(program), subnet


def write_program(program: torch.export.ExportedProgram, fmt: str, out, names: list[str] | None = None) -> str:
    """Write a core-ATen ``program`` (from ``export_program``) to ``out`` as ``fmt``, atomically; returns the path.

    Args:
        names: ONNX output names (``output_names(subnet)``); default ``logits``, ``output_1``, ...
    """
    if fmt not in FORMATS:
        raise DeployError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    path = os.path.abspath(os.fspath(out))
    with atomic_write(path) as tmp:
        if fmt == "pt2":
            torch.export.save(program, tmp)
        elif fmt == "aoti":
            metadata = {INPUT_SHAPE_KEY: input_shape_text(program)}  # checked by runners.aoti_runner
            torch._inductor.aoti_compile_and_package(program, package_path=tmp,
                                                     inductor_configs={"aot_inductor.metadata": metadata})
        else:
            onnx_program = torch.onnx.export(program, dynamo=True, input_names=["image"], output_names=names,
                                             custom_translation_table=export_decompositions.onnx_translations(),
                                             verbose=False)
            _name_batch_dim(onnx_program.model.graph)
            onnx_program.save(tmp, external_data=False)
    return path


def input_shape_text(program: torch.export.ExportedProgram) -> str:
    """The image input's shape as ``"3,1,16,16"``, with ``batch`` for a dynamic first dimension."""
    image = [n for n in program.graph.nodes if n.op == "placeholder"][-1]
    return ",".join(str(d) if isinstance(d, int) else "batch" for d in image.meta["val"].shape)


def _name_batch_dim(graph) -> None:
    """Call the symbolic first dimension of the ONNX graph's input ``batch`` everywhere it appears."""
    import onnx_ir as ir

    first = graph.inputs[0].shape[0]
    if not isinstance(first, ir.SymbolicDim):
        return  # a fixed batch
    values = list(graph.inputs) + list(graph.outputs) + [v for node in graph.all_nodes() for v in node.outputs]
    for value in values:
        if value.shape is not None and any(d == first for d in value.shape):
            value.shape = ir.Shape(["batch" if d == first else d for d in value.shape])


def export_subnet(model: nn.Module, img_size: int, keep_ratio: float, fmt: str, out, batch: int | None = None,
                  input_size: int | None = None, with_kept: bool = False) -> ExportResult:
    """Export sub-network (img_size, keep_ratio) of ``model`` (eval mode) to ``out`` in format ``fmt``.

    Args:
        model: the super-network (random or trained weights).
        img_size, keep_ratio: a trained operating point; anything else is a DeployError naming the accepted ones.
        fmt: ``onnx`` (``.onnx``), ``pt2`` (``torch.export.save``, ``.pt2``) or ``aoti`` (AOTInductor package,
            ``.pt2``).
        out: output file; its folder must exist. Written atomically.
        batch: a fixed batch size, or None for any batch size.
        input_size: side of the square input image; defaults to the model's largest size.
        with_kept: also output the kept token indices (for verification).

    Returns:
        an ``ExportResult``. Load the file with ``supervit.deploy.runners.load_runner(path, fmt)`` or directly
        with torch / onnxruntime.
    """
    img_size, keep_ratio = check_export_subnet(model, img_size, keep_ratio)
    path, side = check_export_args(model, fmt, out, batch, input_size)
    start = time.perf_counter()
    program, subnet = export_program(model, img_size, keep_ratio, batch, side, with_kept)
    names = output_names(subnet)
    write_program(program, fmt, path, names)
    return ExportResult(path=path, format=fmt, img_size=img_size, keep_ratio=keep_ratio, batch=batch,
                        input_size=side, output_names=names, seconds=time.perf_counter() - start,
                        size_bytes=os.path.getsize(path))


def parity(result: ExportResult, model: nn.Module, batch: int = DYNAMIC_TRACE_BATCH, seed: int = 0) -> dict:
    """Compare the export in its own runtime with the sub-network in PyTorch eager on one random batch.

    Returns ``{"max_abs_diff": float (logits), "kept_equal": bool or None (exports without kept indices)}``.
    """
    batch = result.batch or batch
    side = result.input_size
    x = torch.randn(batch, model.in_chans, side, side, generator=torch.Generator().manual_seed(seed))
    return compare_with_eager(result.path, result.format, model, result.img_size, result.keep_ratio, x,
                              with_kept=len(result.output_names) > 1)


def compare_with_eager(path: str, fmt: str, model: nn.Module, img_size: int, keep_ratio: float, x: torch.Tensor,
                       with_kept: bool = False) -> dict:
    """``parity``'s comparison of the export at ``path`` with sub-network (img_size, keep_ratio) on images ``x``:
    ``{"max_abs_diff": float, "kept_equal": bool or None}``."""
    subnet = SubnetModule(model, img_size, keep_ratio, with_kept=with_kept)
    with torch.no_grad():
        expected = subnet(x)
    expected = expected if with_kept else (expected,)
    got = load_runner(path, fmt)(x)
    kept_equal = all(torch.equal(a, b) for a, b in zip(got[1:], expected[1:])) if with_kept else None
    return {"max_abs_diff": (got[0] - expected[0]).abs().max().item(), "kept_equal": kept_equal}
