"""Batch-1 latency of every sub-network with CUDA graphs (``supervit.deploy.cuda_graph``) vs eager, GPU only.

One row per (model, sub-network, mode): the super-networks' 12 sub-networks and timm's DeiT-S, bf16 weights,
batch 1, eager and CUDA-graph replay timed in interleaved rounds. The target: with CUDA graphs, every pruned
sub-network is faster than its model's (224, 1). Writes cuda_graphs.{csv,md,png} under --out.

    python benchmarks/gpu/bench_cuda_graphs.py --out runs/bench/graphs
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

TIMM_BASELINE = "deit_small_patch16_224"


def _graph_of(fn, example):
    """(replay callable) of ``fn(example)`` captured as a CUDA graph after a warm-up on a side stream."""
    from supervit.deploy.cuda_graph import capture_graph

    graph, _ = capture_graph(lambda: fn(example), example.device)
    return graph.replay


def model_candidates(name: str, dtype: torch.dtype):
    """{(model, img_size, keep_ratio, mode): callable} for one model at batch 1."""
    import timm

    import supervit  # noqa: F401 - registers the super-networks with timm
    from supervit.deploy.cuda_graph import CudaGraphSubnet

    torch.manual_seed(0)
    model = timm.create_model(name).cuda().eval().to(dtype)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=dtype)
    fns = {}
    if name == TIMM_BASELINE:
        def plain(t):
            return model(t)
        fns[("timm_" + name, 224, 1.0, "eager")] = lambda: _eager(plain, x)
        fns[("timm_" + name, 224, 1.0, "cuda_graph")] = _graph_of(plain, x)
        return fns
    for size, ratio in model.subnets():
        def run(t, size=size, ratio=ratio):
            return model(t, img_size=size, keep_ratio=ratio)
        fns[(name, size, ratio, "eager")] = lambda run=run: _eager(run, x)
        graph = CudaGraphSubnet(model, size, ratio, batch=1, dtype=dtype)
        fns[(name, size, ratio, "cuda_graph")] = lambda graph=graph: graph.replay_into(x)
    return fns


def _eager(fn, x):
    with torch.inference_mode():
        return fn(x)


def plot(rows, path):
    """Latency per sub-network (bars), eager and CUDA graphs side by side, one panel per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        group = [r for r in rows if r["model"] == model]
        subnets = sorted({(r["img_size"], r["keep_ratio"]) for r in group})
        for i, mode in enumerate(("eager", "cuda_graph")):
            ms = [next(r["median_ms"] for r in group if (r["img_size"], r["keep_ratio"]) == s and r["mode"] == mode)
                  for s in subnets]
            ax.bar([j + 0.4 * i for j in range(len(subnets))], ms, width=0.4, label=mode)
        ax.set_xticks([j + 0.2 for j in range(len(subnets))], [f"{s},{r}" for s, r in subnets], rotation=70,
                      fontsize=7)
        ax.set_ylabel("batch-1 latency (ms)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    harness.save_png(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["super_deit_s", "super_lvvit_s", TIMM_BASELINE])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (every candidate once per round)")
    parser.add_argument("--out", default=None, help="results folder (default: a new runs/bench/<device>-<time>)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda_graphs.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    rows = []
    for name in args.models:
        fns = model_candidates(name, torch.bfloat16)
        stats, cond = harness.measure(fns, device, dtype=torch.bfloat16, batch=1, rounds=args.rounds, warmup=2)
        full = {key[3]: t["median_ms"] for key, t in stats.items() if key[1:3] == (224, 1.0)}  # per mode
        for (model, size, ratio, mode), t in stats.items():
            rows.append(dict(model=model, img_size=size, keep_ratio=ratio, mode=mode, **t,
                             vs_full=t["median_ms"] / full[mode],
                             **{k: v for k, v in cond.items() if k not in ("batch", "backend", "mode")}))
            print(f"{model:>28} ({size}, {ratio}) {mode:>10} {t['median_ms']:8.3f} ms", flush=True)
    for r in rows:
        r["below_full"] = "" if r["keep_ratio"] == 1.0 else r["vs_full"] < 1.0
    out = harness.run_folder(device, args.out)
    columns = ["model", "img_size", "keep_ratio", "mode", "median_ms", "min_ms", "max_ms", "rel_spread", "noisy",
               "vs_full", "below_full", "dtype", "device", "torch", "triton", "load_before", "command"]
    print("wrote", *harness.write_rows(rows, out, "cuda_graphs", columns))
    plot(rows, os.path.join(out, "cuda_graphs.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
