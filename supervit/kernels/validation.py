"""Argument checks shared by the public ops: each error names the argument and what it accepts."""
from __future__ import annotations

import math
import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)


def check_tensor(name: str, t, rank: int, dtypes=FLOAT_DTYPES, layout: str = "") -> None:
    """``t`` must be a tensor of ``rank`` dims with a dtype in ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} dtype must be one of ({names}), got {str(t.dtype).replace('torch.', '')}")


def check_same_device(**tensors) -> None:
    """All tensors on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {devices}")


def is_plain_int(value) -> bool:
    """A Python int that is not a bool (``True`` is an int to Python, never a size or an index here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_keep_ratio(keep_ratio) -> float:
    """A finite float in (0, 1]."""
    try:
        value = float(keep_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    return value


def check_scale(scale) -> float:
    """A finite number > 0 (the attention logit scale)."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a finite number > 0 or None (D ** -0.5), got {scale!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"scale must be a finite number > 0 or None (D ** -0.5), got {scale!r}")
    return value


def check_k(k, num_patch_tokens: int) -> int:
    """An int in [1, N-1] where N-1 is the number of patch tokens (Python or NumPy int; not bool or float)."""
    bad = ValueError(f"k must be an int in [1, {num_patch_tokens}] (1..N-1), got {k!r}")
    if isinstance(k, (bool, torch.Tensor)):
        raise bad
    try:
        k = operator.index(k)
    except TypeError:
        raise bad from None
    if not 1 <= k <= num_patch_tokens:
        raise ValueError(f"k must be in [1, {num_patch_tokens}] (1..N-1), got {k}")
    return k


def check_indices_in_range(idx: torch.Tensor, num_patch_tokens: int) -> None:
    """Every index in [0, N-1) and unique per row (eager mode only; costs one device sync)."""
    if torch.compiler.is_compiling() or idx.numel() == 0:
        return
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= num_patch_tokens:
        raise ValueError(f"idx values must be in [0, {num_patch_tokens - 1}], got min {low}, max {high}")
    sorted_idx = idx.sort(dim=1).values
    if bool((sorted_idx[:, 1:] == sorted_idx[:, :-1]).any()):
        raise ValueError("idx must hold unique indices in every row")
