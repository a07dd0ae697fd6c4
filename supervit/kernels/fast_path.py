"""The per-call fast path of the ops, and every private Python / PyTorch API it uses, in one place.

At batch 1 a sub-network's forward makes dozens of op calls, and the custom-op layer (~15 us per call) and an
``os.environ.get`` of an unset variable (a KeyError raised and caught, several us) are a visible share of its
latency. Two shortcuts avoid them:

* ``nothing_to_record(*tensors)``: an eager call with nothing to record (no autograd graph to build, plain tensors,
  no compiler, tracer, dispatch or function mode, or functorch transform active) may run the op's implementation
  directly instead of the registered custom op (same result: ``supervit.kernels.ops``). Asking "is any mode,
  tracer or transform active?" takes four private ``torch._C`` calls.
* ``environ_lookup(name)``: a function returning the raw value of an environment variable or None, one C-level dict
  lookup in CPython's backing dict of ``os.environ`` (``os.environ._data``, kept in step by every assignment to
  ``os.environ``).

``SUPERVIT_FAST_PATH=0`` in the environment (read at import) turns both off: every call then goes through the
custom-op layer and ``os.environ.get``. They are off by themselves when a private symbol is missing (a new PyTorch
or Python); ``missing_private_symbols()`` names those, and a test fails when the list is not empty.
"""
from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

# (module, attribute) of every private symbol used here
PRIVATE_SYMBOLS = (
    (torch._C, "_len_torch_dispatch_stack"),
    (torch._C, "_is_torch_function_mode_enabled"),
    (torch._C, "_get_tracing_state"),
    (torch._C, "_are_functorch_transforms_active"),
    (os.environ, "_data"),
    (os.environ, "encodekey"),
)


def missing_private_symbols() -> list[str]:
    """The private symbols the fast path uses that this PyTorch / Python lacks (empty when all are there)."""
    return [f"{getattr(owner, '__name__', type(owner).__name__)}.{name}" for owner, name in PRIVATE_SYMBOLS
            if not hasattr(owner, name)]


REQUESTED = os.environ.get("SUPERVIT_FAST_PATH", "1").strip() != "0"
ENABLED = REQUESTED and not missing_private_symbols()


def _nothing_to_record(*tensors: Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:  # a loop, not any()/all(): no generator objects on the per-call path
        if type(t) is not Tensor or (grad and t.requires_grad):
            return False
    return not (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
                or torch._C._get_tracing_state() is not None or torch._C._are_functorch_transforms_active())


def _always_record(*tensors: Tensor) -> bool:
    return False


nothing_to_record = _nothing_to_record if ENABLED else _always_record
nothing_to_record.__doc__ = "Whether an eager call on ``tensors`` may skip the custom-op layer (module docstring)."


def environ_lookup(name: str):
    """A function of no arguments returning the raw value of environment variable ``name``, or None when unset."""
    if ENABLED:
        return functools.partial(os.environ._data.get, os.environ.encodekey(name))
    return functools.partial(os.environ.get, name)
