"""One sub-network of a super-network as a standalone module: fixed (img_size, keep_ratio), eval mode, and only
the position table of its size, so an export of it carries nothing the sub-network does not use."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import DeployError


def check_subnet(model: nn.Module, img_size, keep_ratio) -> tuple[int, float]:
    """(img_size, keep_ratio) if the model was trained for it; DeployError naming the accepted values otherwise."""
    if img_size not in model.img_sizes:
        raise DeployError(f"img_size must be one of the model's sizes {list(model.img_sizes)}, got {img_size!r}")
    ratios = [float(r) for r in model.keep_ratios]
    try:
        ratio = float(keep_ratio)
    except (TypeError, ValueError):
        ratio = None
    if ratio not in ratios:
        raise DeployError(f"keep_ratio must be one of those the model was trained for {ratios}, got {keep_ratio!r}")
    return int(img_size), ratio


class OnePositionTable(nn.Module):
    """Stands in for a super-network's ``pos_embed_list``, holding only the table of one size (entry ``index``)."""

    def __init__(self, table: torch.Tensor, index: int, count: int):
        super().__init__()
        self.table = nn.Parameter(table.detach().clone(), requires_grad=False)  # (1, 1 + g*g, C)
        self.index, self.count = index, count

    def __getitem__(self, i: int) -> nn.Parameter:
        if i != self.index:
            raise IndexError(f"this sub-network holds position table {self.index} only, not {i}")
        return self.table

    def __len__(self) -> int:
        return self.count


class Subnet(nn.Module):
    """Sub-network (img_size, keep_ratio) of ``model``: ``forward(x [B, C, S_in, S_in]) -> logits [B, K]``.

    The super-network is deep-copied (the caller's model is left as it is); the copy holds the position table of
    ``img_size`` only. The input may have any side ``S_in``: it is resized to ``img_size`` inside,
    as the super-network does.

    Args:
        model: a SuperVisionTransformer (DeiT or LV-ViT body).
        img_size, keep_ratio: the operating point; both must be among those the model was trained for.
        with_kept: also return the kept patch-token indices of each pruning block, ``(logits, idx_1, idx_2, ...)``
            with idx_i [B, k_i] int64 into the patch tokens of that block's input (none when keep_ratio == 1).
    """

    def __init__(self, model: nn.Module, img_size: int, keep_ratio: float, with_kept: bool = False):
        super().__init__()
        self.img_size, self.keep_ratio = check_subnet(model, img_size, keep_ratio)
        index = model.img_sizes.index(self.img_size)
        net = copy.deepcopy(model).eval()
        net.pos_embed_list = OnePositionTable(model.pos_embed_list[index], index, len(model.pos_embed_list))
        net.set_subnet(self.img_size, self.keep_ratio)
        net.requires_grad_(False)
        self.net = net
        self.with_kept = bool(with_kept)

    def forward(self, x: torch.Tensor):
        if not self.with_kept:
            return self.net(x, img_size=self.img_size, keep_ratio=self.keep_ratio)
        tokens, kept = self.net.forward_trace(x, self.img_size, self.keep_ratio)
        return (self.net.forward_head(tokens), *kept)
