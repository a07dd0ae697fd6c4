"""`make bench`: the CPU benchmark set, results under benchmarks/results/<device>/ (CSV, markdown, PNG).

Runs the op benchmarks (pytest-benchmark), the model benchmarks and the batch-1 latency breakdown; each writes
its own files. Budget: 15 min on a 2-core machine (measured: about 8).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402


def ops_rows(json_path: str) -> list[dict]:
    with open(json_path) as f:
        data = json.load(f)
    rows = []
    for bench in data["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        rows.append({**info, "median_ms": stats["median"] * 1e3, "min_ms": stats["min"] * 1e3,
                     "max_ms": stats["max"] * 1e3, "rounds": stats["rounds"]})
    ref = {(r["op"], r["tokens"], r["pass_"]): r["median_ms"] for r in rows if r["backend"] == "reference"}
    for r in rows:
        base = ref.get((r["op"], r["tokens"], r["pass_"]))
        r["speedup_vs_reference"] = base / r["median_ms"] if base else ""
    return rows


def main():
    import torch
    device = torch.device("cpu")
    out = os.path.join(HERE, "results", harness.device_name(device))
    with tempfile.TemporaryDirectory() as tmp:
        json_path = os.path.join(tmp, "ops.json")
        subprocess.run([sys.executable, "-m", "pytest", "-q", os.path.join(HERE, "bench_ops.py"),
                        "-o", "python_files=bench_*.py", "-p", "no:cacheprovider", "--benchmark-max-time=0.5",
                        "--benchmark-min-rounds=5", f"--benchmark-json={json_path}"], check=True,
                       env={**os.environ, "BENCH_DEVICE": "cpu"})
        rows = ops_rows(json_path)
    cond = harness.conditions(device)
    for r in rows:
        r.update(cond, command="make bench (benchmarks/bench_ops.py)")
    cols = ["op", "backend", "pass_", "batch", "tokens", "median_ms", "min_ms", "max_ms", "rounds",
            "speedup_vs_reference", "device", "torch", "threads", "machine", "command"]
    print("wrote", *harness.write_rows(rows, out, "ops", cols))
    subprocess.run([sys.executable, os.path.join(HERE, "bench_models.py"), "--device", "cpu", "--out", out],
                   check=True)
    subprocess.run([sys.executable, os.path.join(HERE, "bench_latency_breakdown.py"), "--models", "super_deit_s",
                    "super_lvvit_s", "--batch", "1", "--out", out], check=True)


if __name__ == "__main__":
    main()
