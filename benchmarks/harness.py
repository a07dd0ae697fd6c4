"""Timing and result-writing helpers shared by the benchmarks.

Methodology (as timm's benchmark.py / gpt-fast): warm-up calls, synchronize before reading the clock, several
timed repeats, median and spread (min..max) reported; every row carries the conditions it was measured under.
Speed claims are ratios of rows measured in one run on one machine.
"""
from __future__ import annotations

import contextlib
import csv
import os
import platform
import shlex
import statistics
import sys
import time

import torch


def device_name(device: torch.device) -> str:
    """A folder-friendly name of the device: the GPU model, or the CPU model with its core count."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1] for line in f if line.startswith("model name")).strip()
        except (OSError, StopIteration):
            pass
        name = f"cpu-{os.cpu_count()}c-{name}"
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name).strip("-").lower()[:60]


def conditions(device: torch.device) -> dict:
    """What a result row was measured under."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "machine": platform.node(),
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "threads": torch.get_num_threads(),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
    }


@contextlib.contextmanager
def forced_backend(name: str | None):
    """SUPERVIT_BACKEND=name inside the block (None or 'auto': the dispatcher's own choice)."""
    old = os.environ.pop("SUPERVIT_BACKEND", None)
    if name and name != "auto":
        os.environ["SUPERVIT_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("SUPERVIT_BACKEND", None)
        if old is not None:
            os.environ["SUPERVIT_BACKEND"] = old


def cls_row_score(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The baseline our attention+score is measured against: the CLS row computed apart from the attention,
    head-mean softmax(q0 k^T * scale) at the patch keys, [B, N-1] from q, k [B, H, N, D]."""
    return torch.softmax((q[:, :, :1] @ k.transpose(-2, -1)) * scale, dim=-1)[:, :, 0, 1:].mean(dim=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(candidates: dict, device: torch.device, rounds: int = 5, warmup: int = 2,
                     min_seconds: float = 0.0) -> dict:
    """{name: {median_ms, min_ms, max_ms, rounds}} of each ``candidates[name]()``.

    Every candidate is warmed up, then each round times every candidate once, the order rotating from round to
    round, so that drift and load from other processes hit all of them alike and their ratios stay fair. Rounds
    continue until ``rounds`` are done and ``min_seconds`` have passed. The device is synchronized around each
    timed call.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    sync(device)
    times = {name: [] for name in names}
    start_all = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - start_all < min_seconds:
        shift = done % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            candidates[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
        done += 1
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "max_ms": 1e3 * max(t),
                   "rounds": done} for name, t in times.items()}


def write_rows(rows: list[dict], folder: str, stem: str, columns: list[str] | None = None) -> tuple[str, str]:
    """Write ``rows`` as ``folder/stem.csv`` and a markdown table ``folder/stem.md``; returns both paths."""
    os.makedirs(folder, exist_ok=True)
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = os.path.join(folder, stem + ".csv"), os.path.join(folder, stem + ".md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(md_path, "w") as f:
        f.write(markdown_table(rows, columns))
    return csv_path, md_path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
