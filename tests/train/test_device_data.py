"""The device data path on CPU tensors: each op against Pillow, per-image randomness and its distributions, the
evaluation transform against the PIL one, the files-to-batch plumbing."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from train import device_ops
from train.data import BadImageError, eval_transform
from train.device_data import (DeviceEvalTransform, DeviceTrainTransform, EncodedBatch, EncodedImage,
                               EncodedImageFolder, collate_encoded, decode_batch, normalize)
from train.label_geometry import GEOMETRIC_OPS
from train.token_label import LabelAwareRandAugment

skimage_data = pytest.importorskip("skimage.data")


def _photo(size=(96, 96)) -> Image.Image:
    return Image.fromarray(skimage_data.astronaut()).resize(size, Image.BICUBIC)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def _jpeg(img: Image.Image, quality=90) -> EncodedImage:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return EncodedImage(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), "photo.jpg")


RA = LabelAwareRandAugment("rand-m9-mstd0.5-inc1", 96)


@pytest.mark.parametrize("op", RA.inner.ops, ids=lambda op: op.name)
def test_each_rand_augment_op_matches_pillow(op):
    """Colour ops: Pillow's integer results within 1 level. Geometric ops, bilinear: within 1 level (rounding);
    bicubic: Pillow's cubic kernel (a = -0.5) is not grid_sample's (a = -0.75), so only the mean is held."""
    img = _photo()
    for magnitude, resample in ((9.0, Image.BILINEAR), (4.0, Image.BICUBIC), (6.0, Image.NEAREST)):
        random.seed(0)
        level = tuple(op.level_fn(magnitude, op.hparams)) if op.level_fn is not None else ()
        want = np.asarray(op.aug_fn(img, *level, **{**op.kwargs, "resample": resample})).astype(np.int32)
        got = device_ops.rand_augment(_tensor(img)[None], [[(op, level, resample)]])[0]
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(np.int32) - want)
        if op.name not in GEOMETRIC_OPS:
            assert diff.max() <= 1, (op.name, diff.max())
            return
        if resample == Image.BICUBIC:
            assert diff.mean() < 1.5, (op.name, diff.mean())
        elif resample == Image.BILINEAR:
            assert diff.max() <= 1, (op.name, diff.max())
        else:
            assert (diff > 0).mean() < 0.02, (op.name, (diff > 0).mean())  # nearest: ties at pixel edges only


def test_rand_augment_applies_each_image_its_own_ops():
    batch = _tensor(_photo((32, 32)))[None].repeat(4, 1, 1, 1)
    by_name = {op.name: op for op in RA.inner.ops}
    drawn = [[], [(by_name["Invert"], (), Image.BILINEAR)],
             [(by_name["Rotate"], (20.0,), Image.BILINEAR), (by_name["Invert"], (), Image.BILINEAR)],
             [(by_name["Invert"], (), Image.BILINEAR), (by_name["Rotate"], (20.0,), Image.BILINEAR)]]
    out = device_ops.rand_augment(batch, drawn)
    assert torch.equal(out[0], batch[0]) and torch.equal(out[1], 255 - batch[1])
    # the order matters: the rotation's fill is inverted only when Invert comes second
    assert not torch.equal(out[2], out[3]) and out[2][:, 0, 0].tolist() == [255 - c for c in out[3][:, 0, 0].tolist()]


N = 2000  # samples per distribution test; each tolerance below is over 3.5 standard deviations at this size


def _train(**kwargs):
    defaults = dict(interpolation="bilinear", auto_augment=None, color_jitter=0.0, reprob=0.0)
    return DeviceTrainTransform(8, **{**defaults, **kwargs})


def _rrc_statement(side: int, draws: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(scale, log ratio) of RandomResizedCrop((0.08, 1), (3/4, 4/3)) on a side x side image, as the Inception
    recipe states it: area ~ U(0.08, 1), log ratio ~ U(log 3/4, log 4/3), whole pixels, redrawn (10 tries) until
    the crop fits, else the whole image."""
    scales, ratios = [], []
    for _ in range(draws):
        w = h = side
        for _ in range(10):
            s, r = rng.uniform(0.08, 1.0), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(s * side * side * r)), round(math.sqrt(s * side * side / r))
            if cw <= side and ch <= side:
                w, h = cw, ch
                break
        scales.append(w * h / side ** 2)
        ratios.append(math.log(w / h))
    return np.array(scales), np.array(ratios)


def test_crop_scale_and_ratio_distributions():
    torch.manual_seed(0)
    random.seed(0)
    side = 120
    square = torch.randint(0, 256, (3, side, side), dtype=torch.uint8)
    transform = _train(hflip=0.0)
    out, _ = transform([square] * N, None)
    crops = transform.last_draws["crops"]
    scale = np.array([h * w / side ** 2 for _, _, h, w, _ in crops])
    log_ratio = np.log(np.array([w / h for _, _, h, w, _ in crops]))
    assert len(set(crops)) > N // 2  # every image its own crop
    want_scale, want_ratio = _rrc_statement(side, 50_000, np.random.default_rng(0))
    assert 0.07 <= scale.min() and scale.max() <= 1.0
    for q in (0.2, 0.4, 0.6, 0.8, 0.95):  # P(scale < q) within 0.04 (3.6 standard deviations at N = 2000)
        assert abs((scale < q).mean() - (want_scale < q).mean()) < 0.04, q
    assert np.abs(log_ratio).max() <= np.abs(want_ratio).max() + 0.02
    for q in (-0.2, -0.1, 0.0, 0.1, 0.2):
        assert abs((log_ratio < q).mean() - (want_ratio < q).mean()) < 0.04, q
    # the drawn crop is what the output shows
    for i in range(5):
        top, left, h, w, mode = crops[i]
        assert torch.allclose(normalize(TF.resized_crop(square, top, left, h, w, [8, 8], mode, antialias=True)[None]),
                              out[i:i + 1])


def test_flip_rate_and_per_image_flips():
    torch.manual_seed(1)
    image = torch.arange(8, dtype=torch.uint8).repeat(3, 8, 1) * 30  # columns 0, 30, ..., 210
    transform = _train(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5)
    out, _ = transform([image] * N, None)
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert torch.equal(flipped, transform.last_draws["flips"])
    assert abs(flipped.float().mean().item() - 0.5) < 0.04
    none, _ = _train(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)([image] * 50, None)
    assert not (none[:, 0, 0, 0] > none[:, 0, 0, -1]).any()


def test_erase_probability_and_per_image_boxes():
    torch.manual_seed(2)
    image = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    transform = _train(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, reprob=0.25, remode="const")
    out, _ = transform([image] * N, None)
    clean = normalize(image[None])
    erased = (out != clean).flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.25) < 0.035
    boxes = {tuple((out[i] != clean[0]).any(0).nonzero().min(0).values.tolist()) for i in range(N) if erased[i]}
    assert len(boxes) > 10  # not one box for every image


def test_rand_augment_draws_differ_per_image():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    image = _tensor(_photo((24, 24)))
    out, _ = DeviceTrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, reprob=0.0,
                                  interpolation="bilinear")([image] * 64, None)
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
    assert len(distinct) > 20


def test_eval_transform_equals_the_pil_one():
    """Decode (torchvision's libjpeg-turbo vs Pillow's) and bicubic antialiased resize (tensor vs Pillow), same
    crop: measured max 1 level of 255, mean 0.003 levels on four photographs at 500 x 375."""
    photos = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]
    items = [_jpeg(Image.fromarray(p).resize((500, 375), Image.BICUBIC)) for p in photos]
    pil = torch.stack([eval_transform(224, 0.875)(Image.open(io.BytesIO(bytes(item.data.tolist()))).convert("RGB"))
                       for item in items])
    labels = torch.arange(4)
    dev, out_labels = DeviceEvalTransform(224, 0.875)(EncodedBatch(items), labels)
    levels = ((dev - pil) * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255).abs()
    assert levels.max() <= 1.01 and levels.mean() < 0.02 and out_labels is labels


def test_files_to_batch(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(("apple", "pear")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(3):
            _photo((60 + 10 * i, 40)).save(root / "train" / name / f"{i}.JPEG", quality=90)
    Image.fromarray(skimage_data.coffee()).resize((50, 40)).save(root / "train" / "pear" / "png.JPEG", format="PNG")
    (root / "train" / "pear" / "bad.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    dataset = EncodedImageFolder(str(root), "train")
    items = [dataset[i] for i in range(len(dataset))]
    names = [s[0].rsplit("/", 1)[-1] for s in dataset.folder.samples]
    good = [item for item, name in zip(items, names) if name != "bad.JPEG"]
    batch, targets = collate_encoded(good)
    moved = batch.to("cpu")
    assert isinstance(moved, EncodedBatch) and len(moved) == 7 and targets.tolist() == [0, 0, 0, 1, 1, 1, 1]
    decoded = decode_batch(moved)  # the PNG falls back to the one-by-one decoder
    assert [tuple(d.shape) for d in decoded][:3] == [(3, 40, 60), (3, 40, 70), (3, 40, 80)]
    images, out_targets = DeviceTrainTransform(32)(moved, targets)
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.float32 and out_targets is targets
    bad, _ = collate_encoded([items[names.index("bad.JPEG")]])
    with pytest.raises(BadImageError, match="bad.JPEG"):
        decode_batch(bad)


def test_deit_trains_one_step_with_the_device_backend(tmp_path):
    from trainer_helpers import CLASSES, TINY_IMAGENET_MODEL, as_json, write_image_folder

    from train import main_deit

    data = write_image_folder(tmp_path / "imagenet")
    metrics = main_deit.main(["--data-path", data, "--model", "super_deit_s", "--nb-classes", str(len(CLASSES)),
                              "--model-kwargs", as_json(TINY_IMAGENET_MODEL), "--batch-size", "4", "--epochs", "1",
                              "--max-steps-per-epoch", "1", "--num_workers", "0", "--output", str(tmp_path / "out"),
                              "--no-progress", "--device", "cpu", "--data-backend", "device"])
    assert "80_1_acc1" in metrics


def test_gpu_data_benchmark_plumbing_on_cpu(tmp_path):
    """benchmarks/gpu/bench_data_gpu.py --small runs the whole script on CPU; gpu_check reads its result."""
    import importlib.util
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    bench = load("bench_data_gpu", "benchmarks/gpu/bench_data_gpu.py")
    out = tmp_path / "data"
    assert bench.main(["--small", "--out", str(out)]) == 0
    summary = json.loads((out / "data_gpu.json").read_text())
    assert set(summary["throughput"]) == {"decode", "train_transform", "eval_transform"}
    assert [w["backend"] for w in summary["data_wait"]] == ["device", "pil"]
    assert all(0 < w["data_wait_share"] < 1 and w["steps"] >= 1 for w in summary["data_wait"])
    check = load("gpu_check", "benchmarks/gpu/gpu_check.py")
    lines = check.target_lines(str(tmp_path))
    assert any(line.startswith("- data wait with the device data path") for line in lines)


def test_data_path_benchmark_plumbing(tmp_path):
    """benchmarks/bench_data_path.py end to end at one round of two images: every candidate timed, files written."""
    import importlib.util
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("bench_data_path", os.path.join(root, "benchmarks",
                                                                                  "bench_data_path.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--out", str(tmp_path), "--rounds", "1", "--batch", "2"])
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "data_path.json").read_text())
    names = {row["candidate"] for row in summary["rows"]}
    assert {"deit_pil", "lvvit_pil_store", "device_path_cpu", "labels_files", "token_targets"} <= names
    assert summary["images"] == 14 and (tmp_path / "data_path.md").is_file() and (tmp_path / "data_path.png").is_file()
    assert all(row["median_ms"] > 0 for row in summary["rows"])
