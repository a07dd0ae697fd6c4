"""Load test of ``python -m supervit.serve``: the adaptive server against every static operating point, each on the
same bursty arrival trace, on this machine, over loopback.

Each run starts the server (its own local Ray), sends a few warm-up requests, replays the trace with the load
generator in its own process (``serve_load.py``: open loop, Poisson base rate with bursts at --burst-factor x),
reads the replica's /info (resident memory, counters) and stops the server. Per run: SLO attainment (answered with
200 within --slo-ms as the client measures it), p50/p99 client latency, goodput, mean expected top-1 (each answer
within the SLO weighted by its point's accuracy), rejections, the replica's resident memory. Writes
serve_<tag>.{csv,md} (summary), serve_<tag>_requests.csv (per request, adaptive and most accurate static),
serve_<tag>.png (latency and chosen point over time) under --out.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_serve.py --model super_deit_s --slo-ms 600 \\
        --base-rate 4 --out benchmarks/results/<machine>
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import harness  # noqa: E402
import serve_load  # noqa: E402

ADAPTIVE_MODES = ("adaptive", "deadline-only")  # the server's adaptive mode with and without its rate guard
SUMMARY_COLUMNS = ["model", "mode", "subnet", "repeat", "requests", "slo_ms", "slo_attainment_pct", "answered_pct",
                   "rejected_pct", "p50_ms", "p99_ms", "p99_all_ms", "goodput_rps", "mean_expected_top1",
                   "delivered_top1", "mean_batch", "batches", "switches", "rss_mb", "peak_rss_mb",
                   "switch_compute_ratio", "slowdown_p50", "slowdown_p90_over_p50", "transit_p50_ms",
                   "transit_p99_ms", "client_lag_p99_ms", "load_before", "load_after"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--results", default=None)
    p.add_argument("--tag", default=None, help="result file stem suffix (default: the model or checkpoint name)")
    p.add_argument("--slo-ms", type=float, required=True)
    p.add_argument("--transit-ms", type=float, default=None, help="passed to the server (default: its own)")
    p.add_argument("--margin", type=float, default=None, help="passed to the server (default: its own)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the replica")
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--mean", default=None)
    p.add_argument("--std", default=None)
    p.add_argument("--base-rate", type=float, required=True, help="Poisson base rate, requests/s")
    p.add_argument("--burst-factor", type=float, default=4.0)
    p.add_argument("--burst-every-s", type=float, default=9.0)
    p.add_argument("--burst-s", type=float, default=3.0)
    p.add_argument("--duration-s", type=float, default=36.0)
    p.add_argument("--max-requests", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-requests", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1, help="runs of every mode; the order rotates between repeats")
    p.add_argument("--modes", default="all", help="'all' (adaptive, adaptive without its rate guard "
                   "('deadline-only') and every static point) or a comma list of those names (adaptive and "
                   "deadline-only optionally with @MARGIN, e.g. adaptive@0.25) and SIZE:KEEP")
    p.add_argument("--extra-modes", default="", help="modes run besides --modes (e.g. adaptive@0.25)")
    p.add_argument("--switch-rounds", type=int, default=15, help="interleaved rounds of the switching-cost "
                   "measurement (0: skip it)")
    p.add_argument("--switch-batches", default="1,4", help="batch sizes of the switching-cost measurement")
    p.add_argument("--profile", default=None, help="profile file (default: <out>/serve_profiles.json)")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one for each run)")
    p.add_argument("--out", default=None, help="result folder (default: a new runs/bench/<device>-<time>)")
    return p.parse_args(argv)


# --- request bodies -------------------------------------------------------------------------------------------

def encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    body = {"image": base64.b64encode(buffer.getvalue()).decode()}
    return json.dumps(body).encode()


def request_bodies(channels: int, side: int, count: int = 64, seed: int = 0) -> list[bytes]:
    """Real held-out digits as PNG for a one-channel model, else smooth random colour images as JPEG (side x side)."""
    if channels == 1:
        from train import digits

        images, labels = digits.load_digits()
        held_out = digits.split_digits(labels)[1][:count]
        return [encode(images[i, 0].numpy(), "PNG") for i in held_out]
    import torch

    torch.manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8)  # low-frequency colour fields, upsampled: photo-like JPEG sizes
    fields = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    noisy = (fields + 0.05 * torch.randn_like(fields)).clamp(0, 1)
    pixels = (noisy * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [encode(np.ascontiguousarray(p), "JPEG") for p in pixels]


# --- one server run -------------------------------------------------------------------------------------------

class Server:
    """``python -m supervit.serve`` in a child process, up until ``stop``."""

    def __init__(self, args: list[str], log_path: str, ready_timeout_s: float = 300.0):
        self.log = open(log_path, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen([sys.executable, "-m", "supervit.serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.url, ready = None, threading.Event()

        def read():
            for line in self.proc.stdout:
                self.log.write(line)
                self.log.flush()
                found = re.search(r"at (http://\S+?)/ - Ctrl-C", line)
                if found:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(ready_timeout_s)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"the server did not start; see {log_path}")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as reply:
            return json.load(reply)

    def post(self, body: bytes) -> int:
        request = urllib.request.Request(self.url + "/", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_args(args, mode: str, profile: str) -> list[str]:
    out = [*(["--checkpoint", args.checkpoint] if args.checkpoint else []),
           *(["--model", args.model] if args.model else []), *(["--results", args.results] if args.results else []),
           "--slo-ms", str(args.slo_ms), "--threads", str(args.threads), "--batch-sizes", args.batch_sizes,
           "--port", str(args.port), "--profile", profile, "--no-progress", "--duration", "900"]
    for flag, value in (("--transit-ms", args.transit_ms), ("--margin", args.margin), ("--mean", args.mean),
                        ("--std", args.std)):
        if value is not None:
            out += [flag, str(value)]
    if is_adaptive(mode):  # "adaptive" or "deadline-only", optionally "@MARGIN"
        kind, _, margin = mode.partition("@")
        return (out + ["--mode", "adaptive"] + (["--no-rate-guard"] if kind == "deadline-only" else [])
                + (["--margin", margin] if margin else []))
    return out + ["--mode", "static", "--subnet", mode]


def is_adaptive(mode: str) -> bool:
    return mode.partition("@")[0] in ADAPTIVE_MODES


def run_once(args, mode: str, profile: str, trace_path: str, bodies_path: str, bodies: list[bytes],
             work: str) -> tuple[list[dict], dict, dict]:
    """(request records, the replica's /info after the trace, load averages) of one server run."""
    name = mode.replace(":", "_")
    try:
        server = Server(server_args(args, mode, profile), os.path.join(work, f"server_{name}.log"))
    except RuntimeError as err:  # e.g. the port was taken meanwhile: one more try
        print(f"{mode}: {err}; starting it again", flush=True)
        server = Server(server_args(args, mode, profile), os.path.join(work, f"server_{name}_retry.log"))
    try:
        for i in range(args.warmup_requests):  # warm-up, not counted: first calls, the calibration's window
            server.post(bodies[i % len(bodies)])
            time.sleep(0.05)
        log = os.path.join(work, f"requests_{name}.jsonl")
        load_before = harness.load_average()
        subprocess.run([sys.executable, os.path.join(HERE, "serve_load.py"), "--url", server.url + "/",
                        "--trace", trace_path, "--bodies", bodies_path, "--out", log],
                       check=True, timeout=args.duration_s + 120)
        load_after = harness.load_average()
        info = server.get("/info")
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"the server ({mode}) exited with code {code}; see {work}")
    with open(log) as handle:
        records = [json.loads(line) for line in handle]
    return records, info, {"load_before": load_before, "load_after": load_after}


# --- switching cost ------------------------------------------------------------------------------------------

def switch_cost(model, fast, best, batches: list[int], rounds: int, threads: int) -> list[dict]:
    """Forward time of 8 calls alternating two points (7 switches) against 8 calls on one point, per batch size.

    Candidates, timed in interleaved rounds: [best] * 8, [fast] * 8, [best, fast] * 4. Without a cost of switching,
    the alternating run takes the mean of the other two; the ratio is taken round by round (``paired_ratio``).
    """
    import torch

    from supervit import timing

    torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        x = torch.randn(batch, model.in_chans, model.img_sizes[-1], model.img_sizes[-1])

        def calls(points):
            def run():
                for size, keep in points:
                    model(x, img_size=size, keep_ratio=keep)
            return run

        with torch.inference_mode():
            stats = timing.time_interleaved({"best": calls([best] * 8), "fast": calls([fast] * 8),
                                             "alternate": calls([best, fast] * 4)}, "cpu", rounds=rounds, warmup=2,
                                            keep_times=True)
        same = [(a + b) / 2 for a, b in zip(stats["best"]["times_ms"], stats["fast"]["times_ms"])]
        ratio = timing.paired_ratio(stats["alternate"]["times_ms"], same)
        rows.append({"batch": batch, "best": str(best), "fast": str(fast),
                     "best_x8_ms": stats["best"]["median_ms"], "fast_x8_ms": stats["fast"]["median_ms"],
                     "alternate_x8_ms": stats["alternate"]["median_ms"], "alternate_over_mean_same": ratio[
                         "ratio_median"], "ci_low": ratio["ratio_ci_low"], "ci_high": ratio["ratio_ci_high"],
                     "rel_spread_alternate": stats["alternate"]["rel_spread"], "load": timing.load_average()})
    return rows


# --- summaries ------------------------------------------------------------------------------------------------

def summarize_run(records: list[dict], info: dict, slo_ms: float, duration_s: float) -> dict:
    n = len(records)
    ok = [r for r in records if r["status"] == 200]
    met = [r for r in ok if r["latency_ms"] <= slo_ms]
    rejected = [r for r in records if r["status"] == 503]
    answered_ms = np.array([r["latency_ms"] for r in ok]) if ok else np.array([np.nan])
    all_ms = np.array([r["latency_ms"] for r in records])
    accuracy = [r["expected_top1"] for r in met if r.get("expected_top1") is not None]
    batches = {r["batch_id"]: r for r in ok}
    transit = [r["latency_ms"] - r["server_ms"] for r in ok] or [np.nan]  # outside the replica: proxy, client
    return {
        "requests": n, "slo_attainment_pct": 100.0 * len(met) / n, "answered_pct": 100.0 * len(ok) / n,
        "rejected_pct": 100.0 * len(rejected) / n, "p50_ms": float(np.percentile(answered_ms, 50)),
        "p99_ms": float(np.percentile(answered_ms, 99)), "p99_all_ms": float(np.percentile(all_ms, 99)),
        "goodput_rps": len(met) / duration_s,
        "mean_expected_top1": float(np.mean(accuracy)) if accuracy else None,
        "delivered_top1": float(np.sum(accuracy)) / n if accuracy else None,
        "mean_batch": float(np.mean([b["batch_size"] for b in batches.values()])) if batches else None,
        "batches": info["counters"]["batches"], "switches": info["counters"]["switches"],
        "rss_mb": info.get("rss_mb"), "peak_rss_mb": info.get("peak_rss_mb"),
        "switch_compute_ratio": switch_compute_ratio(batches),
        **slowdown(batches, info),
        "transit_p50_ms": float(np.percentile(transit, 50)), "transit_p99_ms": float(np.percentile(transit, 99)),
        "client_lag_p99_ms": float(np.percentile([1e3 * (r["sent_s"] - r["scheduled_s"]) for r in records], 99)),
    }


def slowdown(batches: dict, info: dict) -> dict:
    """Observed / profiled time of the batches (the policy's calibration input): median, and 90th percentile over
    the median (the jitter the margin has to cover)."""
    from supervit.models import Subnet
    from supervit.serve.policy import LatencyTable

    table = LatencyTable({Subnet.parse(p["subnet"]): {int(b): ms for b, ms in p["latency_ms"].items()}
                          for p in info["points"]})
    ratios = [b["service_ms"] / table.ms(Subnet.parse(b["subnet"]), b["batch_size"]) for b in batches.values()]
    if not ratios:
        return {"slowdown_p50": None, "slowdown_p90_over_p50": None}
    p50, p90 = np.percentile(ratios, [50, 90])
    return {"slowdown_p50": float(p50), "slowdown_p90_over_p50": float(p90 / p50)}


def switch_compute_ratio(batches: dict) -> float | None:
    """Median over (point, batch size) groups of: median forward time of batches run right after a switch of
    point / median forward time of batches on the same point as the batch before (None without both kinds)."""
    ordered = [batches[k] for k in sorted(batches)]
    groups: dict = {}
    for before, batch in zip(ordered, ordered[1:]):
        if batch["batch_id"] != before["batch_id"] + 1:
            continue  # a batch in between answered nobody within the log (all its requests expired): skip
        kind = "switch" if batch["subnet"] != before["subnet"] else "same"
        groups.setdefault((batch["subnet"], batch["batch_size"]), {"switch": [], "same": []})[kind].append(
            batch["compute_ms"])
    ratios = [np.median(g["switch"]) / np.median(g["same"]) for g in groups.values() if g["switch"] and g["same"]]
    return float(np.median(ratios)) if ratios else None


def write_requests(path: str, runs: dict) -> None:
    fields = ["mode", "i", "scheduled_s", "sent_s", "status", "latency_ms", "subnet", "expected_top1", "batch_id",
              "batch_size", "queue_ms", "compute_ms", "server_ms", "predicted_ms"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for mode, records in runs.items():
            for r in records:
                writer.writerow({**{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()},
                                 "mode": mode})


def plot(path: str, runs: dict, order: list[str], accuracy: dict, args, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for start in np.arange(args.burst_every_s, args.duration_s, args.burst_every_s):
        for ax in (top, bottom):
            ax.axvspan(start, start + args.burst_s, color="0.9", zorder=0)
    colours = {"adaptive": "tab:blue", "deadline-only": "tab:purple"}
    for mode, colour in zip([m for m in order if m not in colours], ["tab:orange", "tab:green", "tab:red"]):
        colours[mode] = colour
    for mode in order:
        records = runs[mode]
        ok = [r for r in records if r["status"] == 200]
        bad = [r for r in records if r["status"] != 200]
        label = mode if is_adaptive(mode) else f"static {mode}"
        top.scatter([r["sent_s"] for r in ok], [r["latency_ms"] for r in ok], s=6, color=colours[mode],
                    label=f"{label} (200)")
        top.scatter([r["sent_s"] for r in bad], [r["latency_ms"] for r in bad], s=14, marker="x",
                    color=colours[mode], label=f"{label} (503)")
    top.axhline(args.slo_ms, color="k", linestyle="--", linewidth=1, label=f"SLO {args.slo_ms:g} ms")
    top.set_ylabel("client latency (ms)")
    top.set_yscale("log")
    top.legend(fontsize=7, ncol=3, loc="upper left")
    top.set_title(title, fontsize=9)
    points = sorted(accuracy, key=lambda s: accuracy[s])
    index = {s: i for i, s in enumerate(points)}
    for mode, offset in (("adaptive", 0.15), ("deadline-only", -0.15)):
        ok = [r for r in runs.get(mode, []) if r["status"] == 200]
        bottom.scatter([r["sent_s"] for r in ok], [index[r["subnet"]] + offset for r in ok], s=6,
                       color=colours[mode], label=mode)
    bottom.legend(fontsize=7, loc="lower left")
    bottom.set_yticks(range(len(points)), [f"{s} ({accuracy[s]:.1f}%)" for s in points], fontsize=7)
    bottom.set_ylabel("point used")
    bottom.set_xlabel("time (s); grey: bursts at %gx the base rate" % args.burst_factor)
    fig.tight_layout()
    harness.save_png(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checkpoint is None and args.model is None:
        raise SystemExit("give --checkpoint CKPT or --model NAME")
    from supervit import deploy, models

    source = deploy.load_source(checkpoint=args.checkpoint, model_name=args.model, results=args.results)
    table = deploy.require_table(source, "the benchmark (expected accuracy)")
    accuracy = {str(models.Subnet(r["img_size"], r["keep_ratio"])): r["acc1"] for r in table["rows"]}
    points = [str(s) for s in models.model_subnets(source.model)]
    channels, side = int(source.model.in_chans), int(source.model.img_sizes[-1])
    out = harness.run_folder("cpu", args.out)
    tag = args.tag or (args.model or os.path.splitext(os.path.basename(args.checkpoint))[0]).replace(".", "_")
    if args.switch_rounds > 0:
        subnets = models.model_subnets(source.model)
        best = max(subnets, key=lambda s: accuracy[str(s)])
        fast = min(subnets, key=lambda s: models.flops(source.model, *s))
        sizes = [int(b) for b in args.switch_batches.split(",")]
        rows = switch_cost(source.model, fast, best, sizes, args.switch_rounds, args.threads)
        harness.write_rows(rows, out, f"serve_{tag}_switch_cost")
        print("switching cost: " + "; ".join(f"batch {r['batch']}: alternating / same = "
                                             f"{r['alternate_over_mean_same']:.3f} [{r['ci_low']:.3f}, "
                                             f"{r['ci_high']:.3f}]" for r in rows), flush=True)
    del source
    modes = [*ADAPTIVE_MODES, *points] if args.modes == "all" else [m.strip() for m in args.modes.split(",")]
    modes += [m.strip() for m in args.extra_modes.split(",") if m.strip()]
    os.makedirs(out, exist_ok=True)
    profile = args.profile or os.path.join(out, "serve_profiles.json")
    work = tempfile.mkdtemp(prefix=f"bench_serve_{tag}_")
    arrivals = serve_load.make_trace(args.seed, args.duration_s, args.base_rate, args.burst_factor,
                                     args.burst_every_s, args.burst_s, args.max_requests)
    trace_path, bodies_path = os.path.join(work, "trace.json"), os.path.join(work, "bodies.jsonl")
    with open(trace_path, "w") as handle:
        json.dump({"arrivals": arrivals}, handle)
    bodies = request_bodies(channels, side)
    with open(bodies_path, "wb") as handle:
        handle.write(b"\n".join(bodies) + b"\n")
    print(f"trace: {len(arrivals)} requests over {args.duration_s:g} s (base {args.base_rate:g}/s, bursts "
          f"{args.burst_factor:g}x for {args.burst_s:g} s every {args.burst_every_s:g} s); work folder {work}",
          flush=True)
    rows, runs = [], {}
    for repeat in range(args.repeats):
        shift = repeat % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            records, info, loads = run_once(args, mode, profile, trace_path, bodies_path, bodies, work)
            row = {"model": tag, "mode": mode if is_adaptive(mode) else "static",
                   "subnet": "" if is_adaptive(mode) else mode, "repeat": repeat, "slo_ms": args.slo_ms,
                   **summarize_run(records, info, args.slo_ms, args.duration_s), **loads}
            rows.append(row)
            runs.setdefault(mode, records)
            harness.write_rows(rows, out, f"serve_{tag}", SUMMARY_COLUMNS)  # a crash keeps the finished runs
            print(f"{mode:>9}: SLO met {row['slo_attainment_pct']:5.1f} %, p50 {row['p50_ms']:7.1f} ms, p99 "
                  f"{row['p99_ms']:7.1f} ms, expected top-1 {row['mean_expected_top1'] or float('nan'):.2f}, "
                  f"503 {row['rejected_pct']:.1f} %, RSS {row['rss_mb']:.0f} MiB, load {loads['load_before']}",
                  flush=True)
    harness.write_rows(rows, out, f"serve_{tag}", SUMMARY_COLUMNS)
    best = max((m for m in modes if not is_adaptive(m)), key=lambda m: accuracy[m], default=None)
    shown = [m for m in (*ADAPTIVE_MODES, best) if m in runs]
    write_requests(os.path.join(out, f"serve_{tag}_requests.csv"), {m: runs[m] for m in shown})
    cond = harness.conditions("cpu", batch=None, mode="eager")
    title = (f"{tag}: SLO {args.slo_ms:g} ms, {len(arrivals)} requests, {args.threads} thread(s); "
             f"{cond['device']}, load {rows[0]['load_before']}..{rows[-1]['load_after']}")
    if "adaptive" in runs:
        plot(os.path.join(out, f"serve_{tag}.png"), runs, shown, accuracy, args, title)
    with open(os.path.join(out, f"serve_{tag}.md"), "a") as handle:
        handle.write(f"\nMachine: {cond['device']} ({cond['machine']}), torch {cond['torch']}, replica threads "
                     f"{args.threads}; load average (1 min) before/after each run in the table.\n"
                     f"Trace: {len(arrivals)} requests, seed {args.seed}, base {args.base_rate:g}/s, bursts "
                     f"{args.burst_factor:g}x for {args.burst_s:g} s every {args.burst_every_s:g} s, "
                     f"{args.duration_s:g} s.\nCommand: {cond['command']}\n")
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
