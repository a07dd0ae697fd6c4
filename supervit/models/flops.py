"""Analytic cost of a sub-network: multiply-accumulates of every matmul and convolution (GMACs)."""
from __future__ import annotations

import timm
import torch
from torch import nn

from ..kernels.reference import keep_count
from .layers import ConvStemPatchEmbed


def _conv_macs(conv: nn.Conv2d, out_side: int) -> int:
    per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return out_side * out_side * conv.out_channels * per_output


def _patch_embed_macs(model, img_size: int) -> int:
    embed = model.patch_embed
    grid = img_size // model.patch_size
    if isinstance(embed, ConvStemPatchEmbed):
        half = (img_size + 2 * 3 - 7) // 2 + 1
        stem = sum(_conv_macs(c, half) for c in (embed.conv1, embed.conv2, embed.conv3))
        return stem + _conv_macs(embed.proj, grid)
    return _conv_macs(embed.proj, grid)


def flops(model_or_name, img_size: int, keep_ratio: float) -> float:
    """GMACs of sub-network (img_size, keep_ratio): patch embedding, blocks, head (and LV-ViT's aux head on the
    patch tokens left after the last pruning). Per block with n_a tokens into attention and n_m into the MLP:
    4 n_a C^2 + 2 n_a^2 C + 2 mlp_ratio n_m C^2.

    Args:
        model_or_name: a super-network or a registered name such as ``"super_deit_s"``.
    """
    if isinstance(model_or_name, str):
        with torch.device("meta"):
            model = timm.create_model(model_or_name)
    else:
        model = model_or_name
    img_size, keep_ratio = model._check_subnet(img_size, keep_ratio)
    dim = model.embed_dim
    tokens = 1 + (img_size // model.patch_size) ** 2
    macs = _patch_embed_macs(model, img_size)
    for i in range(len(model.blocks)):
        attn_tokens = tokens
        if i in model.prune_layers and keep_ratio < 1.0:
            tokens = keep_count(tokens, keep_ratio) + 1
        macs += 4 * attn_tokens * dim ** 2 + 2 * attn_tokens ** 2 * dim + 2 * model.mlp_ratio * tokens * dim ** 2
    macs += dim * model.num_classes
    if hasattr(model, "aux_head"):
        macs += (tokens - 1) * dim * model.num_classes
    return macs / 1e9
