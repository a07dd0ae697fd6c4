"""Token-label targets of augmented samples: the reference mode against the reference code's own output, the exact
mode against the pixels.

tests/train/data/token_label_reference.pt holds targets the reference code computed (its label ops, crop with
appended fractions and ``mixup_target``) for fixed label maps, crops and op parameters; the command that made it is
in benchmarks/studies/token_label_reference.py and in the file (``made_with``).
"""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from train.label_geometry import GEOMETRIC_OPS, exact_geometry, reference_geometry
from train.token_label import LabelDraws, TokenLabelTransform, dense_label_map, smooth, token_label_targets

EXPECTED = os.path.join(os.path.dirname(__file__), "data", "token_label_reference.pt")
REFERENCE = torch.load(EXPECTED, weights_only=True)
# The reference mode replays the reference's float32 arithmetic (same roi_align call): measured 3e-8.
REFERENCE_TOLERANCE = 1e-6


def _batch(case, mode):
    label = REFERENCE["label_maps"][case["map"]]
    labels, boxes, warps = [], [], []
    for crop in case["crops"]:
        if mode == "reference":
            out, box = reference_geometry(label, REFERENCE["image_size"], case["flip"], case["ops"], crop)
            warp = torch.eye(2, 3)
        else:
            out = label
            box, warp = exact_geometry(REFERENCE["image_size"], case["flip"], case["ops"], crop, label.shape[-2:])
        labels.append(out)
        boxes.append(box)
        warps.append(warp)
    return torch.stack(labels), torch.stack(boxes), torch.stack(warps)


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_reference_mode_reproduces_the_reference_code(name):
    case = REFERENCE["cases"][name]
    label, box, warp = _batch(case, "reference")
    cls, dense = token_label_targets(label, box, None, REFERENCE["num_classes"], REFERENCE["smoothing"], warp=warp,
                                     mode="reference", grid=REFERENCE["grid"])
    expected = case["target"]  # [B, K, 1 + g*g]: class target, then the dense targets
    torch.testing.assert_close(cls, expected[:, :, 0], atol=REFERENCE_TOLERANCE, rtol=0)
    torch.testing.assert_close(dense, expected[:, :, 1:].transpose(1, 2), atol=REFERENCE_TOLERANCE, rtol=0)


def test_every_geometric_op_and_the_flip_are_covered():
    ops = {name for case in REFERENCE["cases"].values() for name, _ in case["ops"]}
    assert ops == set(GEOMETRIC_OPS)
    assert any(case["flip"] and not case["ops"] for case in REFERENCE["cases"].values())


def test_reference_box_is_transposed_and_the_exact_one_is_not():
    """Map 1: left half class 0, right half class 1. Crop 1 is the left half of the image."""
    for name, want in (("map1_crop", 0), ("map1_hflip", 1)):
        case = REFERENCE["cases"][name]
        exact_cls, _ = token_label_targets(*_batch(case, "exact")[:2], None, REFERENCE["num_classes"],
                                           warp=_batch(case, "exact")[2], grid=REFERENCE["grid"])
        assert exact_cls[1].argmax() == want and exact_cls[1, want] > 0.85
        reference_cls = case["target"][1, :, 0]  # the reference reads the box's x from the crop's top/bottom
        assert abs(reference_cls[0] - reference_cls[1]) < 1e-3


def test_exact_mode_without_geometric_ops_is_roi_align_over_the_crop():
    label = REFERENCE["label_maps"][0:1].expand(2, -1, -1, -1, -1)
    box = torch.tensor([[2.5, 1.0, 15.0, 17.5], [0.0, 0.0, 18.0, 18.0]])
    num_classes, grid = REFERENCE["num_classes"], REFERENCE["grid"]
    cls, dense = token_label_targets(label, box, None, num_classes, 0.1, grid=grid)
    maps = dense_label_map(label, num_classes).transpose(1, 2).reshape(2, num_classes, 18, 18)
    rois = torch.cat([torch.arange(2.0).unsqueeze(1), box], 1)
    want_dense = roi_align(maps, rois, (grid, grid), sampling_ratio=2, aligned=True).flatten(2)  # ceil(18/14) = 2
    want_cls = roi_align(maps, rois, (1, 1), sampling_ratio=18, aligned=True).flatten(1)
    # float32 sums in another order (a matrix product, roi_align's loops): measured 1.8e-6 on targets of ~0.1
    torch.testing.assert_close(dense, smooth(want_dense.softmax(1), 0.1).transpose(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(cls, smooth(want_cls.softmax(1), 0.1), atol=1e-5, rtol=0)


# --- the exact mode follows the pixels -------------------------------------------------------------------------
CELLS = 4  # a coarse 4 x 4 label map, one class per cell, so that the cell under each token is unambiguous
TOKENS = 16


def _coordinate_image(width, height):
    """RGB image whose pixel (x, y) stores (x // 2, y // 2, 255); the RandAugment fill has blue 104."""
    xs, ys = np.meshgrid(np.arange(width) // 2, np.arange(height) // 2)
    return Image.fromarray(np.stack([xs, ys, np.full_like(xs, 255)], -1).astype(np.uint8))


def _cell_label():
    label = torch.zeros(2, 5, CELLS, CELLS)
    label[0, 0] = 20.0  # one dominant class per cell
    label[1, 0] = torch.arange(CELLS * CELLS).float().view(CELLS, CELLS)
    label[1, 1:] = CELLS * CELLS  # the other four slots: a spare class at score 0
    return label.half()


@pytest.mark.parametrize("flip,ops", [
    (True, []),
    (False, [("Rotate", (27.0,))]),
    (False, [("ShearX", (0.28,))]),
    (False, [("ShearY", (-0.25,))]),
    (False, [("TranslateXRel", (0.3,))]),
    (False, [("TranslateYRel", (-0.35,))]),
    (True, [("Rotate", (-19.0,)), ("ShearY", (0.2,)), ("TranslateXRel", (-0.2,))]),
])
def test_exact_targets_follow_the_pixels(flip, ops):
    """Apply the real image ops to an image that stores its own coordinates; at every token whose centre shows a
    point well inside one label cell, the dense target's top class is that cell's class."""
    width, height = 300, 200
    transform = TokenLabelTransform(TOKENS * 8, CELLS, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.0,
                                    interpolation="bilinear")
    by_name = {op.name: op for op in transform.rand_augment.inner.ops}
    draws = LabelDraws(flip, [(by_name[name], args, Image.NEAREST) for name, args in ops], (30, 40, 150, 220),
                       Image.NEAREST)
    img = TokenLabelTransform.augment(_coordinate_image(width, height), draws)
    top, left, h, w = draws.crop
    crop = np.asarray(img.crop((left, top, left + w, top + h)))
    box, warp = exact_geometry((width, height), flip, draws.geometric_ops(), draws.crop, (CELLS, CELLS))
    _, dense = token_label_targets(_cell_label()[None], box[None], None, CELLS * CELLS + 1, 0.0, warp=warp[None],
                                   grid=TOKENS)
    checked = 0
    for ty in range(TOKENS):
        for tx in range(TOKENS):
            r, g, b = (int(v) for v in crop[int((ty + 0.5) * h / TOKENS), int((tx + 0.5) * w / TOKENS)])
            if b != 255:
                continue  # the op's fill: no source pixel
            cx, cy = (2 * r + 1) / width * CELLS, (2 * g + 1) / height * CELLS  # label-map units
            if min(cx % 1, 1 - cx % 1, cy % 1, 1 - cy % 1) < 0.25:
                continue  # near a cell border the token's region spans two cells
            checked += 1
            assert dense[0, ty * TOKENS + tx].argmax().item() == int(cy) * CELLS + int(cx), (ty, tx)
    assert checked >= 30


def test_target_mode_changes_no_image():
    img = _coordinate_image(120, 90)
    label = _cell_label()
    images = []
    for mode in ("exact", "reference"):
        random.seed(3)
        np.random.seed(3)
        torch.manual_seed(3)
        transform = TokenLabelTransform(32, 4, reprob=0.25, targets=mode)
        images.append(transform(img, label)[0])
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="--token-label-targets must be one of"):
        TokenLabelTransform(32, 4, targets="pixels")


def test_lvvit_trains_with_reference_targets(tmp_path):
    from trainer_helpers import CLASSES, TINY_LVVIT_MODEL, as_json, write_image_folder, write_token_labels

    from train import main_lvvit

    data = write_image_folder(tmp_path / "imagenet", per_class=2)
    labels = write_token_labels(data, tmp_path / "labels", hw=4)
    common = [data, "--num-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_LVVIT_MODEL), "-b", "4",
              "--epochs", "1", "--max-steps-per-epoch", "1", "-j", "0", "--token-label", "--token-label-data", labels,
              "--token-label-size", "5", "--cooldown-epochs", "0", "--no-progress", "--device", "cpu"]
    metrics = main_lvvit.main(common + ["--token-label-targets", "reference", "--output", str(tmp_path / "out")])
    assert "80_1_acc1" in metrics
    metrics = main_lvvit.main(common + ["--data-backend", "device", "--output", str(tmp_path / "out2")])
    assert "80_1_acc1" in metrics


def test_device_token_label_targets_follow_the_pixels():
    """The device twin of the PIL token-label pipeline: its images and its exact targets agree token by token."""
    from train.device_data import DeviceTokenLabelTransform

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    width, height = 300, 200
    image = torch.from_numpy(np.array(_coordinate_image(width, height))).permute(2, 0, 1).contiguous()
    transform = DeviceTokenLabelTransform(TOKENS * 6, scale=(0.3, 1.0), interpolation="bilinear", reprob=0.0)
    inner = transform.labels.rand_augment.inner  # geometric ops only: colour ops would rewrite the coordinates
    inner.ops = [op for op in inner.ops if op.name in GEOMETRIC_OPS]
    for op in inner.ops:
        op.prob = 1.0
    batch = 12
    out, (label, box, warp, classes) = transform([image] * batch, (_cell_label()[None].expand(batch, -1, -1, -1,
                                                                                                -1), torch.zeros(batch)))
    assert len({tuple(b.tolist()) for b in box}) == batch  # every image its own crop
    pixels = (out * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
              + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) * 255
    _, dense = token_label_targets(label, box, None, CELLS * CELLS + 1, 0.0, warp=warp, grid=TOKENS)
    checked = 0
    step = out.shape[-1] / TOKENS
    for i in range(batch):
        for ty in range(TOKENS):
            for tx in range(TOKENS):
                r, g, b = pixels[i, :, int((ty + 0.5) * step), int((tx + 0.5) * step)].tolist()
                if b < 250:
                    continue  # the op's fill (or a blend with it)
                cx, cy = (2 * r + 1) / width * CELLS, (2 * g + 1) / height * CELLS
                if min(cx % 1, 1 - cx % 1, cy % 1, 1 - cy % 1) < 0.25:
                    continue
                checked += 1
                assert dense[i, ty * TOKENS + tx].argmax().item() == int(cy) * CELLS + int(cx), (i, ty, tx)
    assert checked >= 200
