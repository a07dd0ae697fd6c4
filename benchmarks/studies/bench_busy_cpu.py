"""The extension's pruning step on an idle and on a busy CPU (another process holding one core).

The benchmark starts its own competitor, a busy-loop process bounded by a deadline, and pauses (SIGSTOP) and
resumes (SIGCONT) it so that idle and busy rounds alternate in one run; the competitor is killed at the end
whatever happens. Candidates at B=64, N=197, C=384, keep 0.7, fp32, 2 intra-op threads by default:

* ext fwd+bwd / reference fwd+bwd: ``prune_tokens`` and the gradient w.r.t. x (SUPERVIT_BACKEND forces one);
* ext fwd / reference fwd: ``prune_tokens`` alone, no grad.

Targets: every ext candidate busy/idle <= 2, and ext faster than the reference under the same load.

    python benchmarks/studies/bench_busy_cpu.py [--threads 2] [--rounds 15] [--out DIR]

Results: <out>/busy_cpu.{csv,md} and busy_cpu.png (default out: a new folder under runs/bench/).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: harness
import harness  # noqa: E402
from supervit import kernels  # noqa: E402

CPU = torch.device("cpu")
CALLS_PER_SAMPLE = 5  # calls timed together as one sample


def start_competitor(seconds: float) -> subprocess.Popen:
    """A process that spins one core until ``seconds`` have passed (or it is killed), started paused."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    proc.send_signal(signal.SIGSTOP)
    return proc


def candidates(batch=64, tokens=197, channels=384, keep=0.7):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, channels, generator=gen, requires_grad=True)
    score = torch.rand(batch, tokens - 1, generator=gen)
    grad = torch.randn(batch, kernels.keep_count(tokens, keep) + 1, channels, generator=gen)

    def step():
        kept, _ = kernels.prune_tokens(x, score, keep)
        torch.autograd.grad(kept, x, grad)

    def forward():
        with torch.no_grad():
            kernels.prune_tokens(x, score, keep)

    out = {}
    for backend in ("ext", "reference"):
        for kind, fn in (("fwd+bwd", step), ("fwd", forward)):
            def run(fn=fn, backend=backend):
                with harness.forced_backend(backend):
                    for _ in range(CALLS_PER_SAMPLE):
                        fn()
            out[(backend, kind)] = run
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / CALLS_PER_SAMPLE


def measure(rounds: int, warmup: int = 2) -> tuple[dict, list[float]]:
    """{(backend, kind, load): [seconds per call]} over ``rounds`` alternating idle/busy rounds, and the load
    averages read during the run."""
    cands = candidates()
    for fn in cands.values():
        for _ in range(warmup):
            fn()
    times = {(b, k, load): [] for (b, k) in cands for load in ("idle", "busy")}
    loads = []
    competitor = start_competitor(seconds=60 + 10 * rounds)
    try:
        from tqdm import tqdm

        for r in tqdm(range(rounds), desc="idle/busy rounds", unit="round"):
            order = list(cands.items())
            order = order[r % len(order):] + order[:r % len(order)]
            for load in ("idle", "busy") if r % 2 == 0 else ("busy", "idle"):
                competitor.send_signal(signal.SIGCONT if load == "busy" else signal.SIGSTOP)
                time.sleep(0.2)  # let the scheduler settle
                for (backend, kind), fn in order:
                    times[(backend, kind, load)].append(timed(fn))
            loads.append(harness.load_average())
    finally:
        competitor.kill()
        competitor.wait()
    return times, loads


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['backend']} {r['kind']}" for r in rows]
    width = 0.38
    ax.bar([i - width / 2 for i in range(len(rows))], [r["idle_ms"] for r in rows], width, label="idle")
    ax.bar([i + width / 2 for i in range(len(rows))], [r["busy_ms"] for r in rows], width, label="busy (1 core held)")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (median)")
    ax.set_title("prune step B=64 N=197 C=384 keep 0.7, CPU")
    ax.legend(fontsize=8)
    harness.save_png(fig, path)


def main(argv=None) -> int:
    parser = harness.cpu_bench_parser(__doc__, 15, "alternating idle/busy rounds")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 2:
        parser.error("--threads must be >= 1 and --rounds >= 2")
    torch.set_num_threads(args.threads)
    load_before = harness.load_average()
    times, loads = measure(args.rounds)
    cond = harness.conditions(CPU, dtype=torch.float32, batch=64, mode="busy/idle", load_before=load_before,
                              load_after=harness.load_average())
    rows = []
    for backend, kind in dict.fromkeys((b, k) for b, k, _ in times):
        idle, busy = (harness.summarize(times[(backend, kind, load)]) for load in ("idle", "busy"))
        rows.append({**cond, "backend": backend, "kind": kind, "idle_ms": idle["median_ms"],
                     "busy_ms": busy["median_ms"], "busy_over_idle": busy["median_ms"] / idle["median_ms"],
                     "idle_min_ms": idle["min_ms"], "busy_max_ms": busy["max_ms"],
                     "idle_rel_spread": idle["rel_spread"], "busy_rel_spread": busy["rel_spread"],
                     "noisy": idle["noisy"] or busy["noisy"],
                     "load_max_during": max(x for x in loads if x is not None) if any(loads) else None})
    for row in rows:
        ref = next(r for r in rows if r["backend"] == "reference" and r["kind"] == row["kind"])
        row["reference_over_this_busy"] = ref["busy_ms"] / row["busy_ms"]
    out = harness.run_folder(CPU, args.out)
    columns = ["backend", "kind", "idle_ms", "busy_ms", "busy_over_idle", "reference_over_this_busy", "idle_min_ms",
               "busy_max_ms", "idle_rel_spread", "busy_rel_spread", "noisy", "threads", "load_before", "load_after", "load_max_during", "device", "torch", "command"]
    csv_path, md_path = harness.write_rows(rows, out, "busy_cpu", columns)
    plot(rows, os.path.join(out, "busy_cpu.png"))
    for r in rows:
        print(f"{r['backend']:9s} {r['kind']:7s} idle {r['idle_ms']:7.2f} ms  busy {r['busy_ms']:7.2f} ms  "
              f"busy/idle {r['busy_over_idle']:.2f}  reference/this (busy) {r['reference_over_this_busy']:.2f}")
    print(f"load average before {load_before}, during max {rows[0]['load_max_during']}; wrote {csv_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
