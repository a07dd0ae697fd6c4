"""Peak CPU memory of one 4-sub-network training step with and without gradient checkpointing.

Each measurement runs in a fresh process (the peak resident set size only grows): build the model, then one step
of the trainer's shape (sub-networks (224, 1), (224, 0.5), (160, 1), (160, 0.7); forward, loss and backward for
each, gradients summed). Reported: the growth of the peak resident set size during the step. Runs alternate between the two
settings round by round; the machine load is recorded with each run.

    python tools/measure_grad_checkpointing_memory.py --model super_deit_s --batch 16 --out runs/ckpt.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

STEP = [(224, 1.0), (224, 0.5), (160, 1.0), (160, 0.7)]


def one_step(model_name: str, batch: int, checkpointing: bool) -> dict:
    import timm
    import torch

    import supervit  # noqa: F401

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = timm.create_model(model_name, drop_path_rate=0.1).train()
    model.set_grad_checkpointing(checkpointing)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    for size, ratio in STEP:
        out = model(x, img_size=size, keep_ratio=ratio)
        logits = out[0] if isinstance(out, tuple) else out
        torch.nn.functional.cross_entropy(logits, y).backward()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"checkpointing": checkpointing, "step_peak_growth_mib": (after - before) / 1024,
            "peak_rss_mib": after / 1024, "step_seconds": seconds, "load_avg_1min": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="super_deit_s", choices=["super_deit_s", "super_lvvit_s"])
    parser.add_argument("--batch", type=int, default=16, help="images per step (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per setting (default: %(default)s)")
    parser.add_argument("--out", default="runs/grad_checkpointing_memory.json", help="JSON (default: %(default)s)")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.rounds < 1:
        print("error: --batch and --rounds must be >= 1", file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(one_step(args.model, args.batch, args.child == "on")))
        return 0
    runs = []
    for round_index in range(args.rounds):
        for setting in ("off", "on"):
            cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--batch", str(args.batch),
                   "--child", setting]
            # a fixed mmap threshold makes glibc return freed large blocks at once, so the peak RSS follows the
            # live tensors instead of a heap that only grows
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            result = json.loads(done.stdout.splitlines()[-1])
            runs.append({**result, "round": round_index})
            print(f"round {round_index} checkpointing={setting}: +{result['step_peak_growth_mib']:.0f} MiB, "
                  f"{result['step_seconds']:.1f} s, load {result['load_avg_1min']:.1f}", flush=True)
    summary = {}
    for on in (False, True):
        growth = [r["step_peak_growth_mib"] for r in runs if r["checkpointing"] == on]
        secs = [r["step_seconds"] for r in runs if r["checkpointing"] == on]
        summary["on" if on else "off"] = {"median_step_peak_growth_mib": statistics.median(growth),
                                          "spread_mib": max(growth) - min(growth),
                                          "median_step_seconds": statistics.median(secs)}
    report = {"model": args.model, "batch": args.batch, "subnets": STEP, "summary": summary, "runs": runs}
    from supervit.files import atomic_write

    with atomic_write(args.out, make_folder=True) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
