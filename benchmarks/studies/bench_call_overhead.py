"""Host-side cost of one op call, and batch-1 eager latency of every super_deit_s sub-network vs plain PyTorch.

Sections (candidates interleaved round by round in one run; median and spread; the load average is recorded):

* calls: one call of each op on tiny inputs (B=1, the 8x8 grid: N=65, C=384, H=6, D=64), no grad. Candidates:
  the public function (argument checks + dispatch + backend), the registered ``torch.ops.supervit`` op (the
  custom-op layer, as compiled graphs and autograd call it), and the backend function alone, timed in CPU time of
  the calling thread (host work, unaffected by other processes; use --threads 1). Overhead per call = public -
  backend.
* subnets: ``model(x, img_size, keep_ratio)`` vs a plain implementation of the same sub-network (explicit softmax
  attention, argsort, index gather: tests/models/naive_forward.py) on the same weights, batch 1, fp32, eval,
  no grad, for all 12 sub-networks. Target: ours <= plain at every sub-network. The ratio is the median of the
  round-by-round ratios (the two ran next to each other in every round) with its bootstrap 95% interval. With
  --threads 1 the clock is the calling thread's CPU time (the whole forward runs on it), so time the process spends
  descheduled is left out.

    python benchmarks/studies/bench_call_overhead.py [--threads 2] [--rounds 40] [--out DIR]

Results: <out>/call_overhead_t<threads>.{csv,md} and .png (default out: a new folder under runs/bench/).
"""
from __future__ import annotations

import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "benchmarks"), os.path.join(ROOT, "tests", "models")]  # harness, naive_forward
import harness  # noqa: E402
from naive_forward import naive_forward  # noqa: E402

from supervit import kernels  # noqa: E402
from supervit.kernels import dispatch  # noqa: E402
from supervit.kernels.contract import OPS, keep_count  # noqa: E402

CPU = torch.device("cpu")


def call_candidates(tokens: int = 65, channels: int = 384, heads: int = 6):
    """{op: {candidate: callable}} for one call of each op at batch 1."""
    dim = channels // heads
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, tokens, 3, heads, dim, generator=gen).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D] views
    q, k, v = qkv.unbind(0)
    x, score = torch.randn(1, tokens, channels, generator=gen), torch.rand(1, tokens - 1, generator=gen)
    kept = keep_count(tokens, 0.5)
    ops = torch.ops.supervit
    cases = {
        "attention": (lambda: kernels.attention(q, k, v, dim ** -0.5, True), ops.attention.default,
                      "attention_forward", (q, k, v, dim ** -0.5, True)),
        "prune_tokens": (lambda: kernels.prune_tokens(x, score, 0.5), ops.prune_tokens.default,
                         "prune_tokens_forward", (x, score, kept)),
    }
    out = {}
    for name, (public, registered, backend_fn, args) in cases.items():
        backend = dispatch.backend_for(backend_fn, OPS[backend_fn].case(*args))
        fn = getattr(backend, backend_fn)
        out[name] = ({"public": public, "registered op": lambda r=registered, a=args: r(*a),
                      "backend": lambda f=fn, a=args: f(*a)}, backend.NAME)
    return out


CALLS_PER_SAMPLE = 50


def measure_calls(rounds: int) -> list[dict]:
    """Thread CPU time per call of each op's candidates (interleaved rounds of CALLS_PER_SAMPLE calls each)."""
    rows = []
    for op, (candidates, backend) in call_candidates().items():
        repeated = {name: (lambda fn=fn: [fn() for _ in range(CALLS_PER_SAMPLE)]) for name, fn in candidates.items()}
        # host work only: the thread's CPU time, not the time it spends descheduled (run with --threads 1)
        samples, cond = harness.measure(repeated, CPU, dtype=torch.float32, batch=1, backend=backend,
                                        mode="eval, thread CPU time", rounds=rounds, warmup=1, clock=time.thread_time)
        stats = {name: per_call(s) for name, s in samples.items()}
        base = stats["backend"]["median_ms"]
        for name, s in stats.items():
            rows.append({**cond, "section": "calls", "case": op, "impl": name, "us_per_call": 1e3 * s["median_ms"],
                         "overhead_us": 1e3 * (s["median_ms"] - base), **s})
    return rows


def per_call(stats: dict) -> dict:
    """``stats`` of CALLS_PER_SAMPLE calls scaled to one call (every *_ms figure; spreads are ratios already)."""
    return {k: v / CALLS_PER_SAMPLE if k.endswith("_ms") else v for k, v in stats.items()}


def measure_subnets(rounds: int) -> list[dict]:
    import timm
    from tqdm import tqdm

    model = timm.create_model("super_deit_s").eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = []
    for img_size, ratio in tqdm(model.subnets(), desc="sub-networks", unit="subnet"):
        candidates = {"ours": lambda s=img_size, r=ratio: model(image, img_size=s, keep_ratio=r),
                      "plain": lambda s=img_size, r=ratio: naive_forward(model, image, s, r)}
        one_thread = torch.get_num_threads() == 1
        stats, cond = harness.measure(candidates, CPU, dtype=torch.float32, batch=1, backend="auto",
                                      mode="eval, thread CPU time" if one_thread else "eval", rounds=rounds,
                                      warmup=3, clock=time.thread_time if one_thread else time.perf_counter,
                                      keep_times=True)
        paired = harness.paired_ratio(stats["ours"].pop("times_ms"), stats["plain"].pop("times_ms"))
        ratio_min = stats["ours"]["min_ms"] / stats["plain"]["min_ms"]
        for name, s in stats.items():
            rows.append({"section": "subnets", "case": f"({img_size}, {ratio})", "impl": name,
                         "ours_over_plain_median": paired["ratio_median"],
                         "ours_over_plain_ci_low": paired["ratio_ci_low"],
                         "ours_over_plain_ci_high": paired["ratio_ci_high"],
                         "ours_over_plain_min": ratio_min, **s, **cond})
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subnet_rows = [r for r in rows if r["section"] == "subnets" and r["impl"] == "ours"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [r["case"] for r in subnet_rows]
    medians = [r["ours_over_plain_median"] for r in subnet_rows]
    errors = [[m - r["ours_over_plain_ci_low"] for m, r in zip(medians, subnet_rows)],
              [r["ours_over_plain_ci_high"] - m for m, r in zip(medians, subnet_rows)]]
    ax.bar(range(len(labels)), medians, yerr=errors, capsize=2, color="tab:blue",
           label="median of paired rounds (95% interval)")
    ax.plot(range(len(labels)), [r["ours_over_plain_min"] for r in subnet_rows], "k.", label="best round")
    ax.axhline(1.0, color="tab:red", lw=1, label="plain PyTorch")
    low = min(min(r["ours_over_plain_ci_low"], r["ours_over_plain_min"]) for r in subnet_rows)
    ax.set_ylim(min(0.9, low - 0.02), None)  # the ratios sit near 1: show the neighbourhood, not the full bar
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("latency ours / plain")
    ax.set_title("super_deit_s, batch 1, CPU eager: ours vs plain PyTorch")
    ax.legend(fontsize=8)
    harness.save_png(fig, path)


def main(argv=None) -> int:
    parser = harness.cpu_bench_parser(__doc__, 40, "timed rounds per candidate")
    parser.add_argument("--sections", default="calls,subnets", help="comma list of: calls, subnets")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if args.threads < 1 or not sections <= {"calls", "subnets"}:
        parser.error("--threads must be >= 1 and --sections a comma list of: calls, subnets")
    torch.set_num_threads(args.threads)
    out = harness.run_folder(CPU, args.out)
    rows = []
    with torch.no_grad():
        if "calls" in sections:
            rows += measure_calls(args.rounds)
        if "subnets" in sections:
            rows += measure_subnets(args.rounds)
    columns = ["section", "case", "impl", "us_per_call", "overhead_us", "ours_over_plain_median",
               "ours_over_plain_ci_low", "ours_over_plain_ci_high", "ours_over_plain_min", "median_ms", "min_ms",
               "max_ms", "rel_spread", "rounds", "noisy", "threads", "backend", "load_before", "load_after", "device",
               "torch", "command"]
    stem = f"call_overhead_t{args.threads}"
    csv_path, md_path = harness.write_rows(rows, out, stem, columns)
    if "subnets" in sections:
        plot(rows, os.path.join(out, stem + ".png"))
    for r in rows:
        value = (f"{r['us_per_call']:.1f} us/call (+{r['overhead_us']:.1f})" if r["section"] == "calls"
                 else f"{r['median_ms']:.2f} ms, ours/plain {r['ours_over_plain_median']:.3f} "
                      f"[{r['ours_over_plain_ci_low']:.3f}, {r['ours_over_plain_ci_high']:.3f}]")
        print(f"{r['section']:8s} {r['case']:14s} {r['impl']:14s} {value}")
    note = harness.noisy_note(rows)
    if note:
        print(note)
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
