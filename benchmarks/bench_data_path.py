"""Training data path throughput per CPU core: both recipes' PIL pipelines, the device pipeline on CPU tensors, and
the LV-ViT label reading (per-image .pt files vs the label store), on real photographs at ImageNet size.

Images: the colour photographs shipped in scikit-image (astronaut, coffee, chelsea, rocket, hubble_deep_field,
immunohistochemistry, retina), each cut into landscape 500 x 375 and portrait 375 x 500 views and saved as JPEG at
quality 90 (about ImageNet's median size), in an ImageFolder. Label maps: half [2, 5, 18, 18] per image (NFNet-F6's
size), as the per-image archive and as a converted store. Every candidate handles one batch per call in this one
process with one thread (what one loader worker does on one core), timed in CPU time of that thread (so the
rates are per busy core, not inflated by other processes' load); candidates are interleaved round by round
(supervit.timing). Per-image candidates:

- ``deit_pil``: read + decode + RandomResizedCrop + hflip + RandAugment + Normalize + RandomErasing (timm's
  create_transform as train/data.py builds it; colour jitter is off with RandAugment, as in timm and the reference);
- ``lvvit_pil_files`` / ``lvvit_pil_store``: the token-label pipeline (hflip and RandAugment on the full image, then
  the crop, label geometry, RandomErasing) with the label map read from the archive / the store;
- ``device_path_cpu`` / ``lvvit_device_path_cpu``: the device pipelines (train/device_data.py) run on CPU
  tensors: read bytes (and the label map from the store), decode with torchvision, the same augmentations;
- ``decode_only``: read + decode + RGB (PIL), the floor of any PIL pipeline;
- ``labels_files`` / ``labels_store``: the label read alone.

Per-batch work that runs on the training device in training is timed here on the CPU too, for scale:
``mixup_cutmix`` (timm's Mixup on the batch) and ``token_targets`` (dense targets from the label maps, 1000 classes,
14 x 14), plus ``mixtoken`` (the box draw and class-target mix).

    python benchmarks/bench_data_path.py --out benchmarks/results/<machine>
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from supervit.files import atomic_write  # noqa: E402
from supervit.timing import device_name, measure  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
VIEWS = ((500, 375), (375, 500))
# Step rates a data path must keep up with, per GPU (images/s): NVIDIA's 22M-parameter ViT on one H100
# (synthetic data), and the SuperViT step (4 sub-networks, about 2.4x a DeiT-S step) at the same efficiency.
H100_VIT_S_RATE = 8003
SUPERVIT_STEP_COST = 2.4


def photo_set(root: str, label_hw=(18, 18)) -> tuple[str, str]:
    """Write ROOT/data/train/<class>/<name>.JPEG and ROOT/labels/<class>/<name>.pt; returns (data, labels)."""
    import skimage.data

    data, labels = os.path.join(root, "data"), os.path.join(root, "labels")
    gen = torch.Generator().manual_seed(0)
    count = 0
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for width, height in VIEWS:
            scale = max(width / photo.width, height / photo.height)
            resized = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
            left, top = (resized.width - width) // 2, (resized.height - height) // 2
            view = resized.crop((left, top, left + width, top + height))
            cls = f"c{count % 2}"
            stem = f"{name}_{width}x{height}"
            os.makedirs(os.path.join(data, "train", cls), exist_ok=True)
            os.makedirs(os.path.join(labels, cls), exist_ok=True)
            view.save(os.path.join(data, "train", cls, stem + ".JPEG"), quality=90)
            scores = (torch.rand(5, *label_hw, generator=gen) * 9).sort(0, descending=True).values
            index = torch.stack([torch.randperm(1000, generator=gen)[:5] for _ in range(label_hw[0] * label_hw[1])],
                                1).reshape(5, *label_hw).float()
            torch.save(torch.stack([scores, index]).half(), os.path.join(labels, cls, stem + ".pt"))
            count += 1
    return data, labels


def recipe_args(**overrides):
    args = dict(color_jitter=0.4, aa="rand-m9-mstd0.5-inc1", train_interpolation="random", reprob=0.25,
                remode="pixel", recount=1, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5)
    return SimpleNamespace(**{**args, **overrides})


def build_candidates(data: str, labels: str, store: str, batch: int) -> tuple[dict, dict]:
    """(per-image candidates, per-batch candidates): name -> callable handling ``batch`` images / one batch."""
    from timm.data import Mixup
    from torchvision.datasets import ImageFolder

    from train import data as data_lib
    from train.device_data import (DeviceTokenLabelTransform, DeviceTrainTransform, EncodedImageFolder,
                                   EncodedTokenLabelSet, collate_encoded, collate_token_labels)
    from train.label_store import open_labels
    from train.token_label import TokenLabelDataset, TokenLabelTask, TokenLabelTransform

    deit = ImageFolder(os.path.join(data, "train"), transform=data_lib.train_transform(recipe_args(), 224))
    token = TokenLabelTransform(224, 14)
    lv_files = TokenLabelDataset(data, labels, token)
    lv_store = TokenLabelDataset(data, store, token)
    encoded = EncodedImageFolder(data, "train")
    device_tf = DeviceTrainTransform(224)
    encoded_lv, device_lv = EncodedTokenLabelSet(data, store), DeviceTokenLabelTransform(224)
    files, stored = open_labels(labels), open_labels(store)
    paths = [path for path, _ in deit.samples]
    n = len(paths)
    cursor = {"i": 0}

    def indices():
        start = cursor["i"]
        cursor["i"] = (start + batch) % n
        return [(start + k) % n for k in range(batch)]

    def per_item(dataset):
        return lambda: [dataset[i] for i in indices()]

    def device_path():
        images, targets = collate_encoded([encoded[i] for i in indices()])
        return device_tf(images, targets)

    def device_lvvit():
        images, targets = collate_token_labels([encoded_lv[i] for i in indices()])
        return device_lv(images, targets)

    per_image = {
        "deit_pil": per_item(deit),
        "lvvit_pil_files": per_item(lv_files),
        "lvvit_pil_store": per_item(lv_store),
        "device_path_cpu": device_path,
        "lvvit_device_path_cpu": device_lvvit,
        "decode_only": lambda: [Image.open(paths[i]).convert("RGB") for i in indices()],
        "labels_files": lambda: [files.read(paths[i]) for i in indices()],
        "labels_store": lambda: [stored.read(paths[i]) for i in indices()],
    }
    images = torch.randn(batch, 3, 224, 224)
    classes = torch.randint(0, 1000, (batch,))
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)
    items = [lv_store[i % len(lv_store)][1] for i in range(batch)]
    label = torch.stack([it[0] for it in items])
    box = torch.stack([it[1] for it in items])
    warp = torch.stack([it[2] for it in items])
    task = TokenLabelTask(1000, 14)
    per_batch = {
        "mixup_cutmix": lambda: mixup(images.clone(), classes),
        "token_targets": lambda: task.prepare(images, (label, box, warp, classes)),
        "mixtoken": lambda: TokenLabelTask(1000, 14).prepare(images, classes),
    }
    return per_image, per_batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="results folder (default: runs/bench/<machine>-<time>)")
    parser.add_argument("--batch", type=int, default=32, help="images per timed call")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    from benchmarks.harness import run_folder
    from train.label_store import convert_archive

    out = run_folder("cpu", args.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench_data_")
    try:
        data, labels = photo_set(work)
        store = os.path.join(work, "store")
        convert_archive(labels, store, progress=False)
        per_image, per_batch = build_candidates(data, labels, store, args.batch)
        # CPU time of this thread (time.thread_time): the core-seconds a worker spends, which other processes on
        # the machine do not inflate (their load only slows the wall clock)
        results, cond = measure({**per_image, **per_batch}, "cpu", batch=args.batch, backend="1 thread",
                                rounds=args.rounds, warmup=1, progress=True, clock=time.thread_time)
        sizes = [os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(data, "train")) for f in fs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, res in results.items():
        unit = "image" if name in per_image else "batch"
        rate = args.batch / (res["median_ms"] / 1e3) if unit == "image" else None
        rows.append(dict(candidate=name, unit=unit, median_ms=res["median_ms"], q1_ms=res["q1_ms"], q3_ms=res["q3_ms"],
                         ms_per_image=res["median_ms"] / args.batch, images_per_s_per_core=rate,
                         rel_spread=res["rel_spread"], noisy=res["noisy"]))
    need = H100_VIT_S_RATE / SUPERVIT_STEP_COST
    summary = dict(conditions=cond, batch=args.batch, jpeg_bytes_median=int(np.median(sizes)), images=len(sizes),
                   rows=rows, step_rates={"vit_s_h100": H100_VIT_S_RATE, "supervit_h100": round(need)},
                   cores_per_gpu={r["candidate"]: {"vit_s_h100": H100_VIT_S_RATE / r["images_per_s_per_core"],
                                                   "supervit_h100": need / r["images_per_s_per_core"]}
                                  for r in rows if r["images_per_s_per_core"]})
    write_results(out, summary)


def write_results(out: str, summary: dict):
    with atomic_write(os.path.join(out, "data_path.json")) as tmp:
        with open(tmp, "w") as handle:
            json.dump(summary, handle, indent=1)
    cond = summary["conditions"]
    lines = ["# Training data path per CPU core", "",
             f"Machine: {cond.get('machine', device_name('cpu'))}; torch {cond.get('torch')}; one process, one "
             f"thread; batch {summary['batch']}; {summary['images']} JPEGs (500 x 375 / 375 x 500, quality 90, "
             f"median {summary['jpeg_bytes_median'] // 1024} KiB) from scikit-image's photographs; load average "
             f"{cond.get('load_before')} before, {cond.get('load_after')} after (other processes share the 2 "
             "cores; times are this thread's CPU time, which their load does not add to).", "",
             f"Command: `{cond.get('command', 'python benchmarks/bench_data_path.py')}`", "",
             "| candidate | per | median CPU ms | IQR ms | ms / image | images/s per core | cores per H100 at "
             f"{summary['step_rates']['vit_s_h100']} img/s (ViT-S) | at {summary['step_rates']['supervit_h100']} "
             "img/s (SuperViT) |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        cores = summary["cores_per_gpu"].get(r["candidate"])
        rate = f"{r['images_per_s_per_core']:.0f}" if r["images_per_s_per_core"] else "-"
        c1 = f"{cores['vit_s_h100']:.0f}" if cores else "-"
        c2 = f"{cores['supervit_h100']:.0f}" if cores else "-"
        lines.append(f"| {r['candidate']} | {r['unit']} | {r['median_ms']:.1f} | {r['q3_ms'] - r['q1_ms']:.1f} | "
                     f"{r['ms_per_image']:.2f} | {rate} | {c1} | {c2} |")
    with atomic_write(os.path.join(out, "data_path.md")) as tmp:
        with open(tmp, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, summary)


def plot(out: str, summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r["images_per_s_per_core"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh([r["candidate"] for r in rows], [r["images_per_s_per_core"] for r in rows], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("images / s on one core (log scale)")
    ax.set_title("Training data path per CPU core")
    for i, r in enumerate(rows):
        ax.text(r["images_per_s_per_core"], i, f" {r['images_per_s_per_core']:.0f}", va="center", fontsize=8)
    fig.tight_layout()
    with atomic_write(os.path.join(out, "data_path.png")) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
