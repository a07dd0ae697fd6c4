"""SuperViT with the LV-ViT-S body (``super_lvvit_s``): conv stem, halved residuals, aux token head, MixToken."""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models import register_model

from ..kernels.validation import is_plain_int
from .builder import build_super_vit
from .layers import ConvStemPatchEmbed
from .pretrained import default_cfgs  # noqa: F401 - timm's register_model reads the module's default_cfgs
from .super_vit import SuperVisionTransformer, guard_traced_args, scaled_box

torch.fx.wrap("guard_traced_args")  # a leaf of FX graphs traced from this module too

Box = tuple[int, int, int, int]  # (h1, w1, h2, w2) on a patch grid, end-exclusive


def mix_region(x: torch.Tensor, box: Box | torch.Tensor, spatial_dims: tuple[int, int]) -> torch.Tensor:
    """Copy of ``x`` whose ``box`` region comes from the batch in reverse order (``x.flip(0)``).

    ``box``: (h1, w1, h2, w2) ints, or an int64 tensor [4] (a mask instead of slices: under torch.compile one graph
    serves every box).
    """
    if isinstance(box, torch.Tensor):
        dim_h, dim_w = spatial_dims
        rows = torch.arange(x.shape[dim_h], device=x.device)
        cols = torch.arange(x.shape[dim_w], device=x.device)
        inside = ((rows >= box[0]) & (rows < box[2]))[:, None] & ((cols >= box[1]) & (cols < box[3]))[None, :]
        shape = [1] * x.dim()
        shape[dim_h], shape[dim_w] = x.shape[dim_h], x.shape[dim_w]
        return torch.where(inside.reshape(shape), x.flip(0), x)
    h1, w1, h2, w2 = box
    index = [slice(None)] * x.dim()
    index[spatial_dims[0]] = slice(h1, h2)
    index[spatial_dims[1]] = slice(w1, w2)
    mixed = x.clone()
    mixed[tuple(index)] = x.flip(0)[tuple(index)]
    return mixed


def _is_int(value) -> bool:
    """A plain int, or under torch.compile the symbolic int dynamo makes of a changing box coordinate."""
    return is_plain_int(value) or (isinstance(value, torch.SymInt) and torch.compiler.is_compiling())


def check_box(box, grid: int) -> None:
    """``box`` = (h1, w1, h2, w2) ints (or an integer tensor [4]) with 0 <= h1 <= h2 <= grid and
    0 <= w1 <= w2 <= grid. A tensor's values are checked in eager mode only (reading them would break a graph)."""
    if isinstance(box, torch.Tensor):
        ok = box.shape == (4,) and not box.is_floating_point() and not box.is_complex() and box.dtype != torch.bool
        if ok and torch.compiler.is_compiling():
            return
        box = tuple(box.tolist()) if ok else box
    ok = isinstance(box, (tuple, list)) and len(box) == 4 and all(_is_int(c) for c in box)
    if not ok or not (0 <= box[0] <= box[2] <= grid and 0 <= box[1] <= box[3] <= grid):
        raise ValueError(f"mix_box must be (h1, w1, h2, w2) ints on the {grid}x{grid} grid of the largest size with "
                         f"0 <= h1 <= h2 <= {grid} and 0 <= w1 <= w2 <= {grid}, got {box!r}")


class SuperLVViT(SuperVisionTransformer):
    """LV-ViT-style super-network with the ``head`` on CLS and the ``aux_head`` on every remaining patch token.

    Outputs: in eval mode ``cls_logits + aux_weight * aux_logits.max(dim=1).values`` at every sub-network; in
    training mode ``(cls_logits, aux_logits [B, g*g, K], box)`` at the full sub-network (largest size, keep 1) and
    ``cls_logits`` elsewhere. MixToken (training only): ``mix_box`` = (h1, w1, h2, w2) on the grid of the largest
    size is rescaled to the sub-network's grid; that region of the patch grid is taken from the reversed batch and
    the aux outputs of the region are flipped back. Under torch.compile pass the box as an int64 tensor [4]: one
    graph then serves every box (4 ints would specialise the graph on their values).
    """

    def __init__(self, aux_weight: float = 0.25, stem_dim: int = 64, **kwargs):
        patch_size, in_chans = kwargs.get("patch_size", 16), kwargs.get("in_chans", 3)
        embed_dim = kwargs.get("embed_dim", 384)
        kwargs.setdefault("norm_eps", 1e-5)
        kwargs.setdefault("skip_lam", 2.0)
        kwargs.setdefault("qkv_bias", False)
        stem = ConvStemPatchEmbed(patch_size, in_chans, embed_dim, stem_dim)
        super().__init__(patch_embed=stem, **kwargs)
        self.aux_weight = aux_weight
        self.arch_kwargs.update(aux_weight=float(aux_weight), stem_dim=int(stem_dim))
        self.aux_head = nn.Linear(embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        if isinstance(self.aux_head, nn.Linear):
            trunc_normal_(self.aux_head.weight, std=0.02)
            nn.init.zeros_(self.aux_head.bias)

    def reset_classifier(self, num_classes: int, global_pool=None):
        super().reset_classifier(num_classes, global_pool)
        self.aux_head = self.new_classifier(num_classes)

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens [B, n, C] -> eval logits ``head(CLS) + aux_weight * max over patches of aux_head`` [B, K]; the CLS
        features [B, C] when ``pre_logits`` or without classifier (``num_classes=0``)."""
        cls = x[:, 0]
        if pre_logits or self.num_classes == 0:
            return cls
        return self.head(cls) + self.aux_weight * self.aux_head(x[:, 1:]).max(dim=1).values

    def forward(self, x, img_size: int | None = None, keep_ratio: float | None = None, mix_box: Box | None = None):
        """Logits of sub-network (img_size, keep_ratio); see the class docstring for training outputs."""
        x, img_size, keep_ratio = self._resolve(x, img_size, keep_ratio)
        if isinstance(mix_box, torch.fx.Proxy):  # FX traces without MixToken
            x, mix_box = guard_traced_args(x, ("mix_box",), (mix_box,), (None,)), None
        grid = self.embed(x, img_size)  # [B, C, g, g]
        side = img_size // self.patch_size
        box = None
        if self.training and mix_box is not None:
            check_box(mix_box, self.img_sizes[-1] // self.patch_size)
            box = scaled_box(mix_box, side, self.img_sizes[-1] // self.patch_size)
            grid = mix_region(grid, box, (2, 3))
        tokens, _ = self.run_blocks(self.tokens_with_position(grid, img_size), keep_ratio)
        tokens = self.norm(tokens)
        if not self.training:
            return self.forward_head(tokens)
        cls_logits = self.head(tokens[:, 0])
        if (img_size, keep_ratio) != (self.img_sizes[-1], 1.0):
            return cls_logits
        aux_logits = self.aux_head(tokens[:, 1:])  # [B, g*g, K]
        if box is not None:
            grid_logits = aux_logits.reshape(aux_logits.shape[0], side, side, -1)
            aux_logits = mix_region(grid_logits, box, (1, 2)).reshape(aux_logits.shape)
        return cls_logits, aux_logits, box if box is not None else (0, 0, 0, 0)


@register_model
def super_lvvit_s(pretrained: bool = False, **kwargs) -> SuperLVViT:
    """SuperViT(LV-ViT-S): embed 384, depth 16, 6 heads, MLP ratio 3, no qkv bias; 26,271,248 parameters.

    ``pretrained=True`` loads ``pretrained_cfg_overlay=dict(file=PATH)`` (see ``builder.build_super_vit``).
    """
    config = dict(patch_size=16, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, qkv_bias=False)
    return build_super_vit(SuperLVViT, "super_lvvit_s", pretrained, **{**config, **kwargs})
