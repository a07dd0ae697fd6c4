"""Where each token-label target comes from on the teacher's label map, for one augmented training sample.

The LV-ViT pipeline (as the reference runs it) flips the full image, applies RandAugment to the full image, and only
then takes the RandomResizedCrop. The label map ([2, 5, h, w], the teacher's top-5 scores and class indices per
cell) covers the original image. Two ways to place the crop's tokens on it:

- ``exact``: every image op is an affine map between continuous pixel coordinates (origin at the image's top-left
  edge, as Pillow computes them); their composition, scaled to label-map units, is the ``warp`` from the augmented
  image to the original one. The targets sample the label map through it (see ``token_label.token_label_targets``).
- ``reference``: what the reference code computes. The label map itself is flipped and warped cell by cell (nearest
  cell, SciPy ``ndimage.affine_transform(order=0)`` semantics: scores outside the map become 0, indices take the
  nearest edge cell) with the op's parameters applied in cell units, and the crop box is given to ``roi_align``
  with x and y exchanged (top/left fractions where x1/y1 belong).
"""
from __future__ import annotations

import math

import numpy as np
import torch

GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
TARGET_MODES = ("exact", "reference")


def op_source_matrix(name: str, level_args: tuple, width: int, height: int) -> np.ndarray:
    """3x3 map from an output pixel of op ``name`` to the input pixel it shows (continuous coordinates, Pillow's
    convention), for an image of ``width`` x ``height``. Identity for ops that move no pixel."""
    m = np.eye(3)
    if name == "Rotate":  # Image.rotate(deg): counter-clockwise about the image centre
        angle = -math.radians(level_args[0])
        cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
        cx, cy = width / 2.0, height / 2.0
        m[0] = [cos, sin, cx - cos * cx - sin * cy]
        m[1] = [-sin, cos, cy + sin * cx - cos * cy]
    elif name == "ShearX":
        m[0, 1] = level_args[0]
    elif name == "ShearY":
        m[1, 0] = level_args[0]
    elif name == "TranslateXRel":
        m[0, 2] = level_args[0] * width
    elif name == "TranslateYRel":
        m[1, 2] = level_args[0] * height
    return m


def hflip_matrix(width: int) -> np.ndarray:
    return np.array([[-1.0, 0.0, float(width)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def exact_geometry(size: tuple[int, int], flip: bool, ops, crop, label_hw: tuple[int, int]):
    """(box [4], warp [2, 3]) of one sample in label-map units.

    ``size``: (width, height) of the image; ``flip``: flipped first; ``ops``: the (name, level_args) RandAugment
    ops applied next, in order; ``crop``: (top, left, height, width) of the crop on the augmented image. ``box`` is
    the crop as (x1, y1, x2, y2) on the augmented image scaled to the label map; ``warp`` maps a point there to the
    point of the original label map it shows.
    """
    width, height = size
    lh, lw = label_hw
    total = hflip_matrix(width) if flip else np.eye(3)
    for name, level_args in ops:
        if name in GEOMETRIC_OPS:
            total = total @ op_source_matrix(name, level_args, width, height)
    scale = np.diag([lw / width, lh / height, 1.0])
    warp = scale @ total @ np.linalg.inv(scale)
    top, left, h, w = crop
    box = [left / width * lw, top / height * lh, (left + w) / width * lw, (top + h) / height * lh]
    return torch.tensor(box, dtype=torch.float32), torch.tensor(warp[:2], dtype=torch.float32)


IDENTITY_WARP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _cell_affine(label: torch.Tensor, a, b, c, d, e, f) -> torch.Tensor:
    """``label`` [2, 5, H, W] resampled at source cell (a*h + b*w + c, d*h + e*w + f) of every cell (h, w): the
    nearest cell (ties rounded up); scores 0 where the source is outside [0, H-1] x [0, W-1], indices from the
    nearest edge cell."""
    height, width = label.shape[-2:]
    hh, ww = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=label.device),
                            torch.arange(width, dtype=torch.float64, device=label.device), indexing="ij")
    src_h = a * hh + b * ww + c
    src_w = d * hh + e * ww + f
    inside = (src_h >= 0) & (src_h <= height - 1) & (src_w >= 0) & (src_w <= width - 1)
    ih = torch.floor(src_h + 0.5).clamp(0, height - 1).long()
    iw = torch.floor(src_w + 0.5).clamp(0, width - 1).long()
    scores = label[0][:, ih, iw] * inside.to(label.dtype)
    index = label[1][:, ih, iw]
    return torch.stack([scores, index])


def reference_label_op(label: torch.Tensor, name: str, level_args: tuple) -> torch.Tensor:
    """The reference's label-map counterpart of RandAugment op ``name`` (cell units; identity for ops that move no
    pixel). ``label``: [2, 5, H, W]."""
    if name not in GEOMETRIC_OPS:
        return label
    height, width = label.shape[-2:]
    value = level_args[0]
    if name == "Rotate":  # about (H/2, W/2) in cell-index coordinates, H and W taken in that order
        angle = math.radians(value)
        cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
        ch, cw = height / 2.0, width / 2.0
        c = cos * -ch + sin * -cw + ch
        f = -sin * -ch + cos * -cw + cw
        return _cell_affine(label, cos, sin, c, -sin, cos, f)
    if name == "ShearX":
        return _cell_affine(label, 1, 0, 0, value, 1, 0)
    if name == "ShearY":
        return _cell_affine(label, 1, value, 0, 0, 1, 0)
    if name == "TranslateXRel":
        return _cell_affine(label, 1, 0, 0, 0, 1, value * width)
    return _cell_affine(label, 1, 0, value * height, 0, 1, 0)  # TranslateYRel


def reference_geometry(label: torch.Tensor, size: tuple[int, int], flip: bool, ops, crop):
    """(label [2, 5, H, W] flipped and warped, box [4]) as the reference computes them; the warp is the identity.

    The box is the reference's: (top/height, left/width, bottom/height, right/width) times the label map's width,
    read by ``roi_align`` as (x1, y1, x2, y2).
    """
    width, height = size
    if flip:
        label = label.flip(-1)
    for name, level_args in ops:
        label = reference_label_op(label, name, level_args)
    top, left, h, w = crop
    box = torch.tensor([top / height, left / width, h / height, w / width], dtype=torch.float32)
    box[2:] += box[:2].clone()  # float32 throughout, as the reference stores and adds its crop fractions
    return label, box * label.shape[-1]
