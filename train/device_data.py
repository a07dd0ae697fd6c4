"""The device data path (``--data-backend device``): loader workers only read the JPEG files; decoding (nvJPEG on
CUDA, batched) and the augmentations run on the training device, on whole batches, every image with its own random
draws (crop, flip, RandAugment ops and magnitudes, erasing box). The same code runs on CPU tensors.

Pieces: ``EncodedImageFolder`` (items: the file's bytes), ``collate_encoded`` -> ``EncodedBatch`` (bytes stay on
the host; ``.to(device)`` only names where to decode), ``DeviceTrainTransform`` (the engine's ``batch_transform``:
RandomResizedCrop, hflip, RandAugment, colour jitter when RandAugment is off, Normalize, RandomErasing) and
``DeviceEvalTransform`` (Resize, CenterCrop, Normalize); for LV-ViT with token labels ``EncodedTokenLabelSet`` (bytes
and label map) and ``DeviceTokenLabelTransform`` (the reference's order: hflip and RandAugment on the full image,
then the crop, with the label geometry of ``train/label_geometry.py``). Crops and resizes use torchvision's tensor
functions; RandAugment reuses timm's op list and draws (``token_label.LabelAwareRandAugment.draw``) and applies each
op to all images that drew it at once, with per-image magnitudes (``device_ops.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation

from . import device_ops
from .data import BadImageError, DataError, check_split_dir

JPEG_MAGIC = b"\xff\xd8"


class EncodedImageFolder(Dataset):
    """ImageFolder ``root/split`` whose items are ``(bytes as uint8 [n], class_index)``: no decode in the workers.

    ``.folder`` is the ImageFolder (classes, samples); its loader is not used here.
    """

    def __init__(self, root: str, split: str, arg_name: str = "--data-path"):
        path = check_split_dir(root, split, arg_name)
        try:
            self.folder = datasets.ImageFolder(path)
        except FileNotFoundError as err:
            raise DataError(f"{arg_name}: {err}") from None
        self.classes = self.folder.classes

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        path, class_index = self.folder.samples[index]
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as err:
            raise BadImageError(f"cannot read image {path!r}: {err}") from None
        if len(data) < 4:
            raise BadImageError(f"cannot read image {path!r}: {len(data)} bytes")
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), path), class_index


@dataclass
class EncodedImage:
    data: torch.Tensor  # uint8 [n]: the file's bytes
    path: str


@dataclass
class EncodedBatch:
    """The files of one batch: bytes stay on the host (nvJPEG reads them from there); ``.to(device)`` records the
    device to decode on, so the engine's host-to-device step works unchanged."""

    images: list = field(default_factory=list)  # [EncodedImage]
    device: torch.device = torch.device("cpu")

    def to(self, device, non_blocking: bool = False):
        return EncodedBatch(self.images, torch.device(device))

    def pin_memory(self):
        return self

    def __len__(self):
        return len(self.images)


def collate_encoded(batch):
    """(EncodedBatch, class indices int64 [B]) from ``EncodedImageFolder`` items."""
    return EncodedBatch([item[0] for item in batch]), torch.tensor([int(item[1]) for item in batch])


def decode_batch(batch: EncodedBatch) -> list[torch.Tensor]:
    """uint8 RGB [3, H, W] images on ``batch.device``: JPEGs decoded together (nvJPEG on CUDA); a file the batched
    decoder refuses (PNG, CMYK JPEG ...) is decoded alone on the host and moved. Raises ``BadImageError`` naming a
    file that nothing decodes."""
    device = batch.device
    jpeg = [i for i, item in enumerate(batch.images) if bytes(item.data[:2].tolist()) == JPEG_MAGIC]
    out: list[torch.Tensor | None] = [None] * len(batch)
    if jpeg:
        try:
            decoded = decode_jpeg([batch.images[i].data for i in jpeg], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpeg, decoded):
                out[i] = image
        except RuntimeError:
            pass  # one bad file fails the whole call: decode them one by one below
    for i, image in enumerate(out):
        if image is None:
            item = batch.images[i]
            try:
                out[i] = decode_image(item.data, mode=ImageReadMode.RGB).to(device)
            except RuntimeError as err:
                raise BadImageError(f"cannot read image {item.path!r}: {err}") from None
    return out


def normalize(images: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x / 255 - mean) / std."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


_INTERPOLATIONS = {"bilinear": (InterpolationMode.BILINEAR,), "bicubic": (InterpolationMode.BICUBIC,),
                   "random": (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)}


class DeviceTrainTransform:
    """``(EncodedBatch or [uint8 [3, H, W]], targets) -> (float32 [B, 3, S, S], targets)`` on the batch's device.

    Per image: RandomResizedCrop (timm's draw; torchvision's antialiased resize, bilinear or bicubic at random),
    hflip, RandAugment (timm's ops and draws), colour jitter (only without RandAugment, as timm does), Normalize,
    RandomErasing (timm's, per image). ``last_draws`` keeps the last batch's crops ((top, left, height, width,
    interpolation) per image) and flips.
    """

    def __init__(self, img_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "random",
                 hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1", color_jitter: float = 0.4,
                 reprob: float = 0.25, remode: str = "pixel", recount: int = 1):
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"--train-interpolation must be one of {sorted(_INTERPOLATIONS)} with "
                             f"--data-backend device, got {interpolation!r}")
        self.img_size, self.scale, self.ratio, self.hflip = img_size, tuple(scale), tuple(ratio), hflip
        self.interpolations = _INTERPOLATIONS[interpolation]
        self.rand_augment = None
        if auto_augment and auto_augment.lower() != "none":
            from .token_label import LabelAwareRandAugment

            self.rand_augment = LabelAwareRandAugment(auto_augment, img_size)
        self.color_jitter = float(color_jitter or 0.0) if self.rand_augment is None else 0.0
        self.reprob, self.remode, self.recount = reprob, remode, recount
        self.last_draws: dict = {}

    def __call__(self, images, targets):
        decoded = decode_batch(images) if isinstance(images, EncodedBatch) else list(images)
        device = decoded[0].device
        crops, draws = [], []
        for image in decoded:
            top, left, h, w = RandomResizedCropAndInterpolation.get_params(image, self.scale, self.ratio)
            mode = self.interpolations[int(torch.randint(len(self.interpolations), ()))]
            crops.append(TF.resized_crop(image, top, left, h, w, [self.img_size, self.img_size], mode,
                                         antialias=True))
            draws.append((top, left, h, w, mode))
        batch = torch.stack(crops)  # uint8 [B, 3, S, S]
        flips = torch.rand(len(batch)) < self.hflip
        batch = torch.where(flips.to(device).view(-1, 1, 1, 1), batch.flip(-1), batch)
        if self.rand_augment is not None:
            batch = device_ops.rand_augment(batch, [self.rand_augment.draw() for _ in range(len(batch))])
        elif self.color_jitter > 0:
            batch = device_ops.color_jitter(batch, self.color_jitter)
        out = normalize(batch)
        if self.reprob > 0:
            out = RandomErasing(self.reprob, mode=self.remode, max_count=self.recount, device=str(device))(out)
        self.last_draws = {"crops": draws, "flips": flips}
        return out, targets


class DeviceEvalTransform:
    """``(EncodedBatch or [uint8 [3, H, W]], targets) -> (float32 [B, 3, S, S], targets)``: Resize(int(S /
    crop_pct), bicubic, antialias) -> CenterCrop(S) -> Normalize, as ``data.eval_transform`` does with PIL."""

    def __init__(self, img_size: int, crop_pct: float):
        self.img_size, self.resize = img_size, int(img_size / crop_pct)

    def __call__(self, images, targets):
        decoded = decode_batch(images) if isinstance(images, EncodedBatch) else list(images)
        out = [TF.center_crop(TF.resize(image, [self.resize], InterpolationMode.BICUBIC, antialias=True),
                              [self.img_size, self.img_size]) for image in decoded]
        return normalize(torch.stack(out)), targets


def device_train_set(root: str, arg_name: str, args, img_size: int):
    """(EncodedImageFolder of root/train, collate_encoded, DeviceTrainTransform) from the recipe's flags."""
    transform = DeviceTrainTransform(
        img_size, scale=getattr(args, "scale", (0.08, 1.0)), ratio=getattr(args, "ratio", (3 / 4, 4 / 3)),
        interpolation=args.train_interpolation, hflip=getattr(args, "hflip", 0.5),
        auto_augment=args.aa, color_jitter=args.color_jitter, reprob=args.reprob, remode=args.remode,
        recount=args.recount)
    return EncodedImageFolder(root, "train", arg_name), collate_encoded, transform



class EncodedTokenLabelSet(EncodedImageFolder):
    """``EncodedImageFolder`` of ``root/train`` whose items also carry the image's label map:
    ``(EncodedImage, (label [2, 5, h, w] float16, class_index))``; ``label_dir``: archive or label store."""

    def __init__(self, root: str, label_dir: str, arg_name: str = "data_dir"):
        from .label_store import open_labels

        super().__init__(root, "train", arg_name)
        if not label_dir or not os.path.isdir(label_dir):
            raise DataError(f"--token-label-data {label_dir!r} is not a directory")
        self.labels = open_labels(label_dir)
        self.labels.read(self.folder.samples[0][0])  # fail early on a wrong directory

    def __getitem__(self, index):
        encoded, class_index = super().__getitem__(index)
        return encoded, (self.labels.read(encoded.path), class_index)


def collate_token_labels(batch):
    """(EncodedBatch, (label maps [B, 2, 5, h, w], class indices [B])) from ``EncodedTokenLabelSet`` items."""
    return (EncodedBatch([item[0] for item in batch]),
            (torch.stack([item[1][0] for item in batch]), torch.tensor([int(item[1][1]) for item in batch])))


class DeviceTokenLabelTransform:
    """``(EncodedBatch or [uint8 [3, H, W]], (label, class_index)) -> (float32 [B, 3, S, S], (label, box, warp,
    class_index))`` on the batch's device, the device twin of ``token_label.TokenLabelTransform``: per image hflip
    and RandAugment on the full image (each image alone: their sizes differ), RandomResizedCrop recording the box,
    the label geometry (``targets``: 'exact' or 'reference'), then Normalize and RandomErasing on the batch."""

    def __init__(self, img_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = "random",
                 hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
                 remode: str = "pixel", recount: int = 1, targets: str = "exact"):
        from .token_label import TokenLabelTransform

        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"--train-interpolation must be one of {sorted(_INTERPOLATIONS)} with "
                             f"--data-backend device, got {interpolation!r}")
        self.labels = TokenLabelTransform(img_size, 0, scale=scale, ratio=ratio, hflip=hflip,
                                          auto_augment=auto_augment if auto_augment and auto_augment.lower() != "none"
                                          else None, reprob=0.0, targets=targets)
        self.img_size, self.scale, self.ratio = img_size, tuple(scale), tuple(ratio)
        self.interpolations = _INTERPOLATIONS[interpolation]
        self.reprob, self.remode, self.recount = reprob, remode, recount

    def __call__(self, images, targets):
        label, class_index = targets
        decoded = decode_batch(images) if isinstance(images, EncodedBatch) else list(images)
        device = decoded[0].device
        crops, labels, boxes, warps = [], [], [], []
        for image, label_map in zip(decoded, label):
            draws = self.labels.draw_augment()
            if draws.flip:
                image = image.flip(-1)
            if draws.ops:
                image = device_ops.rand_augment(image[None], [draws.ops])[0]
            draws.crop = tuple(RandomResizedCropAndInterpolation.get_params(image, self.scale, self.ratio))
            mode = self.interpolations[int(torch.randint(len(self.interpolations), ()))]
            top, left, h, w = draws.crop
            crops.append(TF.resized_crop(image, top, left, h, w, [self.img_size, self.img_size], mode,
                                         antialias=True))
            out_label, box, warp = self.labels.label_geometry(label_map, (image.shape[-1], image.shape[-2]), draws)
            labels.append(out_label)
            boxes.append(box.to(device))
            warps.append(warp.to(device))
        out = normalize(torch.stack(crops))
        if self.reprob > 0:
            out = RandomErasing(self.reprob, mode=self.remode, max_count=self.recount, device=str(device))(out)
        return out, (torch.stack(labels), torch.stack(boxes), torch.stack(warps), class_index)


def device_token_label_set(root: str, label_dir: str, arg_name: str, args, img_size: int):
    """(EncodedTokenLabelSet, collate_token_labels, DeviceTokenLabelTransform) from the LV-ViT recipe's flags."""
    transform = DeviceTokenLabelTransform(
        img_size, scale=args.scale, ratio=args.ratio, interpolation=args.train_interpolation, hflip=args.hflip,
        auto_augment=args.aa, reprob=args.reprob, remode=args.remode, recount=args.recount,
        targets=args.token_label_targets)
    return EncodedTokenLabelSet(root, label_dir, arg_name), collate_token_labels, transform
