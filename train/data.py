"""ImageNet-style ImageFolder data sets, the recipes' transforms, and the samplers (repeated augmentation, shards).

Layout: ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG``; both splits must list the same classes.
"""
from __future__ import annotations

import multiprocessing
import os
import sys

from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
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


class BadImageError(DataError):
    """An image file that cannot be opened or decoded (corrupt, truncated, unreadable)."""


def checked_loader(path: str) -> Image.Image:
    """Open ``path`` as an RGB image, decoding it fully; raises ``BadImageError`` naming the file on failure."""
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {path!r}: {type(err).__name__}: {err}") from None


class SkipBadImages(Dataset):
    """A data set whose unreadable images are skipped (counted, each path warned about once per process).

    A training set (``drop=False``) takes the next readable item instead, so batches keep their size (Mixup needs
    even batches); an evaluation set (``drop=True``) yields None, which ``collate_skip_none`` drops, so nothing is
    counted twice. ``strict``: raise the ``BadImageError`` (it names the file) instead (``--strict-data``).

    Args:
        dataset: an ImageFolder (or a data set holding one as ``.folder``) whose loader is ``checked_loader``.
        strict: raise on the first unreadable image.
        drop: yield None for an unreadable item instead of the next readable one.
        max_tries: consecutive unreadable items after which the data set is reported broken.
    """

    def __init__(self, dataset: Dataset, strict: bool = False, drop: bool = False, max_tries: int = 64):
        self.dataset, self.strict, self.drop, self.max_tries = dataset, strict, drop, max_tries
        self.skipped = multiprocessing.Value("q", 0)  # shared with DataLoader workers
        self._warned: set[str] = set()

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # classes, samples, targets ... of the wrapped set
        if name in ("dataset", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        for attempt in range(self.max_tries):
            try:
                return self.dataset[(index + attempt) % len(self.dataset)]
            except BadImageError as err:
                if self.strict:
                    raise BadImageError(f"{err} (--strict-data; drop the flag to skip unreadable images)") from None
                with self.skipped.get_lock():
                    self.skipped.value += 1
                if str(err) not in self._warned:
                    self._warned.add(str(err))
                    print(f"warning: skipping an unreadable image: {err}", file=sys.stderr, flush=True)
                if self.drop:
                    return None
        raise DataError(f"{self.max_tries} consecutive items from index {index} hold unreadable images; "
                        "is the data set corrupt?")


def guard_images(dataset: Dataset, strict: bool = False, drop: bool = False) -> Dataset:
    """``dataset`` reading images through ``checked_loader`` inside ``SkipBadImages``; unchanged when it reads no
    image files (e.g. the embedded digits)."""
    folder = dataset if isinstance(dataset, datasets.DatasetFolder) else getattr(dataset, "folder", None)
    if not isinstance(folder, datasets.DatasetFolder):
        return dataset
    folder.loader = checked_loader
    return SkipBadImages(dataset, strict=strict, drop=drop)


def skipped_images(dataset: Dataset) -> int:
    """How many unreadable images ``dataset`` (a ``SkipBadImages``) skipped so far in every process; 0 otherwise."""
    counter = dataset.__dict__.get("skipped") if isinstance(dataset, SkipBadImages) else None
    return int(counter.value) if counter is not None else 0


def collate_skip_none(batch):
    """default_collate of the items that are not None; None when every item was dropped."""
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None


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
