"""Run an exported sub-network in the runtime of its format, with torch (and onnxruntime for ONNX) only.

Nothing here imports the rest of the package, so a deployment can copy this file alone. Each runner takes an
image batch [B, C, S, S] (a torch tensor) and returns a tuple of tensors: (logits [B, K],) or, for an export made
with the kept indices, (logits, idx_1, idx_2, ...).

An AOTInductor package compiled for a fixed batch does not check its input (PyTorch's loader, Python or C++, returns
the rows of the batch it was compiled for, whatever it is given); ``aoti_runner`` checks the input shape that
``supervit.deploy.export`` records in the package's metadata and refuses any other.
"""
from __future__ import annotations

from typing import Callable

import torch

FORMATS = ("onnx", "pt2", "aoti")
INPUT_SHAPE_KEY = "supervit.input_shape"  # AOTInductor metadata: "3,1,16,16" ("batch" for a dynamic dimension)


def _as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (list, tuple)) else (result,)


def pt2_runner(path: str) -> Callable:
    """A ``torch.export.save``-d program, run by the PyTorch interpreter."""
    module = torch.export.load(path).module()

    def run(x: torch.Tensor) -> tuple:
        with torch.no_grad():
            return _as_tuple(module(x))
    return run


def aoti_runner(path: str) -> Callable:
    """An AOTInductor package (``aoti_compile_and_package``): compiled code, loaded from Python. An input whose
    shape differs from the one the package was compiled for is a ValueError (see the module docstring)."""
    compiled = torch._inductor.aoti_load_package(path)
    expected = compiled.get_metadata().get(INPUT_SHAPE_KEY)
    dims = expected.split(",") if expected else None

    def run(x: torch.Tensor) -> tuple:
        if dims is not None and (x.dim() != len(dims) or any(d != "batch" and int(d) != n
                                                             for d, n in zip(dims, x.shape))):
            fixed = "" if dims[0] == "batch" else f" (a fixed batch of {dims[0]}; export with a dynamic batch to " \
                                                   "take any)"
            raise ValueError(f"{path}: this AOTInductor package takes input [{', '.join(dims)}]{fixed}, got "
                             f"{list(x.shape)}")
        with torch.no_grad():
            return _as_tuple(compiled(x))
    return run


def onnx_runner(path: str, threads: int | None = None) -> Callable:
    """An ONNX file in ONNX Runtime (CPU execution provider, all graph optimizations).

    Args:
        threads: intra-op threads; defaults to torch's thread count so that both runtimes get the same cores.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> tuple:
        outputs = session.run(None, {input_name: x.detach().cpu().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)
    return run


def load_runner(path: str, fmt: str) -> Callable:
    """The runner of ``path`` exported as ``fmt`` (one of ``FORMATS``)."""
    loaders = {"onnx": onnx_runner, "pt2": pt2_runner, "aoti": aoti_runner}
    if fmt not in loaders:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    return loaders[fmt](path)
