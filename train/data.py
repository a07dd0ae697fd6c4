"""ImageNet-style ImageFolder data sets, the recipes' transforms, and the samplers (repeated augmentation, shards).

Layout: ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG``; both splits must list the same classes.
"""
from __future__ import annotations

import os

import torch
from PIL import ImageOps
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets, transforms
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.distributed_sampler import RepeatAugSampler

from .distributed import DistInfo


class DataError(ValueError):
    """A data path that is missing or not laid out as the trainer expects."""


def check_split_dir(root: str | None, split: str, arg_name: str) -> str:
    """``root/split`` after checking it exists and holds class folders; raises DataError naming ``arg_name``."""
    if not root:
        raise DataError(f"{arg_name} is required (a folder with train/ and val/ ImageFolder splits)")
    if not os.path.isdir(root):
        raise DataError(f"{arg_name} {root!r} is not a directory")
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f"{arg_name} {root!r} has no {split}/ folder; expected {root}/{split}/<class>/<image>")
    classes = [d.name for d in os.scandir(path) if d.is_dir()]
    if not classes:
        raise DataError(f"{path!r} holds no class folders; expected {path}/<class>/<image>")
    return path


def image_folder(root: str, split: str, transform, arg_name: str = "--data-path") -> datasets.ImageFolder:
    """torchvision ImageFolder of ``root/split`` with a clear DataError for missing or empty folders."""
    path = check_split_dir(root, split, arg_name)
    try:
        return datasets.ImageFolder(path, transform=transform)
    except FileNotFoundError as err:  # a class folder without any image file
        raise DataError(f"{arg_name}: {err}") from None


def check_same_classes(train_set, val_set):
    if train_set.classes != val_set.classes:
        missing = sorted(set(train_set.classes) ^ set(val_set.classes))[:5]
        raise DataError(f"train/ and val/ must hold the same class folders; they differ in {missing}")


def posterize_bits_safe(img, bits_to_keep, **_):
    """timm's posterize op for Pillow >= 12, which refuses 0 bits (RandAugment's magnitude 10 asks for 0 bits:
    keep no bit, i.e. a black image, as older Pillow did)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def fix_rand_augment(transform):
    """Swap the posterize function of every RandAugment op inside ``transform`` for ``posterize_bits_safe``."""
    for t in getattr(transform, "transforms", [transform]):
        for op in getattr(t, "ops", []):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = posterize_bits_safe
    return transform


def train_transform(args, img_size: int):
    """The DeiT/timm training pipeline: RandomResizedCrop, hflip, RandAugment, colour jitter, RandomErasing."""
    return fix_rand_augment(create_transform(
        input_size=img_size, is_training=True, color_jitter=args.color_jitter,
        auto_augment=args.aa if args.aa and args.aa.lower() != "none" else None,
        interpolation=args.train_interpolation, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount))


def eval_transform(img_size: int, crop_pct: float):
    """Resize(int(img_size / crop_pct), bicubic) -> CenterCrop(img_size) -> ToTensor -> Normalize(ImageNet)."""
    return transforms.Compose([
        transforms.Resize(int(img_size / crop_pct), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order: an exact split of an evaluation set (no padding, so summed
    counts over ranks cover every sample exactly once)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def train_sampler(dataset: Dataset, info: DistInfo, repeated_aug: bool, seed: int) -> Sampler:
    """Repeated augmentation (3 repeats, DeiT's RASampler as timm's RepeatAugSampler) or a seeded shuffling
    DistributedSampler (also in a single process, so that ``set_epoch`` makes every epoch's order reproducible)."""
    if repeated_aug:
        return RepeatAugSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True)
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)


def make_loader(dataset, sampler, batch_size: int, num_workers: int, pin_memory: bool, drop_last: bool,
                collate_fn=None) -> DataLoader:
    if len(sampler) < batch_size and drop_last:
        raise DataError(f"each process gets {len(sampler)} training samples per epoch, fewer than one batch of "
                        f"{batch_size}; lower --batch-size")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last, collate_fn=collate_fn,
                      persistent_workers=False)


def steps_per_epoch(sampler: Sampler, batch_size: int) -> int:
    return len(sampler) // batch_size


def eval_sampler(dataset: Dataset, info: DistInfo, dist_eval: bool) -> Sampler:
    """Shards the set across ranks with ``--dist-eval``; otherwise every rank evaluates all of it."""
    if dist_eval and info.distributed:
        return ShardSampler(len(dataset), info.rank, info.world_size)
    return ShardSampler(len(dataset), 0, 1)
