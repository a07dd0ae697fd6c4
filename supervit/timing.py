"""The one timing implementation of the project: the latency profiles and every benchmark measure with it.

Method: each candidate is warmed up, then timed once per round, the order rotating from round to round, so that
drift and load from other processes hit all candidates alike and their ratios stay fair. The device is
synchronized before every clock read (CUDA work is asynchronous). Each candidate reports its median, min/max,
quartiles and relative spread (IQR / median); a result whose spread exceeds ``NOISY_SPREAD`` is flagged
``noisy`` so that readers re-measure before trusting it. ``conditions()`` records what a result was measured
under (machine, device, versions, threads, dtype, batch, backend, mode, load average, command line).
"""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

NOISY_SPREAD = 0.10  # IQR / median above which a timing is flagged noisy


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | str) -> str:
    """A folder-friendly name of the device: the GPU model, or the CPU model with its core count."""
    device = torch.device(device)
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


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def conditions(device: torch.device | str, *, dtype=None, batch: int | None = None, backend: str | None = None,
               mode: str | None = None, load_before: float | None = None,
               load_after: float | None = None) -> dict:
    """What a result was measured under (JSON-able). Arguments left as None are recorded as None."""
    device = torch.device(device)
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
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "batch": batch,
        "backend": backend,
        "mode": mode,
        "load_before": load_before,
        "load_after": load_after,
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
    }


def summarize(seconds: list[float], noisy_spread: float = NOISY_SPREAD) -> dict:
    """Median, min, max, quartiles (ms), relative spread (IQR / median) and the ``noisy`` flag of one candidate."""
    if not seconds:
        raise ValueError("summarize needs at least one timing")
    ms = sorted(1e3 * s for s in seconds)
    median = statistics.median(ms)
    q1, q3 = (statistics.quantiles(ms, n=4, method="inclusive")[::2] if len(ms) > 1 else (ms[0], ms[0]))
    spread = (q3 - q1) / median if median > 0 else 0.0
    return {"median_ms": median, "min_ms": ms[0], "max_ms": ms[-1], "q1_ms": q1, "q3_ms": q3,
            "iqr_ms": q3 - q1, "rel_spread": spread, "rounds": len(ms), "noisy": spread > noisy_spread}


def time_interleaved(candidates: dict[object, Callable[[], object]], device: torch.device | str, rounds: int = 5,
                     warmup: int = 2, min_seconds: float = 0.0, noisy_spread: float = NOISY_SPREAD,
                     progress: bool = False, clock: Callable[[], float] = time.perf_counter,
                     keep_times: bool = False) -> dict:
    """``{name: summarize(...)}`` of each ``candidates[name]()`` timed in interleaved rounds.

    Args:
        candidates: name -> callable taking no argument (its result is ignored).
        device: where the work runs; synchronized before every clock read.
        rounds: timed rounds (each candidate once per round, the order rotating).
        warmup: untimed calls of each candidate first (compilation, caches, allocator).
        min_seconds: keep adding rounds until this much time has passed.
        noisy_spread: IQR / median above which a result is flagged ``noisy``.
        progress: show a tqdm bar over the rounds.
        clock: read before and after each call (seconds); ``time.thread_time`` measures the calling thread's CPU
            time, the host work alone, unaffected by other processes.
        keep_times: also return each candidate's timings, round by round, as ``times_ms`` (for ``paired_ratio``).
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds!r}, warmup={warmup!r}")
    if not candidates:
        raise ValueError("candidates must name at least one callable")
    device = torch.device(device)
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    sync(device)
    times = {name: [] for name in names}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=rounds, desc="timing", unit="round", leave=False, dynamic_ncols=True)
    start_all = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - start_all < min_seconds:
        shift = done % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = clock()
            candidates[name]()
            sync(device)
            times[name].append(clock() - start)
        done += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    results = {name: summarize(t, noisy_spread) for name, t in times.items()}
    if keep_times:
        for name, t in times.items():
            results[name]["times_ms"] = [1e3 * x for x in t]
    return results


def paired_ratio(times_a: list[float], times_b: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Median of the round-by-round ratios a/b of two interleaved candidates and its bootstrap 95% interval.

    Both candidates ran in the same rounds, next to each other, so a slow spell of the machine scales both sides of
    one ratio; the interval says how well the median ratio is known (it straddles 1 when the two are not told apart).
    """
    if len(times_a) != len(times_b) or not times_a:
        raise ValueError(f"paired_ratio needs two equally long, non-empty timing lists, got {len(times_a)} and "
                         f"{len(times_b)}")
    ratios = np.asarray(times_a, dtype=np.float64) / np.asarray(times_b, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
    medians = np.median(ratios[picks], axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return {"ratio_median": float(np.median(ratios)), "ratio_ci_low": float(low), "ratio_ci_high": float(high)}


def measure(candidates: dict, device: torch.device | str, *, dtype=None, batch: int | None = None,
            backend: str | None = None, mode: str | None = None, **timing_kwargs) -> tuple[dict, dict]:
    """(``time_interleaved`` results, ``conditions`` with the load average read before and after the timing)."""
    before = load_average()
    results = time_interleaved(candidates, device, **timing_kwargs)
    return results, conditions(device, dtype=dtype, batch=batch, backend=backend, mode=mode, load_before=before,
                               load_after=load_average())
