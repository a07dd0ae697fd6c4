"""SuperViT with the DeiT-S body (``super_deit_s``)."""
from __future__ import annotations

from timm.models import register_model

from .builder import build_super_vit
from .pretrained import default_cfgs  # noqa: F401 - timm's register_model reads the module's default_cfgs
from .super_vit import SuperVisionTransformer


class SuperDeiT(SuperVisionTransformer):
    """DeiT-style super-network: Conv2d patchify, LayerNorm eps 1e-6, qkv bias, GELU MLP."""

    def __init__(self, **kwargs):
        kwargs.setdefault("norm_eps", 1e-6)
        super().__init__(**kwargs)


@register_model
def super_deit_s(pretrained: bool = False, **kwargs) -> SuperDeiT:
    """SuperViT(DeiT-S): embed 384, depth 12, 6 heads, MLP ratio 4; 22,170,088 parameters.

    ``pretrained=True`` loads ``pretrained_cfg_overlay=dict(file=PATH)`` (see ``builder.build_super_vit``).
    """
    config = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True)
    return build_super_vit(SuperDeiT, "super_deit_s", pretrained, **{**config, **kwargs})
