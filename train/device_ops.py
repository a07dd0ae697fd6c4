"""RandAugment and colour jitter on uint8 image batches [N, 3, H, W] on any device, each image with its own op and
magnitude, following Pillow's definitions of timm's ops (what the PIL path runs).

``rand_augment(batch, drawn)`` takes, per image, the ops timm's RandAugment drew for it
(``token_label.LabelAwareRandAugment.draw``: [(op, level_args, resample)], applied in order) and applies each op
once to all images that drew it at that position. Parameterless ops use torchvision's tensor functions
(autocontrast, equalize, invert); the others are written here because they take one magnitude per image:
Pillow's blends (``ImageEnhance``: degenerate + f * (image - degenerate), truncated to uint8), solarize, posterize,
and the geometric ops as one ``grid_sample`` over Pillow's inverse affine maps (``label_geometry.op_source_matrix``,
the map the token labels use too), filled with the op's fill colour where the source is outside the image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .label_geometry import GEOMETRIC_OPS, op_source_matrix

_RESAMPLE = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # Pillow's ImageFilter.SMOOTH


def _per_image(values, images: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=images.device).view(-1, 1, 1, 1)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.clamp(0, 255).to(torch.uint8)  # truncation, as Pillow's blend stores its float result


def _luma(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] float: Pillow's RGB -> L (ITU-R 601-2 weights, rounded)."""
    r, g, b = images.float().unbind(1)
    return (r * 0.299 + g * 0.587 + b * 0.114).round().unsqueeze(1)


def _blend(images: torch.Tensor, degenerate: torch.Tensor, factors) -> torch.Tensor:
    f = _per_image(factors, images)
    return _to_uint8(degenerate + f * (images.float() - degenerate))


def brightness(images, factors):
    return _blend(images, torch.zeros((), device=images.device), factors)


def color(images, factors):
    return _blend(images, _luma(images), factors)


def contrast(images, factors):
    mean = (_luma(images).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(images, mean, factors)


def sharpness(images, factors):
    x = images.float()
    kernel = _SMOOTH.to(images.device).view(1, 1, 3, 3).expand(3, 1, 3, 3)
    blurred = F.conv2d(x, kernel, groups=3).round()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = blurred  # Pillow leaves the border pixels as they are
    return _blend(images, degenerate, factors)


def solarize(images, thresholds):
    t = _per_image(thresholds, images)
    return torch.where(images.float() >= t, 255 - images, images)


def solarize_add(images, adds, thresh: int = 128):
    add = _per_image(adds, images)
    return torch.where(images < thresh, _to_uint8(images.float() + add), images)


def posterize(images, bits):
    masks = [0 if b <= 0 else 255 if b >= 8 else (0xFF << (8 - int(b))) & 0xFF for b in bits]
    return images & torch.tensor(masks, dtype=torch.uint8, device=images.device).view(-1, 1, 1, 1)


def affine(images: torch.Tensor, matrices, resamples, fill) -> torch.Tensor:
    """Each image warped by its 3x3 map (output pixel -> source pixel, continuous coordinates with the origin at the
    top-left edge, as Pillow's ``Image.transform``), resampled as ``resamples`` says; ``fill`` (RGB) where the source
    is outside the image."""
    n, _, height, width = images.shape
    device = images.device
    ys, xs = torch.meshgrid(torch.arange(height, device=device) + 0.5, torch.arange(width, device=device) + 0.5,
                            indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten(), torch.ones(height * width, device=device)])  # [3, H*W]
    mats = torch.from_numpy(np.stack([m[:2] for m in matrices])).float().to(device)  # [N, 2, 3]
    src = mats @ points  # [N, 2, H*W]
    inside = ((src[:, 0] >= 0) & (src[:, 0] < width) & (src[:, 1] >= 0) & (src[:, 1] < height))
    grid = torch.stack([2 * src[:, 0] / width - 1, 2 * src[:, 1] / height - 1], -1).view(n, height, width, 2)
    x = images.float()
    out = torch.empty_like(x)
    modes = [_RESAMPLE.get(r, "bilinear") for r in resamples]
    for mode in set(modes):
        idx = torch.tensor([i for i, m in enumerate(modes) if m == mode], device=device)
        out[idx] = F.grid_sample(x[idx], grid[idx], mode=mode, padding_mode="border", align_corners=False)
    fill_t = torch.tensor(fill, dtype=torch.float32, device=device).view(1, 3, 1)
    out = torch.where(inside.view(n, 1, -1), out.view(n, 3, -1), fill_t).view_as(x)
    return _to_uint8(out.round())


def _apply(name: str, images: torch.Tensor, items) -> torch.Tensor:
    """Op ``name`` on ``images`` [n, 3, H, W] with the (op, level_args, resample) of each image."""
    args = [level_args for _, level_args, _ in items]
    if name == "AutoContrast":
        return TF.autocontrast(images)
    if name == "Equalize":
        return TF.equalize(images)
    if name == "Invert":
        return TF.invert(images)
    if name.startswith("Posterize"):
        return posterize(images, [a[0] for a in args])
    if name.startswith("SolarizeAdd"):
        return solarize_add(images, [a[0] for a in args])
    if name.startswith("Solarize"):
        return solarize(images, [a[0] for a in args])
    for prefix, fn in (("Color", color), ("Contrast", contrast), ("Brightness", brightness),
                       ("Sharpness", sharpness)):
        if name.startswith(prefix):
            return fn(images, [a[0] for a in args])
    if name in GEOMETRIC_OPS:
        height, width = images.shape[-2:]
        fill = items[0][0].kwargs.get("fillcolor", (128, 128, 128))
        return affine(images, [op_source_matrix(name, a, width, height) for a in args],
                      [resample for _, _, resample in items], fill)
    raise ValueError(f"RandAugment op {name!r} has no device implementation")


def rand_augment(images: torch.Tensor, drawn: list) -> torch.Tensor:
    """uint8 [B, 3, H, W] with image i augmented by ``drawn[i]`` ([(op, level_args, resample)], in order)."""
    out = images.clone()
    for position in range(max((len(d) for d in drawn), default=0)):
        groups: dict[str, list] = {}
        for i, ops in enumerate(drawn):
            if position < len(ops):
                groups.setdefault(ops[position][0].name, []).append(i)
        for name, members in groups.items():
            idx = torch.tensor(members, device=images.device)
            out[idx] = _apply(name, out[idx], [drawn[i][position] for i in members])
    return out


def color_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """torchvision's ColorJitter(strength, strength, strength) per image: brightness, contrast and saturation
    factors uniform in [1 - s, 1 + s], applied in an order drawn per image."""
    n = len(images)
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    factors = torch.empty(3, n).uniform_(low, high).tolist()
    orders = [torch.randperm(3).tolist() for _ in range(n)]
    fns = (brightness, contrast, color)
    out = images.clone()
    for position in range(3):
        for op in range(3):
            members = [i for i in range(n) if orders[i][position] == op]
            if members:
                idx = torch.tensor(members, device=images.device)
                out[idx] = fns[op](out[idx], [factors[op][i] for i in members])
    return out


__all__ = ["affine", "brightness", "color", "color_jitter", "contrast", "posterize", "rand_augment", "sharpness",
           "solarize", "solarize_add"]
