"""Where the time of one forward goes, per sub-network: matrix multiplies, attention, token pruning, the other
ops, and what is left of the wall time (Python and dispatch between ops).

Explains the batch-size dependence of the efficiency column of bench_models.py: at batch 1 on a CPU the linear
layers see few rows (65 tokens at 128 px, 10 after the last pruning), so each multiply streams its whole weight
matrix for little arithmetic, and the per-op overheads weigh as much as at 224 px; the saved FLOPs then turn into
less time than their share.

    python benchmarks/bench_latency_breakdown.py --device cpu --batch 1

Results go to a new run folder under runs/bench/ unless --out names one; each row records the load average and
whether its wall time was noisy.
"""
from __future__ import annotations

import argparse
import os

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import harness
import supervit  # noqa: F401
from supervit.models import flops

CATEGORIES = {  # profiler op name -> category (self time; ops not listed count as "other ops")
    "aten::addmm": "matmul", "aten::mm": "matmul", "aten::bmm": "matmul", "aten::matmul": "matmul",
    "aten::mkldnn_convolution": "matmul", "aten::convolution": "matmul",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "supervit::ext_attention": "attention",
    "supervit::attention": "attention",
    "supervit::prune_tokens": "pruning", "supervit::ext_prune_tokens": "pruning",
}
CATEGORY_NAMES = ("matmul", "attention", "pruning", "other ops")


def op_times(model, x, size, ratio, iters):
    """{category: profiler self time in ms per forward} over ``iters`` profiled forwards."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            model(x, img_size=size, keep_ratio=ratio)
    parts = dict.fromkeys(CATEGORY_NAMES, 0.0)
    for event in prof.key_averages():
        parts[CATEGORIES.get(event.key, "other ops")] += event.self_cpu_time_total / 1e3 / iters
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu"], help="CPU only (the profiler's CPU self times)")
    p.add_argument("--models", nargs="+", default=["super_deit_s"], help="super-networks to break down")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--iters", type=int, default=10, help="timed rounds and profiled forwards per sub-network")
    p.add_argument("--out", default=None,
                   help="results folder (default: a new runs/bench/<device>-<time>; pass benchmarks/results/<device> "
                        "to update the committed results)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = harness.run_folder(device, args.out)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        x = torch.randn(args.batch, 3, 224, 224)
        subnets = ((224, 1.0), (224, 0.5), (160, 0.5), (128, 1.0), (128, 0.5))

        def forward(size, ratio):
            def run():
                with torch.no_grad():
                    model(x, img_size=size, keep_ratio=ratio)
            return run
        walls, cond = harness.measure({sub: forward(*sub) for sub in subnets}, device, dtype=torch.float32,
                                      batch=args.batch, mode="eager", rounds=args.iters)
        parts = {sub: op_times(model, x, *sub, args.iters) for sub in subnets}
        full_ms, full_parts = walls[(224, 1.0)]["median_ms"], parts[(224, 1.0)]
        for size, ratio in subnets:
            wall, part = walls[(size, ratio)]["median_ms"], parts[(size, ratio)]
            flop_ratio = flops(model, 224, 1.0) / flops(model, size, ratio)
            row = {"model": name, "batch": args.batch, "img_size": size, "keep_ratio": ratio,
                   "flop_ratio": flop_ratio, "wall_ms": wall, "efficiency": full_ms / wall / flop_ratio,
                   "rel_spread": walls[(size, ratio)]["rel_spread"], "noisy": walls[(size, ratio)]["noisy"]}
            for cat in CATEGORY_NAMES:
                row[f"{cat}_ms"] = part[cat]
                row[f"{cat}_speedup"] = full_parts[cat] / part[cat] if part[cat] and full_parts[cat] else float("nan")
            row["between_ops_ms"] = max(0.0, wall - sum(part.values()))
            rows.append({**cond, **row})
            print(f"{name} b{args.batch} ({size}, {ratio}) wall {wall:7.2f} ms  efficiency {row['efficiency']:.2f}  "
                  + "  ".join(f"{c} {part[c]:6.2f} ms (x{row[c + '_speedup']:.2f})" for c in CATEGORY_NAMES)
                  + f"  between ops {row['between_ops_ms']:5.2f} ms", flush=True)
    cols = ["model", "batch", "img_size", "keep_ratio", "flop_ratio", "wall_ms", "efficiency"]
    cols += [f"{c}_{k}" for c in CATEGORY_NAMES for k in ("ms", "speedup")]
    cols += ["between_ops_ms", "rel_spread", "noisy", "load_before", "load_after", "threads", "device", "torch",
             "command"]
    harness.report_rows(rows, out, f"latency_breakdown_b{args.batch}", cols)
    return out


if __name__ == "__main__":
    main()
