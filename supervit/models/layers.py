"""Building blocks of the super-networks: attention and pruning go through ``supervit.kernels`` only."""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import DropPath, Mlp

from .. import kernels


# The ops the blocks call, under the names FX treats as leaves: the public ops without their argument checks (the
# blocks build q, k, v, score themselves and the model checked keep_ratio), no wrapper frame on the per-call path.
attention_op = kernels.ops.attention_unchecked
prune_op = kernels.ops.prune_tokens_unchecked
torch.fx.wrap("attention_op")
torch.fx.wrap("prune_op")


class Attention(nn.Module):
    """Multi-head self-attention whose probabilities can also yield the CLS score of the patch tokens.

    Args:
        dim: embedding width C.
        num_heads: H; the head width is C // H.
        qkv_bias: bias on the fused qkv projection (rows ordered [q; k; v], each split into H heads).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_cls_score: bool = False):
        """x [B, N, C] -> y [B, N, C], and score [B, N-1] when ``return_cls_score``."""
        batch, tokens, channels = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, D]
        result = attention_op(q, k, v, self.scale, return_cls_score)
        out, score = result if return_cls_score else (result, None)
        y = self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))
        return (y, score) if return_cls_score else y


class Block(nn.Module):
    """Pre-norm transformer block that optionally keeps only the best-scored tokens before its MLP.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: transformer widths.
        drop_path: stochastic-depth rate of both residual branches.
        norm_eps: LayerNorm epsilon.
        skip_lam: every residual branch is divided by this (LV-ViT uses 2).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, norm_eps=1e-6, skip_lam=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))
        self.skip_lam = skip_lam

    def forward(self, x: torch.Tensor, keep_ratio: float | None = None):
        """x [B, N, C] -> (x [B, k+1, C], idx [B, k] or None). Prunes when ``keep_ratio`` is given and < 1."""
        prune = keep_ratio is not None and keep_ratio < 1.0
        y = self.attn(self.norm1(x), return_cls_score=prune)
        idx = None
        if prune:
            y, score = y
            x = x + self._residual(y)
            x, idx = prune_op(x, score, keep_ratio)
        else:
            x = x + self._residual(y)
        x = x + self._residual(self.mlp(self.norm2(x)))
        return x, idx

    def _residual(self, branch):
        if self.training:  # DropPath acts in training only: elsewhere its call is skipped
            branch = self.drop_path(branch)
        return branch if self.skip_lam == 1.0 else branch / self.skip_lam


class PatchEmbed(nn.Module):
    """Conv2d(in_chans, dim, patch, stride patch): [B, C_in, S, S] -> [B, C, S/p, S/p]."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=384):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x)


class ConvStemPatchEmbed(nn.Module):
    """LV-ViT "4_2" stem: 7x7/2 conv, two 3x3 convs (each BN + ReLU), then a (p/2)x(p/2) patch projection.

    Output [B, C, S/p, S/p] (channels-last strides, so flattening it into [B, N, C] tokens is a view). The BatchNorm
    layers are shared by every input resolution.
    """

    def __init__(self, patch_size=16, in_chans=3, embed_dim=384, stem_dim=64):
        super().__init__()
        if patch_size % 2:
            raise ValueError(f"patch_size must be even for the conv stem, got {patch_size}")
        self.patch_size = patch_size
        self.conv1 = nn.Conv2d(in_chans, stem_dim, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_dim)
        self.conv2 = nn.Conv2d(stem_dim, stem_dim, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_dim)
        self.conv3 = nn.Conv2d(stem_dim, stem_dim, 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(stem_dim)
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(stem_dim, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x):
        # Channels-last activations: the oneDNN/cuDNN convolutions run natively on them, without reordering the
        # 64-channel full-resolution maps on every call (the stem is about a fifth of LV-ViT-S's FLOPs).
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.proj(x)
