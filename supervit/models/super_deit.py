"""SuperViT with the DeiT-S body (``super_deit_s``)."""
from __future__ import annotations

from timm.models import register_model

from .super_vit import SuperVisionTransformer


class SuperDeiT(SuperVisionTransformer):
    """DeiT-style super-network: Conv2d patchify, LayerNorm eps 1e-6, qkv bias, GELU MLP."""

    def __init__(self, **kwargs):
        kwargs.setdefault("norm_eps", 1e-6)
        super().__init__(**kwargs)


def _reject_pretrained(pretrained: bool, name: str):
    if pretrained:
        raise ValueError(f"{name}: pretrained=True is not supported (nothing is downloaded); build the model and "
                         "load a released checkpoint with supervit.models.load_checkpoint(model, path)")


_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _model_kwargs(kwargs: dict) -> dict:
    """Drop the loader-only keywords timm.create_model passes to every factory."""
    return {k: v for k, v in kwargs.items() if k not in _TIMM_FACTORY_KWARGS}


@register_model
def super_deit_s(pretrained: bool = False, **kwargs) -> SuperDeiT:
    """SuperViT(DeiT-S): embed 384, depth 12, 6 heads, MLP ratio 4; 22,170,088 parameters."""
    _reject_pretrained(pretrained, "super_deit_s")
    kwargs = _model_kwargs(kwargs)
    config = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True)
    return SuperDeiT(**{**config, **kwargs})
