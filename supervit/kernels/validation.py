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


def check_qkv(q, k, v) -> None:
    """q, k, v: tensors [B, H, N, D] of one shape, one floating dtype and one device."""
    if (type(q) is type(k) is type(v) is torch.Tensor and q.dim() == 4 and q.shape == k.shape == v.shape
            and q.dtype == k.dtype == v.dtype and q.dtype in FLOAT_DTYPES and q.device == k.device == v.device):
        return  # the common case, checked in one expression (a batch-1 call is a few dozen microseconds)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4, layout="[B, H, N, D]")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"q, k, v must have one shape [B, H, N, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(q=q, k=k, v=v)


def check_prune_inputs(x, score) -> None:
    """x [B, N, C] tokens (N >= 2) and score [B, N-1], floating, on one device."""
    if (type(x) is type(score) is torch.Tensor and x.dim() == 3 and x.dtype in FLOAT_DTYPES
            and score.dtype in FLOAT_DTYPES and x.device == score.device and x.shape[1] >= 2
            and score.shape == (x.shape[0], x.shape[1] - 1)):
        return  # the common case, checked in one expression
    check_tensor("x", x, 3, layout="[B, N, C]")
    check_tensor("score", score, 2, layout="[B, N-1]")
    check_same_device(x=x, score=score)
    if score.shape != (x.shape[0], x.shape[1] - 1):
        raise ValueError(f"score must have shape [B, N-1] = {(x.shape[0], x.shape[1] - 1)}, got {tuple(score.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"x must hold CLS and at least one patch token (N >= 2), got N = {x.shape[1]}")


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
