"""``--compile``: the model compiled once with torch.compile, one graph per sub-network and mode, no graph breaks."""
from __future__ import annotations

from torch import nn


# Graphs per sub-network a run may need: training, evaluation at the evaluation batch and at a smaller last batch,
# and the same two for an EMA copy evaluated on its own.
GRAPH_MODES = 5


def compile_module(module: nn.Module, args) -> nn.Module:
    """``module`` compiled (``supervit.models.compile_model``, fullgraph) when ``--compile``, else itself. The
    compiled wrapper shares the module's parameters: load, save and update the bare module."""
    if not getattr(args, "compile", False):
        return module
    from supervit.models import compile_model

    return compile_model(module, modes=GRAPH_MODES, backend=args.compile_backend, fullgraph=True)
