"""The compiled bf16 SuperViT training step of super_deit_s at batch 256 vs eager on the GPU, with its MFU
(``make gpu-check PART=bench`` runs it). The step and its timing are ``benchmarks/bench_train_step.py``'s; the
target: compiled at least 1.2x the eager step's throughput.

    python benchmarks/gpu/bench_train_gpu.py --out DIR          # CUDA, bf16, batch 256
    python benchmarks/gpu/bench_train_gpu.py --tiny --out DIR   # a tiny model on the CPU (tests the plumbing)
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: harness, bench_*

import bench_train_step  # noqa: E402

TARGET_SPEEDUP = 1.2


def target_line(rows: list[dict]) -> str:
    """How the compiled step stands against the target, from the rows of ``bench_train_step``."""
    compiled = next(r for r in rows if r["candidate"] == "compiled")
    ratio = compiled["eager_over_compiled"]
    mfu = f", MFU {100 * compiled['mfu']:.1f} %" if compiled["mfu"] != "" else ", MFU unknown (no peak for this device)"
    return (f"compiled {compiled['dtype']} training step of {compiled['model']} at batch {compiled['batch']}: "
            f"{ratio:.2f}x the eager step (95% interval {compiled['ratio_ci_low']:.2f}..{compiled['ratio_ci_high']:.2f}; "
            f"target {TARGET_SPEEDUP}x): {ratio >= TARGET_SPEEDUP}{mfu}")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="result folder")
    p.add_argument("--tiny", action="store_true", help="a tiny model, fp32, on the CPU (the plumbing, in seconds)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    args = p.parse_args(argv)
    common = ["--out", args.out, "--backend", args.backend, "--rounds", str(args.rounds)]
    if args.tiny:
        rows = bench_train_step.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--batches", "4", *common])
    else:
        rows = bench_train_step.main(["--device", "cuda", "--dtype", "bf16", "--batches", "256", "--warmup", "2",
                                      *common])
    print(target_line(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
