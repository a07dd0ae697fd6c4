"""Tiny super-networks, saved profiles and checkpoints for the deploy tests (nothing is trained).

A module of its own (not conftest.py): test folders each have a conftest, and ``import conftest`` would get
whichever was imported first.
"""
import os

import torch

from supervit.models import SuperDeiT

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXED_PROFILES = os.path.join(DATA, "deit_s_cpu_b1_profiles.json")
FIXED_PROFILE_KEY = "super_deit_s|cpu-2c-intel-r--xeon-r--processor|b1|fp32|eager|auto"
FIXED_RESULTS = os.path.join(DATA, "deit_s_results.json")

TINY = dict(img_sizes=(8, 12, 16), keep_ratios=(0.5, 1.0), prune_layers=(1,), patch_size=4, in_chans=1,
            num_classes=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)


def tiny_model(seed: int = 0) -> SuperDeiT:
    torch.manual_seed(seed)
    return SuperDeiT(**TINY).eval()


def tiny_rows(model, acc=None):
    """Accuracy rows for every sub-network: by default rising with cost so that the ordering is known."""
    from supervit.models import flops

    subnets = model.subnets()
    acc = acc or {sub: 50.0 + 10 * i for i, sub in enumerate(sorted(subnets, key=lambda s: flops(model, *s)))}
    return [{"img_size": s, "keep_ratio": r, "acc1": acc[(s, r)], "acc5": 99.0, "gmacs": flops(model, s, r)}
            for s, r in subnets]


def write_tiny_checkpoint(path, model=None, with_table=True, with_config=True):
    from supervit.models.config import model_config

    model = model or tiny_model()
    info = {}
    if with_config:
        info["model_config"] = model_config(model)
    if with_table:
        info["accuracy"] = {"epoch": 3, "ema": False, "num_images": 40, "dataset": "fake", "rows": tiny_rows(model)}
    torch.save({"model": model.state_dict(), "epoch": 3, "supervit": info}, path)
    return str(path)
