"""Whole-model benchmarks: every sub-network of both super-networks vs timm's DeiT-S, and the training step.

Eval rows: batch-1 latency and batch-N throughput per (model, backend, mode, dtype, batch, sub-network), with
speedup over the model's own (224, 1) row and efficiency = speedup / FLOP ratio (1.0: every saved FLOP became
time). Train rows: the SuperViT 4-sub-network step vs one plain step, and vs the FLOP-weighted cost of its passes.

    python benchmarks/bench_models.py --device cpu                 # CPU set (part of `make bench`)
    python benchmarks/bench_models.py --device cuda --dtypes bf16 --batches 1 256 --modes eager compile

Results go to a new run folder under runs/bench/ unless --out names one. Every row records the 1-minute load
average before and after its timing, the spread (IQR / median) and a noisy flag (spread above 10%).
"""
from __future__ import annotations

import argparse
import contextlib
import os

import timm
import torch
import torch.nn.functional as F

import harness
import supervit  # noqa: F401
from supervit.models import flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TIMM_BASELINE = "deit_small_patch16_224"


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def eval_fn(model, x, size, ratio, mode, device, dtype):
    """A no-grad callable running sub-network (size, ratio), eager or compiled."""
    def run(t):
        return model(t, img_size=size, keep_ratio=ratio) if size is not None else model(t)
    if mode == "compile":
        run = torch.compile(run, fullgraph=True, dynamic=False)
    elif mode == "cudagraph":
        run = torch.compile(run, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def call():
        with torch.no_grad(), autocast(device, dtype):
            return run(x)
    return call


def eval_rows(args, device):
    rows = []
    for model_name in args.models:
        # timm's DeiT-S does not call our ops: one backend row set is enough
        for backend in args.backends[:1] if model_name == TIMM_BASELINE else args.backends:
            for mode in args.modes:
                for dtype_name in args.dtypes:
                    for batch in args.batches:
                        rows += eval_model(args, device, model_name, backend, mode, dtype_name, batch)
    return rows


def eval_model(args, device, model_name, backend, mode, dtype_name, batch):
    """One row per sub-network of ``model_name`` (timm's DeiT-S: one row), the sub-networks timed round by round."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    is_timm = model_name == TIMM_BASELINE
    model = timm.create_model(model_name).to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    subnets = [(None, None)] if is_timm else [(s, r) for s, r in model.subnets()]
    with harness.forced_backend("auto" if is_timm else backend):
        fns = {(size, ratio): eval_fn(model, x, size, ratio, mode, device, dtype) for size, ratio in subnets}
        stats, cond = harness.measure(fns, device, dtype=dtype, batch=batch, backend=backend, mode=mode,
                                      rounds=args.repeats, warmup=args.warmup + (2 if mode != "eager" else 0),
                                      min_seconds=args.min_seconds)
    full_gmacs = flops("super_deit_s" if is_timm else model, 224, 1.0)
    rows = []
    for (size, ratio), t in stats.items():
        gmacs = full_gmacs if is_timm else flops(model, size, ratio)
        rows.append({"kind": "eval", "model": "timm_" + model_name if is_timm else model_name,
                     "backend": "timm-sdpa" if is_timm else backend, "mode": mode, "dtype": dtype_name,
                     "batch": batch, "img_size": size or 224, "keep_ratio": ratio or 1.0, "gmacs": gmacs,
                     **t, "img_per_s": batch / (t["median_ms"] / 1e3),
                     **{k: v for k, v in cond.items() if k not in ("dtype", "batch", "backend", "mode")}})
        print(f"{rows[-1]['model']:>28} {rows[-1]['backend']:>9} {mode:>7} {dtype_name} b{batch:<4} "
              f"({rows[-1]['img_size']}, {rows[-1]['keep_ratio']}) {t['median_ms']:9.2f} ms "
              f"{rows[-1]['img_per_s']:9.1f} img/s{'  NOISY' if t['noisy'] else ''}", flush=True)
    full = next(r for r in rows if r["img_size"] == 224 and r["keep_ratio"] == 1.0)
    for r in rows:
        r["speedup_vs_full"] = full["median_ms"] / r["median_ms"]
        r["flop_ratio"] = full_gmacs / r["gmacs"]
        r["efficiency"] = r["speedup_vs_full"] / r["flop_ratio"]
    return rows


def kd_loss(student, teacher):
    return F.kl_div(F.log_softmax(student, -1), F.softmax(teacher.detach(), -1), reduction="batchmean")


def supervit_step(model, x, target, subnets, device, dtype):
    """The 4-sub-network step: supervised loss at full keep, KD from the same-size full-keep teacher."""
    teachers = {}
    for size, ratio in subnets:
        with autocast(device, dtype):
            logits = model(x, img_size=size, keep_ratio=ratio)
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = F.cross_entropy(logits, target) if ratio == 1.0 else kd_loss(logits, teachers[size])
        if ratio == 1.0:
            teachers[size] = logits.detach()
        loss.backward()


def train_rows(args, device):
    rows = []
    dtype_name = args.dtypes[0]
    dtype = DTYPES[dtype_name]
    batch = args.train_batch
    x = torch.randn(batch, 3, 224, 224, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    torch.manual_seed(0)
    plain = timm.create_model(TIMM_BASELINE).to(device).train()
    model = timm.create_model("super_deit_s").to(device).train()
    step_subnets = [(224, 1.0), (224, 0.7), (160, 1.0), (160, 0.5)]

    def timm_step():
        with autocast(device, dtype):
            loss = F.cross_entropy(plain(x), target)
        loss.backward()

    def full_pass():
        supervit_step(model, x, target, [(224, 1.0)], device, dtype)

    def four_passes():
        supervit_step(model, x, target, step_subnets, device, dtype)

    steps = {"timm_deit_small_step": timm_step, "supervit_full_pass": full_pass, "supervit_4subnet_step": four_passes}
    peaks = {}
    for name, fn in steps.items():  # peak memory of one call each (this also warms them up)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        harness.sync(device)
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    stats, cond = harness.measure(steps, device, dtype=dtype, batch=batch, mode="eager",
                                  rounds=max(3, args.repeats // 2), warmup=0)
    for name, t in stats.items():
        rows.append({"kind": "train", "model": name, "dtype": dtype_name, "batch": batch,
                     "subnets": " ".join(f"({s},{r})" for s, r in step_subnets) if "4subnet" in name else "",
                     **t, "img_per_s": batch / (t["median_ms"] / 1e3), "peak_mem_mib": peaks[name],
                     **{k: v for k, v in cond.items() if k not in ("dtype", "batch")}})
        print(f"{name:>24} b{batch} {t['median_ms']:9.1f} ms", flush=True)
    weight = sum(flops("super_deit_s", s, r) for s, r in step_subnets) / flops("super_deit_s", 224, 1.0)
    expected = stats["supervit_full_pass"]["median_ms"] * weight
    for r in rows:
        r["flop_weighted_ratio"] = (stats["supervit_4subnet_step"]["median_ms"] / expected
                                    if "4subnet" in r["model"] else "")
    return rows


def plot(rows, path):
    """Throughput vs GMACs, one panel per batch size: one curve per model/backend/mode/dtype through its 12
    sub-networks, a dashed "every saved FLOP becomes time" curve per model, timm's DeiT-S as reference points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    models = sorted({r["model"] for r in rows if not r["model"].startswith("timm_")})
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for ax, batch in zip(axes[0], batches):
        groups = {}
        for r in rows:
            if r["batch"] == batch:
                groups.setdefault((r["model"], r["backend"], r["mode"], r["dtype"]), []).append(r)
        ideal_drawn = set()
        for (model, backend, mode, dtype), group in sorted(groups.items()):
            label = f"{backend} {mode} {dtype}"
            if model.startswith("timm_"):
                ax.scatter([r["gmacs"] for r in group], [r["img_per_s"] for r in group], marker="*", s=180,
                           color="k", zorder=5, label=f"timm deit_small (SDPA) {mode} {dtype}")
                continue
            pts = sorted((r["gmacs"], r["img_per_s"]) for r in group)
            ax.plot(*zip(*pts), marker="o", ms=4, color=colors[model], ls="-" if backend == "auto" else ":",
                    label=f"{model} {label}")
            full = next(r for r in group if r["img_size"] == 224 and r["keep_ratio"] == 1.0)
            if model not in ideal_drawn:
                ideal_drawn.add(model)
                xs = [x for x, _ in pts]
                ax.plot(xs, [full["img_per_s"] * full["gmacs"] / x for x in xs], ls="--", lw=0.8,
                        color=colors[model], alpha=0.6, label=f"{model} ideal (efficiency 1)")
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("images / s")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"SuperViT sub-networks: throughput vs cost ({rows[0]['device']}, {rows[0]['threads']} threads)")
    harness.save_png(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--models", nargs="+", default=["super_deit_s", "super_lvvit_s", TIMM_BASELINE],
                   help="models to time (default: both super-networks and timm's DeiT-S)")
    p.add_argument("--backends", nargs="+", default=["auto", "reference"],
                   help="op backends of the super-networks (auto: the dispatcher's choice)")
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile", "cudagraph"],
                   help="eager, torch.compile, or CUDA graphs (compile mode reduce-overhead)")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES), help="autocast dtypes")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="eval batch sizes")
    p.add_argument("--train-batch", type=int, default=32, help="batch of the training-step rows")
    p.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each sub-network first")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each round times every sub-network once)")
    p.add_argument("--min-seconds", type=float, default=0.0, help="keep repeating each row at least this long")
    p.add_argument("--out", default=None,
                   help="results folder (default: a new runs/bench/<device>-<time>; pass benchmarks/results/<device> "
                        "to update the committed results)")
    return p.parse_args(argv)


TIMING_COLS = ["median_ms", "min_ms", "max_ms", "rel_spread", "noisy", "rounds"]
CONDITION_COLS = ["load_before", "load_after", "device", "torch", "triton", "threads", "machine", "command"]


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    out = harness.run_folder(device, args.out)
    rows = eval_rows(args, device)
    eval_cols = ["model", "backend", "mode", "dtype", "batch", "img_size", "keep_ratio", "gmacs", *TIMING_COLS,
                 "img_per_s", "speedup_vs_full", "flop_ratio", "efficiency", *CONDITION_COLS]
    harness.report_rows(rows, out, "models_eval", eval_cols)
    plot(rows, os.path.join(out, "models_eval.png"))
    if not args.no_train:
        train = train_rows(args, device)
        train_cols = ["model", "dtype", "batch", "subnets", *TIMING_COLS, "img_per_s", "peak_mem_mib",
                      "flop_weighted_ratio", *CONDITION_COLS]
        harness.report_rows(train, out, "models_train", train_cols)
    return out


if __name__ == "__main__":
    main()
