"""SuperViT super-networks (registered with timm on import), checkpoint loading, model configs and analytic cost."""
from .checkpoint import (CheckpointError, convert_plain_vit_state_dict, extract_state_dict, has_ema_weights,
                         load_checkpoint, read_checkpoint, state_fit)
from .compile import compile_model, graphs_needed
from .config import create_from_config, model_config, recorded_arch, recorded_model_config
from .flops import flops
from .pretrained import published_accuracy
from .super_deit import SuperDeiT, super_deit_s
from .super_lvvit import SuperLVViT, super_lvvit_s
from .super_vit import SuperVisionTransformer

__all__ = ["SuperVisionTransformer", "SuperDeiT", "SuperLVViT", "super_deit_s", "super_lvvit_s", "flops",
           "load_checkpoint", "read_checkpoint", "state_fit", "extract_state_dict", "convert_plain_vit_state_dict",
           "CheckpointError", "has_ema_weights", "model_config", "create_from_config", "published_accuracy", "compile_model",
           "graphs_needed", "recorded_arch", "recorded_model_config"]
