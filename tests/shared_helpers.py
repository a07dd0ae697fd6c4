"""Test helpers used across tests/ (one home each): state comparisons and the tiny model configuration."""
import torch

# A super_deit-shaped model small enough to build in milliseconds: 2 token grids, pruning at blocks 1..3.
TINY_DEIT = dict(img_sizes=(16, 32), patch_size=8, embed_dim=16, depth=4, num_heads=2, prune_layers=(1, 2, 3))


def assert_same_state(a: dict, b: dict):
    """Two state dicts with the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
