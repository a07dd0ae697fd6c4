"""Labelled image sets for the deploy commands: a tensor file, or an image folder preprocessed as the model was
evaluated.

The preprocessing of a folder comes from the data config the trainer records in its checkpoints
(``ckpt["supervit"]["data_config"]``: input_size, mean, std, interpolation, crop_pct); without one, from the model's
``in_chans`` and largest size and timm's pretrained config of the architecture (ImageNet normalisation, the recipe's
crop). One-channel models read images as greyscale.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..models.checkpoint import load_failure
from . import DeployError

_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")


def data_config(model: nn.Module, checkpoint: dict | None = None) -> dict:
    """{input_size (C, S, S), mean, std, interpolation, crop_pct} of the evaluation transform of ``model``."""
    import timm.data

    side = model.img_sizes[-1]
    base = timm.data.resolve_data_config({}, model=model)
    config = {"input_size": (model.in_chans, side, side), "interpolation": base["interpolation"],
              "mean": tuple(base["mean"]), "std": tuple(base["std"]), "crop_pct": base["crop_pct"]}
    info = checkpoint.get("supervit") if isinstance(checkpoint, dict) else None
    recorded = info.get("data_config") if isinstance(info, dict) else None
    if isinstance(recorded, dict):
        config.update({k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in _KEYS})
    for key in ("mean", "std"):  # a per-channel statistic of another channel count: its average, per channel
        values = config[key]
        if len(values) != model.in_chans:
            config[key] = (sum(values) / len(values),) * model.in_chans
    return config


def check_images(images: torch.Tensor, labels: torch.Tensor, model: nn.Module, source: str) -> None:
    """DeployError, in the terms of the image set, when ``images`` [N, C, H, W] / ``labels`` [N] do not fit."""
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DeployError(f"{source}: images {tuple(images.shape)} and labels {tuple(labels.shape)} must be "
                          "[N, C, H, W] and [N] (one label per image)")
    if images.shape[1] != model.in_chans:
        kind = {1: "one-channel (greyscale)", 3: "three-channel (RGB)"}.get(model.in_chans, f"{model.in_chans}-channel")
        raise DeployError(f"{source}: the images have {images.shape[1]} channel(s), but the model takes "
                          f"{kind} images; give images of {model.in_chans} channel(s)")


def load_tensors(path: str, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, C, H, W] float, labels [N] int64) of a ``torch.save``'d dict {'images', 'labels'} (read
    weights-only; images normalised as the model expects)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only parsing runs no code: any failure means a bad file
        raise DeployError(f"--tensors {path!r} cannot be read: {load_failure(err)}") from None
    if not isinstance(data, dict) or not {"images", "labels"} <= set(data) \
            or not all(isinstance(data[k], torch.Tensor) for k in ("images", "labels")):
        raise DeployError(f"--tensors {path!r} must hold a dict with tensors 'images' [N,C,H,W] and 'labels' [N]")
    images, labels = data["images"], data["labels"]
    check_images(images, labels, model, f"--tensors {path!r}")
    return images.float(), labels.long()


def load_image_folder(path: str, model: nn.Module, limit: int, checkpoint: dict | None = None,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of at most ``limit`` images (a fixed random subset) of the folder ``path/<class>/<image>``,
    preprocessed by ``data_config``."""
    import timm.data
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise DeployError(f"--data {path!r} is not a folder of class folders")
    if model.in_chans not in (1, 3):
        raise DeployError(f"--data: the model takes {model.in_chans}-channel images; image files give 1 (greyscale) "
                          "or 3 (RGB); pass --tensors instead")
    config = data_config(model, checkpoint)
    mode = "L" if model.in_chans == 1 else "RGB"
    transform = timm.data.create_transform(**config)
    try:
        dataset = ImageFolder(path, transform=transform, loader=lambda p: Image.open(p).convert(mode))
    except (FileNotFoundError, RuntimeError) as err:
        raise DeployError(f"--data {path!r}: {err}") from None
    labels = torch.tensor(dataset.targets)
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep.tolist()), batch_size=64)
    images = torch.cat([x for x, _ in loader])
    check_images(images, labels[keep], model, f"--data {path!r}")
    return images, labels[keep]
