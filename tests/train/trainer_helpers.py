"""Small generated data sets and tiny model configurations for the trainer tests."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
from PIL import Image

# Tiny super-networks of the real classes: 4 sizes x 3 keep rates, 4 blocks pruning at 1/2/3.
TINY_IMAGENET_MODEL = {"img_sizes": [32, 48, 64, 80], "embed_dim": 32, "depth": 4, "num_heads": 2,
                       "prune_layers": [1, 2, 3]}
TINY_LVVIT_MODEL = {**TINY_IMAGENET_MODEL, "stem_dim": 8}
TINY_DEMO_MODEL = {"embed_dim": 24, "depth": 4, "num_heads": 2, "prune_layers": [1, 2, 3]}
CLASSES = ("apple", "boat", "cat")


def as_json(config: dict) -> str:
    return json.dumps(config)


def write_image_folder(root, splits=("train", "val"), per_class: int = 4, size=(96, 72), seed: int = 0) -> str:
    """``root/<split>/<class>/img_<i>.JPEG``: real JPEG files of coloured noise with a class-dependent tint."""
    rng = np.random.RandomState(seed)
    for split in splits:
        for c, name in enumerate(CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = rng.randint(0, 120, size=(size[1], size[0], 3)).astype(np.uint8)
                pixels[..., c] += 120
                Image.fromarray(pixels).save(os.path.join(folder, f"img_{i}.JPEG"), quality=90)
    return str(root)


def write_token_labels(data_root, label_root, num_classes: int = len(CLASSES), hw: int = 4, seed: int = 0) -> str:
    """``label_root/<class>/<stem>.pt``: half [2, 5, hw, hw] (top-5 scores, top-5 class indices) per train image."""
    gen = torch.Generator().manual_seed(seed)
    train = os.path.join(data_root, "train")
    for name in sorted(os.listdir(train)):
        os.makedirs(os.path.join(label_root, name), exist_ok=True)
        for file in sorted(os.listdir(os.path.join(train, name))):
            scores = torch.rand(5, hw, hw, generator=gen).sort(dim=0, descending=True).values * 10
            index = torch.stack([torch.randperm(num_classes, generator=gen)[:min(5, num_classes)]
                                 .repeat(5)[:5] for _ in range(hw * hw)], 1).reshape(5, hw, hw)
            label = torch.stack([scores, index.float()]).half()  # [2, 5, hw, hw]
            torch.save(label, os.path.join(label_root, name, os.path.splitext(file)[0] + ".pt"))
    return str(label_root)


def grad_vector(module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().clone()
                      for p in module.parameters()])


def seed_all(seed: int = 0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
