"""Expected token-label targets computed by the reference code, for tests/train/test_token_label_reference.py.

Runs the label side of the reference's token-label pipeline (its label-aware hflip and RandAugment label ops, its
RandomResizedCrop that appends the crop fractions to the label map, and its target builder ``mixup_target``) on
fixed label maps, crops and op parameters, and writes the inputs and targets to one small file. The reference code
is read from a folder given on the command line, never copied here:

    git --git-dir=<clone of github.com/lmbxmu/SuperViT>/.git archive HEAD lvvit | tar -x -C /tmp/ref
    python benchmarks/studies/token_label_reference.py --reference /tmp/ref \\
        --out tests/train/data/token_label_reference.pt

(TokenLabeling's ``tlt/data`` holds the same code: pass its folder and ``--package tlt``.) Needs SciPy (the
reference's label ops call ``scipy.ndimage.affine_transform``). Current timm renamed ``_pil_interp``; the script
aliases it to ``str_to_pil_interp`` before importing the reference.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch
from PIL import Image

IMAGE_SIZE = (500, 375)  # (width, height): an ImageNet-like landscape photo
LABEL_HW = (18, 18)  # NFNet-F6 label maps
NUM_CLASSES = 8
GRID = 14
SMOOTHING = 0.1
CROPS = [(40, 100, 250, 300), (0, 0, 375, 250)]  # (top, left, height, width): an inner crop, the left two thirds
CASES = {  # name: (flip, [(op, level_args)])
    "crop": (False, []),
    "hflip": (True, []),
    "Rotate": (False, [("Rotate", (21.3,))]),
    "Rotate_negative": (False, [("Rotate", (-13.7,))]),
    "ShearX": (False, [("ShearX", (0.213,))]),
    "ShearY": (False, [("ShearY", (-0.171,))]),
    "TranslateXRel": (False, [("TranslateXRel", (0.307,))]),
    "TranslateYRel": (False, [("TranslateYRel", (-0.223,))]),
    "hflip_Rotate_ShearX": (True, [("Rotate", (-8.9,)), ("ShearX", (-0.12,))]),
}


def label_maps(seed: int = 0) -> torch.Tensor:
    """[2, 2, 5, h, w]: a random map (scores sorted, distinct classes per cell) and a left/right split map (left
    half class 0, right half class 1) that shows where a crop box lands."""
    gen = torch.Generator().manual_seed(seed)
    h, w = LABEL_HW
    scores = (torch.rand(5, h, w, generator=gen) * 8).sort(dim=0, descending=True).values
    index = torch.stack([torch.randperm(NUM_CLASSES, generator=gen)[:5] for _ in range(h * w)], 1).reshape(5, h, w)
    first = torch.stack([scores, index.float()])
    split = torch.zeros(2, 5, h, w)
    split[0, 0] = 6.0
    split[1] = torch.arange(5).float().view(5, 1, 1) + 2  # classes 2..6 at zero score
    split[1, 0, :, : w // 2] = 0  # the left half's top class is 0
    split[1, 0, :, w // 2:] = 1  # the right half's is 1
    return torch.stack([first, split]).half()


def import_reference(folder: str, package: str):
    sys.path.append(os.path.abspath(folder))  # appended: the installed timm stays the one imported
    import timm.data.transforms as timm_transforms

    if not hasattr(timm_transforms, "_pil_interp"):
        timm_transforms._pil_interp = timm_transforms.str_to_pil_interp
    augment = importlib.import_module(f"{package}.data.random_augment_label")
    factory = importlib.import_module(f"{package}.data.label_transforms_factory")
    mixup = importlib.import_module(f"{package}.data.mixup")
    return augment, factory, mixup


def reference_sample(modules, label: torch.Tensor, flip: bool, ops, crop, class_index: int) -> torch.Tensor:
    """The reference's label map with the crop fractions and class appended ([3, 5, h, w]) for one sample."""
    augment, factory, _ = modules
    img = Image.new("RGB", IMAGE_SIZE)
    label = label.float()
    if flip:
        img, label = factory.RandomHorizontalFlipWithLabel(p=1.0)(img, label)
    for name, level_args in ops:
        label = augment.NAME_TO_LABELOP[name](label, *level_args)
    cropper = factory.RandomResizedCropAndInterpolationWithCoords(size=224, interpolation="bilinear")
    cropper.get_params = lambda *_: crop
    _, label = cropper(img, label)
    label[-1, 0, 0, 5] = class_index  # what the reference data set appends after the crop fractions
    return label


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="folder holding <package>/data/*.py of the reference")
    parser.add_argument("--package", default="lvvit", choices=["lvvit", "tlt"])
    parser.add_argument("--out", default="tests/train/data/token_label_reference.pt")
    args = parser.parse_args(argv)
    modules = import_reference(args.reference, args.package)
    maps = label_maps()
    cases = {}
    for map_index in range(len(maps)):
        for name, (flip, ops) in CASES.items():
            if map_index == 1 and name not in ("crop", "hflip"):
                continue  # the split map shows the box placement; the ops are covered by the random map
            batch = torch.stack([reference_sample(modules, maps[map_index], flip, ops, crop, 3) for crop in CROPS])
            target = modules[2].mixup_target(batch, NUM_CLASSES, lam=1.0, smoothing=SMOOTHING, device="cpu",
                                             label_size=GRID)  # [B, K, 2 + g*g]: ground truth, class, dense
            cases[f"map{map_index}_{name}"] = dict(map=map_index, flip=flip, ops=ops, crops=CROPS,
                                                   target=target[:, :, 1:].contiguous())
    import scipy

    payload = dict(image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, grid=GRID, smoothing=SMOOTHING, label_maps=maps,
                   cases=cases, made_with=dict(torch=str(torch.__version__), scipy=str(scipy.__version__),
                                               command="python benchmarks/studies/token_label_reference.py "
                                                       f"--package {args.package} --out {args.out}"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(payload, args.out)
    print(f"{len(cases)} cases -> {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
