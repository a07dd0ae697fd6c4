"""The whole GPU check for a machine with torch, triton, nvcc and a CUDA GPU but no network (`make gpu-check`).

Two parts, each meant to fit one 8-minute device call from a cold cache:

* ``tests``: builds the extension in place (``setup.py build_ext --inplace``, CUDA sources included), then runs
  every ``gpu``-marked test (of the files that hold one) with ``SUPERVIT_TRITON_ONE_CONFIG=1`` (one autotune config per shape, so that the
  kernel compiles fit);
* ``bench``: the Triton kernels vs SDPA and the reference ops (bench_triton.py), the 12 sub-networks of both models
  vs timm's DeiT-S at bf16 batch 1 and 256 plus the training step (bench_models.py), the device data path's
  throughput and data-wait share (gpu/bench_data_gpu.py), and batch-1 CUDA graphs (gpu/bench_cuda_graphs.py); full
  autotuning.

Every log and result goes under --out; summary.md there lists each step (exit code, seconds) and how the GPU
targets stand, and gpu-check-<part>.tar.gz holds all of it in one file. Without a CUDA GPU it stops at once with one line on stderr and exit code 2.

    python benchmarks/gpu/gpu_check.py --out runs/gpu --part tests
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PART_SECONDS = 8 * 60 - 30  # each part's budget, a margin left for the start-up and the summary


def gpu_problem() -> str:
    """Why this machine cannot run the check ('' when it can)."""
    try:
        import torch
    except ImportError as err:
        return f"torch cannot be imported ({err})"
    if not torch.cuda.is_available():
        return (f"no CUDA GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) reports "
                "torch.cuda.is_available() = False")
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return ""


class Steps:
    """Runs the check's commands with logs under ``out``, each within what is left of the part's budget."""

    def __init__(self, out: str, budget_s: float):
        self.out, self.deadline, self.rows = out, time.monotonic() + budget_s, []

    def run(self, name: str, argv: list[str], env: dict | None = None, share: float = 1.0) -> int:
        """Run ``argv`` (log ``out/<name>.log``) for at most ``share`` of the time left; its exit code (124: timed
        out)."""
        left = self.deadline - time.monotonic()
        limit = max(10.0, left * share)
        log_path = os.path.join(self.out, f"{name}.log")
        start = time.monotonic()
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            try:
                rc = subprocess.run(argv, cwd=REPO, env={**_base_env(), **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = 124
                log.write(f"\n[gpu-check] stopped after {limit:.0f} s (the part's time budget)\n")
        seconds = time.monotonic() - start
        self.rows.append((name, rc, seconds, log_path))
        print(f"[gpu-check] {name}: exit {rc} after {seconds:.0f} s (log {log_path})", flush=True)
        return rc


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (REPO, env.get("PYTHONPATH"))))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_environment(out: str) -> None:
    """versions.txt: python, torch, triton, nvcc and nvidia-smi as this machine reports them."""
    import torch
    import triton

    lines = [f"python {sys.version.split()[0]} ({sys.executable})", f"torch {torch.__version__} cuda {torch.version.cuda}",
             f"triton {triton.__version__}", f"device {torch.cuda.get_device_name(0)}"]
    for tool in (["nvcc", "--version"], ["nvidia-smi"]):
        if shutil.which(tool[0]):
            lines.append(subprocess.run(tool, capture_output=True, text=True).stdout.strip())
    with open(os.path.join(out, "versions.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def gpu_test_files() -> list[str]:
    """The test files that hold ``gpu``-marked tests (collecting only these keeps a test module that needs a package
    this machine lacks from stopping the run)."""
    found = []
    for folder, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.startswith("test_") and name.endswith(".py"):
                with open(path) as f:
                    if "pytest.mark.gpu" in f.read():
                        found.append(os.path.relpath(path, REPO))
    return sorted(found)


def run_tests(steps: Steps, py: str) -> None:
    build_env = {"SUPERVIT_REQUIRE_EXT": "1", "MAX_JOBS": str(os.cpu_count() or 4),
                 "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    steps.run("build_ext", [py, "setup.py", "build_ext", "--inplace"], build_env, share=0.45)
    parallel = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    steps.run("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", *gpu_test_files(), "-rs", *parallel,
                            "--junitxml", os.path.join(steps.out, "gpu_tests.xml")],
              {"SUPERVIT_TRITON_ONE_CONFIG": "1"})


def run_bench(steps: Steps, py: str) -> None:
    bench = os.path.join(REPO, "benchmarks")
    steps.run("bench_triton", [py, os.path.join(bench, "bench_triton.py"), "--dtype", "bf16", "--batch", "256",
                               "--out", os.path.join(steps.out, "triton")], share=0.4)
    steps.run("bench_models", [py, os.path.join(bench, "bench_models.py"), "--device", "cuda", "--dtypes", "bf16",
                               "--batches", "1", "256", "--backends", "auto", "--train-batch", "256",
                               "--out", os.path.join(steps.out, "models")], share=0.75)
    steps.run("bench_data_gpu", [py, os.path.join(bench, "gpu", "bench_data_gpu.py"), "--steps", "20",
                                 "--budget-s", "60", "--out", os.path.join(steps.out, "data")], share=0.5)
    steps.run("bench_train_gpu", [py, os.path.join(bench, "gpu", "bench_train_gpu.py"),
                                  "--out", os.path.join(steps.out, "train_step")], share=0.6)
    steps.run("bench_cuda_graphs", [py, os.path.join(bench, "gpu", "bench_cuda_graphs.py"),
                                    "--out", os.path.join(steps.out, "cuda_graphs")])


def _read(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def target_lines(out: str) -> list[str]:
    """How the GPU targets stand, from the result files the bench part wrote (those missing are said so)."""
    lines = []
    triton_rows = _read(os.path.join(out, "triton", "bench_triton.csv"))
    for r in triton_rows:
        if r.get("meets_target"):
            lines.append(f"- {r['group']} {r['shape']} {r['case']} {r['impl']}: time/baseline "
                         f"{float(r['time_vs_baseline']):.3f} (target {r['target']}): {r['meets_target']}")
    evals = [r for r in _read(os.path.join(out, "models", "models_eval.csv")) if r["batch"] == "256"]
    timm = next((float(r["img_per_s"]) for r in evals if r["model"].startswith("timm_")), None)
    for r in evals:
        goal = {"0.7": 1.4, "0.5": 1.8}.get(r["keep_ratio"]) if r["img_size"] == "224" else None
        if goal and timm:
            ratio = float(r["img_per_s"]) / timm
            lines.append(f"- {r['model']} (224, {r['keep_ratio']}) b256: {ratio:.2f}x timm DeiT-S throughput "
                         f"(target {goal}x): {ratio >= goal}")
    for r in _read(os.path.join(out, "models", "models_train.csv")):
        if r.get("flop_weighted_ratio"):
            ratio = float(r["flop_weighted_ratio"])
            lines.append(f"- training step {r['subnets']}: {ratio:.3f}x its FLOP-weighted cost (target 1.15x): "
                         f"{ratio <= 1.15}")
    graphs = [r for r in _read(os.path.join(out, "cuda_graphs", "cuda_graphs.csv")) if r["mode"] == "cuda_graph"]
    for model in sorted({r["model"] for r in graphs if not r["model"].startswith("timm_")}):
        pruned = [r for r in graphs if r["model"] == model and r["keep_ratio"] != "1.0"]
        slow = [f"({r['img_size']}, {r['keep_ratio']})" for r in pruned if r["below_full"] != "True"]
        lines.append(f"- {model} batch-1 CUDA graphs: {len(pruned) - len(slow)} of {len(pruned)} pruned "
                     f"sub-networks below (224, 1)" + (f"; not: {' '.join(slow)}" if slow else ""))
    for r in _read(os.path.join(out, "train_step", "train_step.csv")):
        if r["candidate"] == "compiled":
            ratio = float(r["eager_over_compiled"])
            mfu = f", MFU {100 * float(r['mfu']):.1f} %" if r["mfu"] else ""
            lines.append(f"- compiled {r['dtype']} training step b{r['batch']}: {ratio:.2f}x the eager step (target "
                         f"1.2x): {ratio >= 1.2}{mfu}")
    data_path = os.path.join(out, "data", "data_gpu.json")
    if os.path.exists(data_path):
        with open(data_path) as f:
            for w in json.load(f)["data_wait"]:
                if w["steps"]:
                    lines.append(f"- data wait with the {w['backend']} data path: {100 * w['data_wait_share']:.1f} % "
                                 f"of step time ({w['workers']} workers; target under 5 % for device): "
                                 f"{w['data_wait_share'] < 0.05 if w['backend'] == 'device' else 'n/a'}")
    return lines or ["- no benchmark results under this folder (run PART=bench)"]


def write_summary(out: str, part: str, steps: Steps) -> str:
    lines = [f"# gpu-check, part {part}", "", "| step | exit | seconds | log |", "|---|---|---|---|"]
    lines += [f"| {name} | {rc} | {sec:.0f} | {os.path.relpath(log, out)} |" for name, rc, sec, log in steps.rows]
    if part in ("bench", "all"):
        lines += ["", "## Targets", ""] + target_lines(out)
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_archive(out: str, part: str) -> str:
    """Every file under ``out`` packed into ``out/gpu-check-<part>.tar.gz``: one file to carry off the machine."""
    path = os.path.join(out, f"gpu-check-{part}.tar.gz")
    with tarfile.open(path + ".tmp", "w:gz") as tar:
        for folder, _, files in os.walk(out):
            for name in sorted(files):
                if not name.startswith("gpu-check-"):  # earlier archives and this one's temp file
                    full = os.path.join(folder, name)
                    tar.add(full, arcname=os.path.relpath(full, out))
    os.replace(path + ".tmp", path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for every log and result (created)")
    parser.add_argument("--part", default="all", choices=["tests", "bench", "all"], help="which part to run")
    args = parser.parse_args(argv)
    if not args.out.strip():
        print("gpu-check: OUT=DIR is required (the folder for logs and results)", file=sys.stderr)
        return 2
    problem = gpu_problem()
    if problem:
        print(f"gpu-check needs a CUDA GPU with torch and triton: {problem}; nothing was run", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    write_environment(args.out)
    parts = ["tests", "bench"] if args.part == "all" else [args.part]
    steps = Steps(args.out, PART_SECONDS * len(parts))
    for part in parts:
        (run_tests if part == "tests" else run_bench)(steps, sys.executable)
    print(f"[gpu-check] summary: {write_summary(args.out, args.part, steps)}", flush=True)
    print(f"[gpu-check] everything in one file: {write_archive(args.out, args.part)}", flush=True)
    return 0 if all(rc == 0 for _, rc, _, _ in steps.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
