"""LV-ViT token labelling: label files, label-aware augmentation, dense targets, MixToken and the loss.

Label files: one per training image at ``DIR/<class_dir>/<image_stem>.pt``, a half tensor [2, 5, h, w] holding the
top-5 scores ([0]) and top-5 class indices ([1]) of every spatial cell, from a strong CNN teacher.

The data set returns, beside the image, what the targets need: the label map, the crop box on the label map, and a
``cell_map`` [S, S] telling for each output token cell which cell of the crop it shows after the flip and the
geometric RandAugment ops (-1 where the op filled the image). ``token_label_targets`` then builds the targets in
batch: scatter the top-5 scores into a (K, h, w) map, roi_align over the crop box to S x S (dense) and 1 x 1 (image
level), softmax over classes, smooth (``* (1 - eps + eps/K) + eps/K``, i.e. ``*0.9001 + 1e-4`` for eps 0.1 and
K = 1000), and move the dense cells as ``cell_map`` says (filled cells take the image-level target).
"""
from __future__ import annotations

import os
import random

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

GEOMETRIC_OPS = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}


def label_path(label_dir: str, image_path: str) -> str:
    """``label_dir/<class_dir>/<image_stem>.pt`` of an ImageFolder image path."""
    class_dir = os.path.basename(os.path.dirname(image_path))
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(label_dir, class_dir, stem + ".pt")


def read_label_map(path: str) -> torch.Tensor:
    """The [2, 5, h, w] label tensor of ``path`` (weights_only load), with a clear error naming the file."""
    if not os.path.isfile(path):
        raise DataError(f"token label file {path!r} is missing (--token-label-data DIR must hold "
                        "DIR/<class_dir>/<image_stem>.pt for every training image)")
    try:
        label = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise DataError(f"cannot read token label file {path!r}: {err}") from None
    if not isinstance(label, torch.Tensor) or label.dim() != 4 or tuple(label.shape[:2]) != (2, 5):
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise DataError(f"token label file {path!r} must hold a [2, 5, h, w] tensor, got {shape}")
    return label


class LabelAwareRandAugment:
    """timm's RandAugment whose geometric ops also move a cell-index image (nearest, fill -1) the same way."""

    def __init__(self, config_str: str, img_size: int, interpolation=None):
        hparams = dict(translate_const=int(img_size * 0.45),
                       img_mean=tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN))
        if interpolation is not None:
            hparams["interpolation"] = interpolation
        self.inner = fix_rand_augment(rand_augment_transform(config_str, hparams))

    def __call__(self, img: Image.Image, cells: Image.Image | None):
        inner = self.inner
        ops = np.random.choice(inner.ops, inner.num_layers, replace=inner.choice_weights is None,
                               p=inner.choice_weights)
        for op in ops:
            if op.prob < 1.0 and random.random() > op.prob:
                continue
            magnitude = op.magnitude
            if op.magnitude_std == float("inf"):
                magnitude = random.uniform(0, magnitude)
            elif op.magnitude_std > 0:
                magnitude = random.gauss(magnitude, op.magnitude_std)
            magnitude = max(0.0, min(magnitude, op.magnitude_max or _LEVEL_DENOM))
            level_args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else tuple()
            img = op.aug_fn(img, *level_args, **dict(op.kwargs))
            if op.name in GEOMETRIC_OPS and cells is not None:
                cells = op.aug_fn(cells, *level_args, fillcolor=-1, resample=Image.NEAREST)
        return img, cells


class TokenLabelTransform:
    """RandomResizedCrop (recording the box), label-aware hflip and RandAugment, ToTensor, Normalize,
    RandomErasing. ``__call__(img, label_hw) -> (image [3, S, S], box [4] on the label map, cell_map [g, g])``."""

    def __init__(self, img_size: int, label_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = "random", hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                 reprob: float = 0.25, remode: str = "pixel", recount: int = 1):
        self.crop = RandomResizedCropAndInterpolation(img_size, scale=scale, ratio=ratio, interpolation=interpolation)
        self.img_size, self.label_size, self.hflip = img_size, label_size, hflip
        self.rand_augment = LabelAwareRandAugment(auto_augment, img_size) if auto_augment else None
        self.to_tensor = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, device="cpu") if reprob > 0 else None

    def __call__(self, img: Image.Image, label_hw: tuple[int, int]):
        width, height = img.size
        top, left, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        interp = random.choice(self.crop.interpolation) if isinstance(self.crop.interpolation, (tuple, list)) \
            else self.crop.interpolation
        img = transforms.functional.resized_crop(img, top, left, h, w, [self.img_size, self.img_size], interp)
        lh, lw = label_hw
        box = torch.tensor([left / width * lw, top / height * lh, (left + w) / width * lw, (top + h) / height * lh],
                           dtype=torch.float32)  # (x1, y1, x2, y2) on the label map
        g = self.label_size
        cell_map = torch.arange(g * g).reshape(g, g)
        if random.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            cell_map = cell_map.flip(1)
        if self.rand_augment is not None:
            img, cells = self.rand_augment(img, _cell_image(self.img_size, g))
            source = _sample_cells(cells, g)  # [g, g] cell of the crop shown at each output cell, -1 = fill
            cell_map = torch.where(source >= 0, cell_map.flatten()[source.clamp(min=0)], torch.full_like(source, -1))
        image = self.to_tensor(img)
        if self.erase is not None:
            image = self.erase(image)
        return image, box, cell_map


def _cell_image(size: int, grid: int) -> Image.Image:
    """An int32 image whose pixels hold the index of their token cell (row-major on a grid x grid layout)."""
    cells = (np.arange(size) * grid // size).astype(np.int32)
    return Image.fromarray(cells[:, None] * grid + cells[None, :])


def _sample_cells(cells: Image.Image, grid: int) -> torch.Tensor:
    size = cells.size[0]
    centres = ((np.arange(grid) + 0.5) * size / grid).astype(np.int64)
    return torch.from_numpy(np.asarray(cells)[np.ix_(centres, centres)].astype(np.int64))


class TokenLabelDataset(Dataset):
    """ImageFolder ``root/train`` with the token-label file of every image.

    Item: ``(image, (label_map [2, 5, h, w] float16, box [4], cell_map [g, g], class_index))``.
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
        first = self.folder.samples[0][0]
        read_label_map(label_path(label_dir, first))  # fail early on a wrong directory

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        image_path, class_index = self.folder.samples[index]
        label = read_label_map(label_path(self.label_dir, image_path)).half()
        img = self.folder.loader(image_path)
        image, box, cell_map = self.transform(img, tuple(label.shape[-2:]))
        return image, (label, box, cell_map, class_index)


def smooth(probs: torch.Tensor, smoothing: float) -> torch.Tensor:
    """``probs * (1 - eps + eps/K) + eps/K`` with K = ``probs.shape[1]`` (the class dimension of [B, K, ...])."""
    off = smoothing / probs.shape[1]
    return probs * (1.0 - smoothing + off) + off


def token_label_targets(label: torch.Tensor, box: torch.Tensor, cell_map: torch.Tensor, num_classes: int,
                        smoothing: float = 0.1):
    """(class target [B, K], dense target [B, g*g, K]) from a batch of label maps [B, 2, 5, h, w], crop boxes
    [B, 4] (x1, y1, x2, y2 on the label map) and cell maps [B, g, g]."""
    batch, _, _, h, w = label.shape
    grid = cell_map.shape[-1]
    scores = label[:, 0].float()  # [B, 5, h, w]
    index = label[:, 1].long().clamp(0, num_classes - 1)
    dense_map = scores.new_zeros(batch, num_classes, h, w).scatter_(1, index, scores)  # [B, K, h, w]
    rois = torch.cat([torch.arange(batch, dtype=torch.float32, device=box.device).unsqueeze(1), box.float()], 1)
    dense = roi_align(dense_map, rois, output_size=(grid, grid), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    image = roi_align(dense_map, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    dense = smooth(dense.flatten(2).softmax(dim=1), smoothing)  # [B, K, g*g]
    image = smooth(image.flatten(1).softmax(dim=1), smoothing)  # [B, K]
    flat = cell_map.reshape(batch, 1, grid * grid)
    moved = dense.gather(2, flat.clamp(min=0).expand(-1, num_classes, -1))  # [B, K, g*g]
    moved = torch.where(flat >= 0, moved, image.unsqueeze(2))
    return image, moved.transpose(1, 2).contiguous()


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
    """

    def __init__(self, num_classes: int, grid: int, smoothing: float = 0.1, mix_token: bool = True,
                 cls_weight: float = 1.0, dense_weight: float = 1.0):
        self.num_classes, self.grid, self.smoothing = num_classes, grid, smoothing
        self.mix_token, self.cls_weight, self.dense_weight = mix_token, cls_weight, dense_weight
        self.soft_ce = SoftTargetCrossEntropy()

    def prepare(self, images, targets):
        if isinstance(targets, (tuple, list)):
            label, box, cell_map, _ = targets
            if cell_map.shape[-1] != self.grid:
                raise ValueError(f"--token-label-size {cell_map.shape[-1]} must equal the largest token grid "
                                 f"{self.grid}")
            cls_target, dense_target = token_label_targets(label, box, cell_map, self.num_classes, self.smoothing)
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
            kwargs["mix_box"] = box
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
