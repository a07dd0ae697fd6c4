"""SuperViT: one vision transformer, 12 operating points (4 token grids x 3 keep rates), fused pruning ops.

``import supervit`` registers ``super_deit_s`` and ``super_lvvit_s`` with timm when timm (and torchvision, which
timm's data helpers use) can be imported; the ops in ``supervit.kernels`` need only torch (and triton for the
Triton backend).

Command lines (``python -m supervit.deploy``, ``python -m supervit.serve``, ``train/main_*.py``) import this package
before they parse their arguments. For them ``kernels`` and ``models`` load on first use (``DEFERRED``), so that
``--help`` and argument errors answer without loading torch: ``python -m`` is recognised by ``sys.argv[0] == "-m"``
(true only while the command's parent packages import), the training scripts set ``SUPERVIT_DEFER_IMPORTS=1`` for
their own process.
"""
import importlib
import os
import sys

DEFERRED = sys.argv[:1] == ["-m"] or os.environ.get("SUPERVIT_DEFER_IMPORTS") == "1"
_MODELS_ERROR = None


def _import_models():
    global _MODELS_ERROR
    try:
        return importlib.import_module(".models", __name__)
    except ImportError as err:
        if (err.name or "").split(".")[0] not in ("timm", "torchvision"):
            raise
        _MODELS_ERROR = err  # timm or torchvision missing: the kernels still work
        sys.modules.pop(f"{__name__}.models", None)
        return None


if not DEFERRED:
    from . import kernels
    if _import_models() is not None:
        from . import models


def __getattr__(name):
    if name == "kernels":
        return importlib.import_module(".kernels", __name__)
    if name == "models":
        if DEFERRED and _MODELS_ERROR is None and _import_models() is not None:
            return sys.modules[f"{__name__}.models"].load()
        raise ImportError(f"supervit.models needs timm and torchvision: {_MODELS_ERROR}") from _MODELS_ERROR
    raise AttributeError(f"module 'supervit' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["kernels", "models"]
