"""What every Triton wrapper needs around a launch: interpreter mode, the device guard, tile sizes, autotuning.

``TRITON_INTERPRET=1`` must be set before triton is imported; the kernels then run on CPU tensors (slowly: use
few, large tiles). ``SUPERVIT_TRITON_ONE_CONFIG=1`` (tests only) makes every autotuned kernel compile and run
the first config that fits the sequence, so a test run compiles one variant per shape instead of the whole table.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ONE_CONFIG_ENV = "SUPERVIT_TRITON_ONE_CONFIG"


def pow2_at_least(n: int, floor: int) -> int:
    """The smallest power of two >= max(n, floor): a tile or padded width covering ``n``."""
    return max(floor, triton.next_power_of_2(n))


def on_device(t: torch.Tensor):
    """Context in which a launch runs on ``t``'s GPU: Triton launches on the current device and its stream, so a
    tensor on another GPU needs ``torch.cuda.device(t.device)`` around the launch. A no-op off CUDA."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def unit_last_dim(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim has stride 1 (the kernels read the other dims through their strides), else a
    contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def configs_for_length(configs, named_args, **_):
    """Autotune configs whose tiles are not far larger than the sequence (at least one is kept).

    ``named_args["N_BUCKET"]`` is the power-of-two bucket of N (the autotune key). Under
    ``SUPERVIT_TRITON_ONE_CONFIG=1`` only the first fitting config is kept.
    """
    limit = max(32, named_args["N_BUCKET"])
    kept = [c for c in configs if max(v for n, v in c.kwargs.items() if n.startswith("BLOCK")) <= limit]
    kept = kept or configs[-1:]
    return kept[:1] if os.environ.get(ONE_CONFIG_ENV) == "1" else kept
