"""The device data path on a GPU: decode + augmentation throughput, and the share of a training step spent waiting
for data with the device path vs the PIL path (loader workers on the host's cores).

1. Throughput (candidates interleaved, supervit.timing): ``decode`` (batched nvJPEG), ``train_transform``
   (decode + RandomResizedCrop, hflip, RandAugment, Normalize, RandomErasing) and ``eval_transform`` on batches of
   ``--batch`` JPEGs, in images/s.
2. Data wait: ``--steps`` SuperViT steps of ``--model`` (4 sub-networks, bf16 autocast on CUDA, AdamW) fed by a
   DataLoader with ``--workers`` workers; per step the time from asking the loader for a batch to having it
   augmented on the device (data wait, the device transform included) and the step itself, both synchronized.
   Reported: data wait / (data wait + step), for the device path and the PIL path.

Images: scikit-image's photographs as 500 x 375 / 375 x 500 JPEGs at quality 90 (as benchmarks/bench_data_path.py
makes them). ``--small``: a tiny model, 64-pixel crops, CPU, a few steps (checks the plumbing where there is no GPU).

    python benchmarks/gpu/bench_data_gpu.py --out runs/gpu/data
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

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from supervit.files import atomic_write  # noqa: E402
from supervit.timing import device_name, measure, sync  # noqa: E402

TINY_MODEL = {"img_sizes": [32, 48, 64], "embed_dim": 32, "depth": 4, "num_heads": 2, "prune_layers": [1, 2, 3]}


def _photos(root: str, copies: int) -> str:
    """ROOT/data/train/<class>/*.JPEG: the benchmark photographs, ``copies`` times (distinct file names)."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from bench_data_path import photo_set

    data, _ = photo_set(root)
    train = os.path.join(data, "train")
    for cls in os.listdir(train):
        for name in list(os.listdir(os.path.join(train, cls))):
            for k in range(1, copies):
                shutil.copy(os.path.join(train, cls, name), os.path.join(train, cls, f"copy{k}_{name}"))
    return data


def _args():
    from types import SimpleNamespace

    return SimpleNamespace(color_jitter=0.4, aa="rand-m9-mstd0.5-inc1", train_interpolation="random", reprob=0.25,
                           remode="pixel", recount=1, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5)


def throughput(data: str, device, batch: int, img_size: int, rounds: int) -> tuple[dict, dict]:
    from train.device_data import DeviceEvalTransform, DeviceTrainTransform, EncodedImageFolder, collate_encoded, \
        decode_batch

    dataset = EncodedImageFolder(data, "train")
    encoded, targets = collate_encoded([dataset[i % len(dataset)] for i in range(batch)])
    encoded = encoded.to(device)
    train_tf, eval_tf = DeviceTrainTransform(img_size), DeviceEvalTransform(img_size, 0.875)
    candidates = {"decode": lambda: decode_batch(encoded), "train_transform": lambda: train_tf(encoded, targets),
                  "eval_transform": lambda: eval_tf(encoded, targets)}
    results, cond = measure(candidates, device, batch=batch, rounds=rounds, warmup=2)
    for res in results.values():
        res["images_per_s"] = batch / (res["median_ms"] / 1e3)
    return results, cond


def data_wait(data: str, device, backend: str, model_name: str, batch: int, img_size: int, steps: int,
              workers: int, budget_s: float) -> dict:
    """Per-step data wait and step time of ``steps`` SuperViT steps fed by the ``backend`` data path."""
    import timm
    from torch.utils.data import DataLoader, RandomSampler

    import supervit.models  # noqa: F401 - registers the models
    from supervit.training import ClassificationTask, sample_subnets, supervit_step, zero_grad
    from train import data as data_lib
    from train.device_data import device_train_set

    args = _args()
    if backend == "device":
        dataset, collate, transform = device_train_set(data, "--data-path", args, img_size)
    else:
        dataset = data_lib.image_folder(data, "train", data_lib.train_transform(args, img_size))
        collate, transform = None, None
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (steps + 2))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    extra = TINY_MODEL if model_name == "tiny" else {}
    model = timm.create_model("super_deit_s", num_classes=len(dataset.classes), **extra).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    task = ClassificationTask(torch.nn.CrossEntropyLoss())
    amp = torch.bfloat16 if device.type == "cuda" else None
    rng = random.Random(0)
    waits, step_times = [], []
    start_all = time.perf_counter()
    it = iter(loader)
    for i in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        images, targets = next(it)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if transform is not None:
            images, targets = transform(images, targets)
        sync(device)
        t1 = time.perf_counter()
        subnets = sample_subnets(rng, model.img_sizes, model.keep_ratios)
        zero_grad(optimizer)
        supervit_step(model, images, targets, subnets, task, teachers="group", amp_dtype=amp)
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= 2:  # the first two: worker start-up and warm-up
            waits.append(t1 - t0)
            step_times.append(t2 - t1)
        if time.perf_counter() - start_all > budget_s:
            break
    wait, step = float(np.sum(waits)), float(np.sum(step_times))
    return {"backend": backend, "steps": len(waits), "workers": workers, "batch": batch,
            "data_wait_ms_median": 1e3 * float(np.median(waits)) if waits else None,
            "step_ms_median": 1e3 * float(np.median(step_times)) if step_times else None,
            "data_wait_share": wait / (wait + step) if waits else None,
            "images_per_s": batch * len(waits) / (wait + step) if waits else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--small", action="store_true", help="tiny model, 64-pixel crops, CPU, few steps")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=150.0, help="time limit of each data-wait run")
    args = parser.parse_args(argv)
    if args.small:
        device, model_name, img_size = torch.device("cpu"), "tiny", 64
        args.batch, args.steps, args.rounds, args.workers = min(args.batch, 8), min(args.steps, 3), 2, 0
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA GPU (use --small to check the plumbing on CPU)", file=sys.stderr)
            return 2
        device, model_name, img_size = torch.device("cuda"), "super_deit_s", 224
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="bench_data_gpu_")
    try:
        data = _photos(work, copies=1 if args.small else 4)
        rates, cond = throughput(data, device, args.batch, img_size, args.rounds)
        waits = [data_wait(data, device, backend, model_name, args.batch, img_size, args.steps, args.workers,
                           args.budget_s) for backend in ("device", "pil")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    summary = {"device": device_name(device), "conditions": cond, "throughput": rates, "data_wait": waits,
               "model": model_name, "img_size": img_size}
    with atomic_write(os.path.join(args.out, "data_gpu.json")) as tmp:
        with open(tmp, "w") as handle:
            json.dump(summary, handle, indent=1)
    lines = [f"# Device data path on {summary['device']}", "", "| candidate | median ms / batch | images/s |",
             "|---|---|---|"]
    lines += [f"| {name} | {r['median_ms']:.1f} | {r['images_per_s']:.0f} |" for name, r in rates.items()]
    lines += ["", "| data path | steps | workers | data wait ms | step ms | data wait share | images/s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {w['backend']} | {w['steps']} | {w['workers']} | {w['data_wait_ms_median']:.1f} | "
              f"{w['step_ms_median']:.1f} | {100 * w['data_wait_share']:.1f} % | {w['images_per_s']:.0f} |"
              for w in waits if w["steps"]]
    with atomic_write(os.path.join(args.out, "data_gpu.md")) as tmp:
        with open(tmp, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
