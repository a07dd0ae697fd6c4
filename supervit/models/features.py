"""timm's feature API for the super-networks: block outputs as token maps, and trimming unused blocks."""
from __future__ import annotations

from timm.layers import Format
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import nn


class FeaturesMixin:
    """``forward_intermediates`` / ``prune_intermediate_layers`` of ``SuperVisionTransformer`` (timm's contract,
    used by ``features_only=True``)."""

    def forward_intermediates(self, x, indices=None, return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              img_size: int | None = None, keep_ratio: float | None = None,
                              return_kept: bool = False):
        """Outputs of the chosen blocks of sub-network (img_size, keep_ratio) as token maps.

        Args:
            x: images [B, in_chans, H, W].
            indices: None (every block), an int n (the last n blocks) or a list of block indices.
            return_prefix_tokens: each intermediate becomes (map, CLS token [B, 1, C]).
            norm: apply the final LayerNorm to each intermediate.
            stop_early: run no block after the last chosen one (the final output is then that block's, normed).
            output_fmt: "NCHW" maps [B, C, g, g] on the sub-network's g x g patch grid, or "NLC" patch tokens
                [B, n, C] in sequence order.
            intermediates_only: return only the list of intermediates.
            img_size, keep_ratio: the sub-network (default: ``set_subnet``'s).
            return_kept: also return, per intermediate, the grid positions [B, n] (row-major, int64) of the patch
                tokens it holds, or None where the grid is still intact.

        Where the grid is intact (before the first pruning block, or at keep ratio 1) an NCHW map holds every
        token. After a pruning block only the kept tokens exist: the NCHW map has them at their grid positions and
        zeros at the dropped ones, and NLC gives the kept tokens in the pruned order (descending CLS score); the
        positions from ``return_kept`` say which tokens are real.

        Returns:
            intermediates, or (final normed tokens [B, n, C], intermediates), each followed by the kept positions
            when ``return_kept``.
        """
        fmt = Format(output_fmt)
        if fmt not in (Format.NCHW, Format.NLC):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, img_size, keep_ratio = self._resolve(x, img_size, keep_ratio)
        grid = img_size // self.patch_size
        x = self.tokens_with_position(self.embed(x, img_size), img_size)
        positions = None  # [B, n-1] grid positions of the current patch tokens once pruned
        intermediates, kept = [], []
        last = max_index if stop_early else len(self.blocks) - 1
        for i in range(last + 1):
            x, idx = self.run_block(i, x, keep_ratio)
            if idx is not None:
                positions = idx if positions is None else positions.gather(1, idx)
            if i in take_indices:
                tokens = self.norm(x) if norm else x
                intermediates.append(_token_map(tokens, positions, grid, fmt, return_prefix_tokens))
                kept.append(positions)
        if intermediates_only:
            return (intermediates, kept) if return_kept else intermediates
        final = self.norm(x)
        return (final, intermediates, kept) if return_kept else (final, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the blocks after the last of ``indices`` (and the final norm / the classifier); returns the taken
        block indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices


def _token_map(tokens, positions, grid: int, fmt, return_prefix_tokens: bool):
    """tokens [B, 1 + n, C] -> NCHW map [B, C, g, g] (zeros where pruned) or NLC [B, n, C]; optionally with CLS."""
    prefix, patches = tokens[:, :1], tokens[:, 1:]
    if fmt == Format.NCHW:
        if positions is not None:  # scatter the kept tokens back onto the g x g grid
            batch, _, channels = patches.shape
            full = patches.new_zeros(batch, grid * grid, channels)
            patches = full.scatter(1, positions.unsqueeze(-1).expand(-1, -1, channels), patches)
        patches = patches.reshape(patches.shape[0], grid, grid, -1).permute(0, 3, 1, 2).contiguous()  # [B, C, g, g]
    return (patches, prefix) if return_prefix_tokens else patches



class SubnetFeatures(FeatureGetterNet):
    """timm's feature getter (``features_only=True``) over a super-network, with its sub-network:
    ``forward(x, img_size=None, keep_ratio=None)`` returns the feature maps of that sub-network, and ``set_subnet`` /
    ``subnets`` / ``default_subnet`` act on the wrapped model (what a plain ``features(x)`` runs)."""

    def forward(self, x, img_size: int | None = None, keep_ratio: float | None = None):
        return self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True,
                                                img_size=img_size, keep_ratio=keep_ratio)

    def set_subnet(self, img_size: int, keep_ratio: float = 1.0):
        """Make (img_size, keep_ratio) what a plain ``features(x)`` runs."""
        self.model.set_subnet(img_size, keep_ratio)
        return self

    def subnets(self):
        """The wrapped model's operating points."""
        return self.model.subnets()

    @property
    def default_subnet(self):
        return self.model.default_subnet
