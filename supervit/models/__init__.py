"""SuperViT super-networks (registered with timm on import), the operating point (``Subnet``), checkpoint reading,
model configs and analytic cost.

Under a command line that defers its imports (``supervit.DEFERRED``) only ``subnet`` loads with the package; the
rest (torch, timm, the registration with timm) on first use of any other name, or ``load()``.
"""
import importlib

from .subnet import (Subnet, SubnetError, check_subnet, check_subnets, format_subnets, largest_full, model_subnets,
                     parse_subnets)

# name -> submodule defining it
_EXPORTS = {
    "checkpoint": ["CheckpointError", "LoadedCheckpoint", "Weights", "convert_plain_vit_state_dict",
                   "extract_state_dict", "has_ema_weights", "is_plain_vit_state", "load_checkpoint", "load_weights",
                   "pick_weights", "read_checkpoint", "state_fit", "strip_wrapper_prefixes", "evaluated_ema"],
    "compile": ["compile_model", "graphs_needed"],
    "config": ["create_from_config", "model_config", "model_for_checkpoint", "model_identity", "recorded_arch",
               "recorded_model_config"],
    "flops": ["flops"],
    "pretrained": ["published_accuracy"],
    "super_deit": ["SuperDeiT", "super_deit_s"],
    "super_lvvit": ["SuperLVViT", "super_lvvit_s"],
    "super_vit": ["SuperVisionTransformer"],
}
_SUBNET_NAMES = ["Subnet", "SubnetError", "check_subnet", "check_subnets", "format_subnets", "largest_full",
                 "model_subnets", "parse_subnets"]
__all__ = _SUBNET_NAMES + [name for names in _EXPORTS.values() for name in names]


def load():
    """Import every submodule (registering the models with timm) and bind its public names here; returns this
    module."""
    module = globals()
    for sub, names in _EXPORTS.items():
        loaded = importlib.import_module(f".{sub}", __name__)
        for name in names:
            module[name] = getattr(loaded, name)
    return importlib.import_module(__name__)


def __getattr__(name):
    if any(name in names for names in _EXPORTS.values()):
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _deferred() -> bool:
    import sys

    return bool(getattr(sys.modules.get(__name__.rpartition(".")[0]), "DEFERRED", False))


if not _deferred():
    load()
