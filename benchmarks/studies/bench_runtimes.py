"""Latency of every sub-network of super_deit_s in PyTorch eager, the .pt2 program, its AOTInductor package and
ONNX Runtime, all interleaved in one run; export time of each format.

    python benchmarks/studies/bench_runtimes.py                        # CPU, batch 1 and 32, 5 rounds
    python benchmarks/studies/bench_runtimes.py --batches 1 --rounds 9    # again: reuses runs/bench_runtimes_exports

One dynamic-batch export per sub-network and format serves both batch sizes. For each batch size, every
(sub-network, runtime) pair is a candidate of one ``time_interleaved`` call: each round runs all of them, the order
rotating, so load from other processes hits every candidate alike. Rows record median, min..max, IQR/median, the
noisy flag and the load average before/after. Writes runtimes.{csv,md,png} and runtimes_export.{csv,md} to
a new folder under runs/bench/ (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: harness
import harness  # noqa: E402
import supervit  # noqa: E402,F401
from supervit.deploy import export, runners  # noqa: E402
from supervit.models import check_subnets, flops, parse_subnets  # noqa: E402

RUNTIMES = ("eager", "pt2", "aoti", "onnx")
FILE_FORMATS = ("pt2", "aoti", "onnx")


def export_all(model, subnets, folder: str, aoti_subnets) -> tuple[dict, list]:
    """({(s, r): {fmt: path}}, export-time rows). Files already in ``folder`` (with their timing) are reused.

    AOTInductor packages (minutes of C++ compilation each) are built for ``aoti_subnets`` and reused where a
    previous run left one."""
    from tqdm import tqdm

    paths, rows = {}, []
    for size, ratio in tqdm(subnets, desc="export", unit="sub-network"):
        stem = os.path.join(folder, f"deit_s_{size}_{ratio:g}")
        record = stem + ".json"
        files = {fmt: f"{stem}_{fmt}{export.SUFFIX[fmt]}" for fmt in FILE_FORMATS}
        timing = {}
        if os.path.exists(record):
            with open(record) as f:
                timing = json.load(f)
        wanted = [fmt for fmt in FILE_FORMATS if fmt != "aoti" or (size, ratio) in aoti_subnets]
        missing = [fmt for fmt in wanted if f"{fmt}_write_s" not in timing or not os.path.exists(files[fmt])]
        if missing:
            start = time.perf_counter()
            program, subnet = export.export_program(model, size, ratio)
            timing["trace_and_translate_s"] = time.perf_counter() - start
            timing["load_during_export"] = harness.load_average()
            for fmt in missing:
                start = time.perf_counter()
                export.write_program(program, fmt, files[fmt], export.output_names(subnet))
                timing[f"{fmt}_write_s"] = time.perf_counter() - start
            with open(record, "w") as f:
                json.dump(timing, f)
        paths[(size, ratio)] = {fmt: p for fmt, p in files.items() if f"{fmt}_write_s" in timing and os.path.exists(p)}
        row = {"img_size": size, "keep_ratio": ratio, "trace_and_translate_s": timing["trace_and_translate_s"]}
        for fmt in FILE_FORMATS:
            if f"{fmt}_write_s" in timing:
                row[f"{fmt}_total_s"] = timing["trace_and_translate_s"] + timing[f"{fmt}_write_s"]
        row["load"] = timing.get("load_during_export")
        rows.append(row)
    return paths, rows


def candidates_for(model, paths, batch: int) -> dict:
    """{(size, ratio, runtime): callable} running a fixed input of ``batch`` images."""
    x = torch.randn(batch, 3, model.img_sizes[-1], model.img_sizes[-1], generator=torch.Generator().manual_seed(0))
    found = {}
    for (size, ratio), files in paths.items():
        def eager(size=size, ratio=ratio):
            with torch.inference_mode():
                return model(x, img_size=size, keep_ratio=ratio)
        found[(size, ratio, "eager")] = eager
        for fmt in files:
            run = runners.load_runner(files[fmt], fmt)
            found[(size, ratio, fmt)] = lambda run=run: run(x)
    return found


def check_outputs(model, paths) -> list:
    """Max |logits - eager| of every file on one batch of 2 (a failed parity invalidates its timing)."""
    side = model.img_sizes[-1]
    x = torch.randn(2, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))
    return [{"img_size": size, "keep_ratio": ratio, "format": fmt,
             "max_abs_diff": export.compare_with_eager(path, fmt, model, size, ratio, x)["max_abs_diff"]}
            for (size, ratio), files in paths.items() for fmt, path in files.items()]


def time_batch(model, paths, batch: int, rounds: int, warmup: int) -> list:
    cands = candidates_for(model, paths, batch)
    results, cond = harness.measure(cands, "cpu", dtype=torch.float32, batch=batch, mode="runtimes",
                                    rounds=rounds, warmup=warmup, progress=True)
    rows = []
    for (size, ratio, runtime), r in results.items():
        full = results[(model.img_sizes[-1], 1.0, runtime)]["median_ms"]
        eager = results[(size, ratio, "eager")]["median_ms"]
        rows.append({"batch": batch, "img_size": size, "keep_ratio": ratio, "runtime": runtime,
                     "gmacs": round(flops(model, size, ratio), 3), "median_ms": r["median_ms"],
                     "min_ms": r["min_ms"], "max_ms": r["max_ms"], "rel_spread": r["rel_spread"],
                     "noisy": r["noisy"], "speedup_vs_eager": eager / r["median_ms"],
                     "speedup_vs_224_1": full / r["median_ms"], "img_per_s": 1e3 * batch / r["median_ms"],
                     "load_before": cond["load_before"], "load_after": cond["load_after"],
                     "threads": cond["threads"], "torch": cond["torch"], "device": cond["device"],
                     "command": cond["command"]})
    return rows


def fastest_rows(rows: list) -> list:
    """Per (batch, sub-network): the fastest runtime and its margin over the runner-up."""
    best = []
    keys = sorted({(r["batch"], r["img_size"], r["keep_ratio"]) for r in rows})
    for batch, size, ratio in keys:
        group = sorted((r for r in rows if (r["batch"], r["img_size"], r["keep_ratio"]) == (batch, size, ratio)),
                       key=lambda r: r["median_ms"])
        best.append({"batch": batch, "img_size": size, "keep_ratio": ratio, "fastest": group[0]["runtime"],
                     "median_ms": group[0]["median_ms"], "runner_up": group[1]["runtime"],
                     "margin": group[1]["median_ms"] / group[0]["median_ms"],
                     "speedup_vs_224_1": group[0]["speedup_vs_224_1"]})
    return best


def plot(rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for runtime in RUNTIMES:
            pts = sorted((r["gmacs"], r["median_ms"]) for r in rows if r["batch"] == batch and r["runtime"] == runtime)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=runtime)
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("latency per batch (ms, median)")
        ax.set_title(f"super_deit_s, 12 sub-networks, batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend()
    harness.save_png(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    parser.add_argument("--export-dir", default=os.path.join("runs", "bench_runtimes_exports"),
                        help="where the exports go (about 3 GB; reused when present)")
    parser.add_argument("--aoti-subnets", default="all",
                        help="sub-networks to compile AOTInductor packages for, e.g. 224:0.5,224:1 (default: all)")
    parser.add_argument("--out", default=None, help="results folder (default: a new folder under runs/bench/)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = harness.run_folder("cpu", args.out)
    export_dir = args.export_dir
    os.makedirs(export_dir, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model("super_deit_s").eval()
    aoti_subnets = set(model.subnets()) if args.aoti_subnets == "all" else set(
        check_subnets(model, parse_subnets(args.aoti_subnets, "--aoti-subnets"), arg="--aoti-subnets"))
    paths, export_rows = export_all(model, model.subnets(), export_dir, aoti_subnets)
    harness.write_rows(export_rows, out, "runtimes_export")
    parity = check_outputs(model, paths)
    harness.write_rows(parity, out, "runtimes_parity")
    rows = []
    for batch in args.batches:
        rows += time_batch(model, paths, batch, args.rounds, args.warmup)
        harness.write_rows(rows, out, "runtimes")  # after each batch size, so a long run keeps what it measured
    harness.write_rows(fastest_rows(rows), out, "runtimes_fastest")
    plot(rows, os.path.join(out, "runtimes.png"))
    print(f"results in {out}; worst parity {max(p['max_abs_diff'] for p in parity):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
