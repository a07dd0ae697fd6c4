"""`make bench`: the CPU benchmark set (op benchmarks with pytest-benchmark, the model benchmarks, the batch-1
latency breakdown), each writing CSV, markdown and PNG files into one run folder.

    python benchmarks/run_cpu.py                                    # -> runs/bench/<device>-<time>/
    python benchmarks/run_cpu.py --out benchmarks/results/<device>   # update the committed results on purpose

About 8 minutes on a 2-core machine. Every row records the 1-minute load average and a noisy flag (spread IQR /
median above 10%); the run ends with a warning naming how many rows are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def ops_rows(json_path: str, noisy_spread: float) -> list[dict]:
    """Rows of a pytest-benchmark JSON file: median/min/max (ms), spread, noisy flag, speedup vs the reference."""
    with open(json_path) as f:
        data = json.load(f)
    rows = []
    for bench in data["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        spread = stats["iqr"] / stats["median"] if stats["median"] > 0 else 0.0
        rows.append({**info, "median_ms": stats["median"] * 1e3, "min_ms": stats["min"] * 1e3,
                     "max_ms": stats["max"] * 1e3, "rel_spread": spread, "noisy": spread > noisy_spread,
                     "rounds": stats["rounds"]})
    ref = {(r["op"], r["tokens"], r["pass_"]): r["median_ms"] for r in rows if r["backend"] == "reference"}
    for r in rows:
        base = ref.get((r["op"], r["tokens"], r["pass_"]))
        r["speedup_vs_reference"] = base / r["median_ms"] if base else ""
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None,
                   help="results folder (default: a new runs/bench/<device>-<time>; benchmarks/results/<device> "
                        "updates the committed results)")
    p.add_argument("--skip", nargs="+", default=[], choices=["ops", "models", "breakdown"],
                   help="parts of the set to leave out")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)  # --help answers here, before torch is imported or anything runs
    import torch
    import harness

    device = torch.device("cpu")
    out = harness.run_folder(device, args.out)
    os.makedirs(out, exist_ok=True)
    print(f"results -> {out}", flush=True)
    if "ops" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            json_path = os.path.join(tmp, "ops.json")
            load_before = harness.load_average()
            subprocess.run([sys.executable, "-m", "pytest", "-q", os.path.join(HERE, "bench_ops.py"),
                            "-o", "python_files=bench_*.py", "-p", "no:cacheprovider", "--benchmark-max-time=0.5",
                            "--benchmark-min-rounds=5", f"--benchmark-json={json_path}"], check=True,
                           env={**os.environ, "BENCH_DEVICE": "cpu"})
            rows = ops_rows(json_path, harness.NOISY_SPREAD)
        cond = harness.conditions(device, load_before=load_before, load_after=harness.load_average())
        for r in rows:
            r.update(cond, command="make bench (benchmarks/bench_ops.py)")
        cols = ["op", "backend", "pass_", "batch", "tokens", "median_ms", "min_ms", "max_ms", "rel_spread", "noisy",
                "rounds", "speedup_vs_reference", "load_before", "load_after", "device", "torch", "threads",
                "machine", "command"]
        harness.report_rows(rows, out, "ops", cols)
    if "models" not in args.skip:
        subprocess.run([sys.executable, os.path.join(HERE, "bench_models.py"), "--device", "cpu", "--out", out],
                       check=True)
    if "breakdown" not in args.skip:
        subprocess.run([sys.executable, os.path.join(HERE, "bench_latency_breakdown.py"), "--models", "super_deit_s",
                        "super_lvvit_s", "--batch", "1", "--out", out], check=True)
    return out


if __name__ == "__main__":
    main()
