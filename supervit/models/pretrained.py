"""Pretrained configurations of the two registered models: the released weights and their published accuracy.

Nothing is downloaded: the released checkpoints are links to a file share. Fetch the file by hand and load it with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` or
``supervit.models.load_checkpoint(model, PATH)``.
"""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

PAPER_ID = "arXiv:2205.11397"
PAPER_NAME = "Super Vision Transformer"
ORIGIN_URL = "https://github.com/lmbxmu/SuperViT"
# The official repository's README links the released checkpoints (a file share; no direct download).
RELEASED_WEIGHTS = {
    "super_deit_s": "https://drive.google.com/file/d/1y2-zU5UvHqGCmWEB41VLbnf7B27BatBL/view?usp=sharing",
    "super_lvvit_s": "https://drive.google.com/file/d/1xjKrelbFQchaaulMm0bLUftD0h10hRJa/view?usp=sharing",
}

# Published ImageNet-1k top-1 (%) of the released weights: image side -> (keep 0.5, keep 0.7, keep 1).
TOP1_KEEP_RATIOS = (0.5, 0.7, 1.0)
PUBLISHED_TOP1 = {
    "super_deit_s": {128: (73.75, 75.28, 75.79), 160: (77.32, 78.31, 78.53), 192: (78.91, 79.62, 79.87),
                     224: (79.95, 80.50, 80.62)},
    "super_lvvit_s": {128: (76.64, 79.82, 80.71), 160: (79.81, 81.73, 82.24), 192: (81.12, 82.59, 82.94),
                      224: (82.11, 83.15, 83.47)},
}


def published_accuracy(arch: str) -> dict[tuple[int, float], float]:
    """``{(img_size, keep_ratio): top-1 %}`` published for the released ``arch`` weights (ImageNet-1k val, all 12
    sub-networks). ``arch`` is ``"super_deit_s"`` or ``"super_lvvit_s"``."""
    if arch not in PUBLISHED_TOP1:
        raise ValueError(f"arch must be one of {sorted(PUBLISHED_TOP1)}, got {arch!r}")
    return {(size, ratio): top1 for size, row in PUBLISHED_TOP1[arch].items()
            for ratio, top1 in zip(TOP1_KEEP_RATIOS, row)}


def _accuracy_notes(arch: str) -> tuple[str, ...]:
    rows = [f"ImageNet-1k top-1 {top1:.2f} at img_size={size} keep_ratio={ratio:g}"
            for (size, ratio), top1 in published_accuracy(arch).items()]
    return (f"released weights (download by hand, then pretrained_cfg_overlay=dict(file=PATH)): "
            f"{RELEASED_WEIGHTS[arch]}", *rows)


def _cfg(arch: str, crop_pct: float, first_conv: str, classifier) -> dict:
    return dict(
        url="", hf_hub_id=None, num_classes=1000, input_size=(3, 224, 224), min_input_size=(3, 128, 128),
        fixed_input_size=True,  # crops of the largest size; forward resizes them per sub-network
        pool_size=None, crop_pct=crop_pct, interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD, first_conv=first_conv, classifier=classifier, license="unknown",
        paper_ids=PAPER_ID, paper_name=PAPER_NAME, origin_url=ORIGIN_URL,
        description="one ViT, 12 sub-networks: img_size in (128, 160, 192, 224) x keep_ratio in (0.5, 0.7, 1)",
        notes=_accuracy_notes(arch))


# DeiT evaluates Resize(256) + CenterCrop(224) (crop 0.875); LV-ViT Resize(248) + CenterCrop(224) (crop 0.9).
default_cfgs = generate_default_cfgs({
    "super_deit_s.in1k": _cfg("super_deit_s", 0.875, "patch_embed.proj", "head"),
    "super_lvvit_s.in1k": _cfg("super_lvvit_s", 0.9, "patch_embed.conv1", ("head", "aux_head")),
})
