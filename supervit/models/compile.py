"""torch.compile of a super-network: one graph per sub-network, within dynamo's recompile limit."""
from __future__ import annotations

import torch
from torch import nn


def graphs_needed(model: nn.Module, modes: int = 2) -> int:
    """Graphs dynamo caches for ``model.forward`` when every sub-network runs in ``modes`` modes (training with
    gradients, and evaluation): one per (sub-network, mode)."""
    return len(model.subnets()) * modes


def compile_model(model: nn.Module, modes: int = 2, **compile_kwargs):
    """``torch.compile(model, **compile_kwargs)`` after raising ``torch._dynamo.config.recompile_limit`` (process
    wide, never lowered) to ``graphs_needed(model, modes)``.

    Each sub-network (img_size, keep_ratio) is traced with constant arguments (dynamo guards on their values),
    so each gets its own graph without graph breaks, through ``forward``'s arguments or ``set_subnet``. PyTorch's
    default limit of 8 graphs per function is below the 12 sub-networks: past it, ``fullgraph=True`` raises and
    otherwise the function silently falls back to eager.
    """
    limit = graphs_needed(model, modes)
    if torch._dynamo.config.recompile_limit < limit:
        torch._dynamo.config.recompile_limit = limit
    return torch.compile(model, **compile_kwargs)
