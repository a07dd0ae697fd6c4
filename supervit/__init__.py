"""SuperViT: one vision transformer, 12 operating points (4 token grids x 3 keep rates), fused pruning ops.

``import supervit`` registers ``super_deit_s`` and ``super_lvvit_s`` with timm when timm (and torchvision, which
timm's data helpers use) can be imported; the ops in ``supervit.kernels`` need only torch (and triton for the
Triton backend).
"""
from . import kernels

try:
    from . import models
except ImportError as _err:
    if (_err.name or "").split(".")[0] not in ("timm", "torchvision"):
        raise
    _MODELS_ERROR = _err  # timm or torchvision missing: the kernels still work

    def __getattr__(name):
        if name == "models":
            raise ImportError(f"supervit.models needs timm and torchvision: {_MODELS_ERROR}") from _MODELS_ERROR
        raise AttributeError(f"module 'supervit' has no attribute {name!r}")

__version__ = "0.1.0"
__all__ = ["kernels", "models"]
