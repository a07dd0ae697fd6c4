"""LV-ViT token labelling: label maps, the label-aware augmentation, dense targets, MixToken and the loss.

Label maps: one per training image, a half tensor [2, 5, h, w] holding the top-5 scores ([0]) and top-5 class
indices ([1]) of every spatial cell from a strong CNN teacher, read from per-image ``.pt`` files
(``DIR/<class_dir>/<image_stem>.pt``) or a label store (``train/label_store.py``).

The data set returns, beside the image, what the targets need: the label map, the crop box and the warp from the
augmented image to the original one (``train/label_geometry.py``). ``token_label_targets`` then builds the targets in
batch: scatter the top-5 scores into (K, h, w) logits, average them over each token's region of the crop (g x g,
dense) and over the whole crop (1 x 1, image level), softmax over classes, and smooth (``* (1 - eps + eps/K) +
eps/K``, i.e. ``*0.9001 + 1e-4`` for eps 0.1 and K = 1000).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.ops import roi_align
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import rand_augment_transform, _LEVEL_DENOM
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.loss import SoftTargetCrossEntropy

from .data import DataError, check_split_dir, fix_rand_augment
from .label_geometry import GEOMETRIC_OPS, IDENTITY_WARP, TARGET_MODES, exact_geometry, reference_geometry
from .label_store import label_path, open_labels, read_label_map  # noqa: F401 - re-exported


class LabelAwareRandAugment:
    """timm's RandAugment with its random draws separated from their application, so that the label geometry can
    follow the ops that were applied. ``draw()`` -> [(op, level_args, resample)]; ``apply(img, drawn)``."""

    def __init__(self, config_str: str, img_size: int, interpolation=None):
        hparams = dict(translate_const=int(img_size * 0.45),
                       img_mean=tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN))
        if interpolation is not None:
            hparams["interpolation"] = interpolation
        self.inner = fix_rand_augment(rand_augment_transform(config_str, hparams))

    def draw(self):
        inner = self.inner
        chosen = np.random.choice(inner.ops, inner.num_layers, replace=inner.choice_weights is None,
                                  p=inner.choice_weights)
        drawn = []
        for op in chosen:
            if op.prob < 1.0 and random.random() > op.prob:
                continue
            magnitude = op.magnitude
            if op.magnitude_std == float("inf"):
                magnitude = random.uniform(0, magnitude)
            elif op.magnitude_std > 0:
                magnitude = random.gauss(magnitude, op.magnitude_std)
            magnitude = max(0.0, min(magnitude, op.magnitude_max or _LEVEL_DENOM))
            level_args = tuple(op.level_fn(magnitude, op.hparams)) if op.level_fn is not None else tuple()
            resample = op.kwargs.get("resample", Image.BILINEAR)
            if isinstance(resample, (tuple, list)):
                resample = random.choice(resample)
            drawn.append((op, level_args, resample))
        return drawn

    @staticmethod
    def apply(img: Image.Image, drawn) -> Image.Image:
        for op, level_args, resample in drawn:
            img = op.aug_fn(img, *level_args, **{**op.kwargs, "resample": resample})
        return img


@dataclass
class LabelDraws:
    """The random draws of one token-label sample: flip, RandAugment ops (applied to the full image, in order),
    crop (top, left, height, width) on the augmented image, and the crop's resize interpolation."""

    flip: bool
    ops: list = field(default_factory=list)  # [(op, level_args, resample)] (timm AugmentOp)
    crop: tuple = (0, 0, 1, 1)
    interpolation: object = transforms.InterpolationMode.BILINEAR

    def geometric_ops(self):
        return [(op.name, args) for op, args, _ in self.ops if op.name in GEOMETRIC_OPS]


class TokenLabelTransform:
    """The reference's token-label pipeline: label-aware hflip and RandAugment on the full image, then
    RandomResizedCrop (recording the box), ToTensor, Normalize, RandomErasing.

    ``__call__(img, label) -> (image [3, S, S], label [2, 5, h, w], box [4], warp [2, 3])``: ``targets='exact'``
    returns the label map unchanged with the crop box on the augmented image and the warp to the original map;
    ``targets='reference'`` returns the reference's warped label map and (transposed) box with the identity warp
    (see ``train/label_geometry.py``). ``label_size``: the token grid the targets are for (recorded only: the
    geometry is in label-map units and the task builds the grid).
    """

    def __init__(self, img_size: int, label_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = "random", hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                 reprob: float = 0.25, remode: str = "pixel", recount: int = 1, targets: str = "exact"):
        if targets not in TARGET_MODES:
            raise ValueError(f"--token-label-targets must be one of {list(TARGET_MODES)}, got {targets!r}")
        self.crop = RandomResizedCropAndInterpolation(img_size, scale=scale, ratio=ratio, interpolation=interpolation)
        self.img_size, self.label_size, self.hflip, self.targets = img_size, label_size, hflip, targets
        self.rand_augment = LabelAwareRandAugment(auto_augment, img_size) if auto_augment else None
        self.to_tensor = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, device="cpu") if reprob > 0 else None

    def draw_augment(self) -> LabelDraws:
        """The flip and RandAugment draws (the crop is drawn on the augmented image, in ``__call__``)."""
        flip = random.random() < self.hflip
        return LabelDraws(flip, self.rand_augment.draw() if self.rand_augment is not None else [])

    def draw_crop(self, img: Image.Image, draws: LabelDraws) -> LabelDraws:
        draws.crop = tuple(self.crop.get_params(img, self.crop.scale, self.crop.ratio))
        interp = self.crop.interpolation
        draws.interpolation = random.choice(interp) if isinstance(interp, (tuple, list)) else interp
        return draws

    def __call__(self, img: Image.Image, label: torch.Tensor):
        draws = self.draw_augment()
        img = self.augment(img, draws)
        return self.finish(img, label, self.draw_crop(img, draws))

    @staticmethod
    def augment(img: Image.Image, draws: LabelDraws) -> Image.Image:
        if draws.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return LabelAwareRandAugment.apply(img, draws.ops)

    def finish(self, img: Image.Image, label: torch.Tensor, draws: LabelDraws):
        """Crop the augmented image and place the crop on the label map (``label``: the original [2, 5, h, w])."""
        size = img.size
        top, left, h, w = draws.crop
        img = transforms.functional.resized_crop(img, top, left, h, w, [self.img_size, self.img_size],
                                                 draws.interpolation)
        label, box, warp = self.label_geometry(label, size, draws)
        image = self.to_tensor(img)
        if self.erase is not None:
            image = self.erase(image)
        return image, label, box, warp

    def label_geometry(self, label: torch.Tensor, size: tuple[int, int], draws: LabelDraws):
        """(label, box [4], warp [2, 3]) of one sample whose image (``size`` = (width, height)) was augmented as
        ``draws`` says."""
        if self.targets == "reference":
            label, box = reference_geometry(label, size, draws.flip, draws.geometric_ops(), draws.crop)
            return label, box, IDENTITY_WARP.clone()
        box, warp = exact_geometry(size, draws.flip, draws.geometric_ops(), draws.crop, tuple(label.shape[-2:]))
        return label, box, warp


class TokenLabelDataset(Dataset):
    """ImageFolder ``root/train`` with the token-label map of every image.

    Item: ``(image, (label_map [2, 5, h, w] float16, box [4], warp [2, 3], class_index))`` (see
    ``TokenLabelTransform``). ``label_dir``: the folder of per-image ``.pt`` files or a label store
    (``train/label_store.py``).
    """

    def __init__(self, root: str, label_dir: str, transform: TokenLabelTransform, arg_name: str = "data_dir"):
        from torchvision import datasets

        path = check_split_dir(root, "train", arg_name)
        if not label_dir or not os.path.isdir(label_dir):
            raise DataError(f"--token-label-data {label_dir!r} is not a directory")
        try:
            self.folder = datasets.ImageFolder(path)
        except FileNotFoundError as err:
            raise DataError(f"{arg_name}: {err}") from None
        self.classes, self.label_dir, self.transform = self.folder.classes, label_dir, transform
        self.labels = open_labels(label_dir)
        self.labels.read(self.folder.samples[0][0])  # fail early on a wrong directory

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        image_path, class_index = self.folder.samples[index]
        label = self.labels.read(image_path)
        img = self.folder.loader(image_path)
        image, label, box, warp = self.transform(img, label)
        return image, (label, box, warp, class_index)


def smooth(probs: torch.Tensor, smoothing: float) -> torch.Tensor:
    """``probs * (1 - eps + eps/K) + eps/K`` with K = ``probs.shape[1]`` (the class dimension of [B, K, ...])."""
    off = smoothing / probs.shape[1]
    return probs * (1.0 - smoothing + off) + off


def dense_label_map(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, h*w, K] teacher logits from label maps [B, 2, 5, h, w]: the top-5 scores scattered into zeros."""
    batch, _, top, h, w = label.shape
    scores = label[:, 0].float().reshape(batch, top, h * w).transpose(1, 2)  # [B, h*w, 5]
    index = label[:, 1].long().clamp(0, num_classes - 1).reshape(batch, top, h * w).transpose(1, 2)
    return scores.new_zeros(batch, h * w, num_classes).scatter_(2, index, scores)


def sampling_weights(box: torch.Tensor, warp: torch.Tensor, grid: int, samples: int, label_hw) -> torch.Tensor:
    """[B, grid*grid, h*w]: how much each label cell contributes to each output cell's mean logit.

    Output cell (py, px) averages ``samples x samples`` points spread over its part of ``box`` [B, 4] ((x1, y1, x2,
    y2) in label-map units, continuous, origin at the map's top-left edge), as ``roi_align(aligned=True)`` places
    them; each point is mapped through ``warp`` [B, 2, 3] and read bilinearly (clamped at the edge cells); a point
    mapped outside the map reads 0 (the original image has no teacher logit there).
    """
    height, width = label_hw
    batch, device = box.shape[0], box.device
    side = grid * samples
    steps = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) / side  # fraction of the box
    x1, y1, x2, y2 = box.float().unbind(1)
    xs = (x1[:, None] + (x2 - x1)[:, None] * steps)[:, None, :]  # [B, 1, side]
    ys = (y1[:, None] + (y2 - y1)[:, None] * steps)[:, :, None]  # [B, side, 1]
    a, b, c = (v[:, None, None] for v in warp[:, 0].float().unbind(1))
    d, e, f = (v[:, None, None] for v in warp[:, 1].float().unbind(1))
    src_x, src_y = a * xs + b * ys + c, d * xs + e * ys + f  # [B, side, side]
    inside = ((src_x >= 0) & (src_x <= width) & (src_y >= 0) & (src_y <= height)).float() / samples ** 2
    ix, iy = (src_x - 0.5).clamp(0, width - 1), (src_y - 0.5).clamp(0, height - 1)
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.long(), y0.long()
    x1i, y1i = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    bins = torch.arange(side, device=device) // samples
    token = (bins[:, None] * grid + bins[None, :]).expand(batch, side, side)  # output cell of every point
    weights = box.new_zeros(batch, grid * grid * height * width, dtype=torch.float32)
    for cy, cx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1i, (1 - fy) * fx), (y1i, x0, fy * (1 - fx)),
                       (y1i, x1i, fy * fx)):
        flat = token * (height * width) + cy * width + cx
        weights.scatter_add_(1, flat.reshape(batch, -1), (wt * inside).reshape(batch, -1))
    return weights.view(batch, grid * grid, height * width)


def token_label_targets(label: torch.Tensor, box: torch.Tensor, cell_map: torch.Tensor | None, num_classes: int,
                        smoothing: float = 0.1, warp: torch.Tensor | None = None, mode: str = "exact",
                        grid: int | None = None):
    """(class target [B, K], dense target [B, g*g, K]) from label maps [B, 2, 5, h, w] and the crop geometry.

    ``mode='exact'``: the mean teacher logit over each token's region of the crop ``box`` [B, 4] (x1, y1, x2, y2 on
    the augmented image, label-map units), read through ``warp`` [B, 2, 3] (None: identity) on the original map
    (``sampling_weights``); the class target is the mean over the whole crop. ``mode='reference'``: the reference's
    ``roi_align(aligned=False)`` over ``box - 0.5`` (the label map and box as ``label_geometry.reference_geometry``
    makes them). Both then softmax over the classes and smooth. ``cell_map`` [B, g, g] (optional): output token t
    takes the target of token ``cell_map[t]``, or the class target where it is -1. ``grid``: g (default: the cell
    map's side).
    """
    batch, _, _, h, w = label.shape
    grid = grid or cell_map.shape[-1]
    dense_map = dense_label_map(label, num_classes)  # [B, h*w, K]
    if mode == "reference":
        maps = dense_map.transpose(1, 2).reshape(batch, num_classes, h, w)
        rois = torch.cat([torch.arange(batch, dtype=torch.float32, device=box.device).unsqueeze(1),
                          box.float() - 0.5], 1)
        dense = roi_align(maps, rois, output_size=(grid, grid)).flatten(2).transpose(1, 2)  # [B, g*g, K]
        image = roi_align(maps, rois, output_size=(1, 1)).flatten(1)  # [B, K]
    elif mode == "exact":
        if warp is None:
            warp = IDENTITY_WARP.to(box.device).expand(batch, 2, 3)
        dense = torch.bmm(sampling_weights(box, warp, grid, math.ceil(max(h, w) / grid), (h, w)), dense_map)
        image = torch.bmm(sampling_weights(box, warp, 1, max(h, w), (h, w)), dense_map)[:, 0]
    else:
        raise ValueError(f"mode must be one of {list(TARGET_MODES)}, got {mode!r}")
    dense = smooth(dense.softmax(dim=2).transpose(1, 2), smoothing).transpose(1, 2)  # [B, g*g, K]
    image = smooth(image.softmax(dim=1), smoothing)  # [B, K]
    if cell_map is not None:
        flat = cell_map.reshape(batch, grid * grid, 1)
        moved = dense.gather(1, flat.clamp(min=0).expand(-1, -1, num_classes))
        dense = torch.where(flat >= 0, moved, image.unsqueeze(1))
    return image, dense.contiguous()


def class_targets(class_index: torch.Tensor, num_classes: int, tokens: int, smoothing: float = 0.1):
    """(class target [B, K], dense target [B, tokens, K]) from plain labels: every token gets the image label."""
    onehot = F.one_hot(class_index.long(), num_classes).float()
    target = onehot * (1.0 - smoothing) + smoothing / num_classes
    return target, target.unsqueeze(1).expand(-1, tokens, -1)


def mix_token_box(grid: int, lam: float, rng: np.random.RandomState) -> tuple[int, int, int, int]:
    """(h1, w1, h2, w2) on a grid x grid patch grid cutting about ``1 - lam`` of it (CutMix-style box)."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(grid * cut), int(grid * cut)
    cy, cx = rng.randint(grid), rng.randint(grid)
    h1, h2 = np.clip(cy - cut_h // 2, 0, grid), np.clip(cy + cut_h // 2, 0, grid)
    w1, w2 = np.clip(cx - cut_w // 2, 0, grid), np.clip(cx + cut_w // 2, 0, grid)
    return int(h1), int(w1), int(h2), int(w2)


class TokenLabelTask:
    """LV-ViT recipe: MixToken, token-labelling loss at the largest full sub-network, soft CE at the other full one.

    Loss at (L, 1): ``cls_weight * SoftCE(cls, mixed class target) + dense_weight * SoftCE(aux tokens, dense
    target)`` (the model flips the aux outputs of the box back, so the dense target is the unmixed one); at (s, 1):
    ``SoftCE(cls, mixed class target)``. The class target is the teacher's image-level label (token labels on) or
    the smoothed ground truth (off), mixed as ``lam * t + (1 - lam) * t.flip(0)`` with lam = 1 - box area / g^2.
    ``targets``: how the batch's crop geometry is read (``token_label_targets``' mode; the data set's
    ``TokenLabelTransform`` must have been built with the same). ``box_as_tensor`` (``--compile``): the MixToken box
    reaches the model as an int64 tensor on the batch's device, so that one compiled graph serves every box; eager
    runs pass 4 ints, which the model checks without reading a tensor back from the device (a sync on a GPU).
    """

    def __init__(self, num_classes: int, grid: int, smoothing: float = 0.1, mix_token: bool = True,
                 cls_weight: float = 1.0, dense_weight: float = 1.0, targets: str = "exact",
                 box_as_tensor: bool = False):
        if targets not in TARGET_MODES:
            raise ValueError(f"--token-label-targets must be one of {list(TARGET_MODES)}, got {targets!r}")
        self.num_classes, self.grid, self.smoothing = num_classes, grid, smoothing
        self.mix_token, self.cls_weight, self.dense_weight = mix_token, cls_weight, dense_weight
        self.targets, self.box_as_tensor = targets, box_as_tensor
        self.soft_ce = SoftTargetCrossEntropy()

    def prepare(self, images, targets):
        if isinstance(targets, (tuple, list)):
            label, box, warp, _ = targets
            cls_target, dense_target = token_label_targets(label, box, None, self.num_classes, self.smoothing,
                                                           warp=warp, mode=self.targets, grid=self.grid)
        else:
            cls_target, dense_target = class_targets(targets, self.num_classes, self.grid ** 2, self.smoothing)
        kwargs = {}
        if self.mix_token:
            lam = float(np.random.beta(1.0, 1.0))
            box = mix_token_box(self.grid, lam, np.random)
            h1, w1, h2, w2 = box
            lam = 1.0 - (h2 - h1) * (w2 - w1) / self.grid ** 2
            if lam < 1.0:
                cls_target = lam * cls_target + (1.0 - lam) * cls_target.flip(0)
            kwargs["mix_box"] = (torch.tensor(box, dtype=torch.int64, device=images.device) if self.box_as_tensor
                                 else box)
        return images, (cls_target, dense_target), kwargs

    def logits(self, output):
        return output[0] if isinstance(output, tuple) else output

    def supervised_loss(self, output, targets, largest: bool):
        cls_target, dense_target = targets
        if isinstance(output, tuple):
            cls_logits, aux_logits, _ = output
            aux = aux_logits.float().reshape(-1, aux_logits.shape[-1])
            return (self.cls_weight * self.soft_ce(cls_logits.float(), cls_target)
                    + self.dense_weight * self.soft_ce(aux, dense_target.reshape(-1, dense_target.shape[-1])))
        return self.soft_ce(output.float(), cls_target)
