"""Triton kernel benchmarks against their targets (GPU only).

Rows (median and 20/80 % quantiles from ``triton.testing.do_bench``, milliseconds):

* attention with CLS score, fwd+bwd, vs ``F.scaled_dot_product_attention`` WITHOUT score, and the forward alone;
  B=256, H=6, D=64 at N=197 (target: fwd+bwd <= 1.1x, fwd <= 1.05x) plus the pruned lengths. q, k, v are views
  of one fused qkv tensor, as the models pass them. The SDPA baseline is its flash backend for bf16/fp16; flash
  has no fp32 kernel, so fp32 rows are measured against the memory-efficient backend (the row's impl says so);
* the pruning step (top-k of the score + gather, forward, and the gather backward) at B=256, N=197, C=384 vs the
  reference ops (target: >= 5x faster), both at the backend level and through the public autograd ops.

Each case is timed twice: ``do_bench`` (host launch overhead included, as eager PyTorch runs) and
``do_bench_cudagraph`` (device time only). Results go to benchmarks/results/<device>/bench_triton.{csv,md}.

    python benchmarks/bench_triton.py                      # bf16, B=256
    python benchmarks/bench_triton.py --dtype fp16 --batch 64 --out runs/bench/triton
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

import harness

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTILES = [0.5, 0.2, 0.8]


forced_backend = harness.forced_backend


def bench(fn) -> dict:
    """do_bench (with host overhead) and do_bench_cudagraph (device only) of ``fn``, in ms."""
    import triton.testing as tt

    fn()  # compile / autotune outside the timed region and outside graph capture
    torch.cuda.synchronize()
    med, lo, hi = tt.do_bench(fn, warmup=50, rep=300, quantiles=QUANTILES)
    row = {"median_ms": med, "p20_ms": lo, "p80_ms": hi}
    try:
        row["graph_median_ms"] = tt.do_bench_cudagraph(fn, rep=300, quantiles=QUANTILES)[0]
    except Exception as err:  # noqa: BLE001 - graph capture is a bonus column
        row["graph_median_ms"] = float("nan")
        print(f"  (cuda graph timing unavailable: {type(err).__name__}: {err})")
    return row


def sdpa_baseline(dtype: torch.dtype):
    """(SDPBackend, impl label) of the attention baseline for ``dtype``: flash for bf16/fp16; flash has no fp32
    kernel, so fp32 uses the memory-efficient backend."""
    from torch.nn.attention import SDPBackend

    if dtype == torch.float32:
        return SDPBackend.EFFICIENT_ATTENTION, "sdpa-efficient (no score; flash has no fp32 kernel)"
    return SDPBackend.FLASH_ATTENTION, "sdpa-flash (no score)"


def qkv_views(batch, heads, tokens, dim, dtype, gen):
    """q, k, v [B, H, N, D] as views of one [B, N, 3, H, D] tensor, as the models' fused qkv projection yields them."""
    qkv = torch.randn(batch, tokens, 3, heads, dim, device="cuda", generator=gen).to(dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def attention_cases(batch, heads, tokens, dim, dtype):
    """(case, impl, fn, target) rows: the SDPA baseline and the Triton kernels, forward and fwd+bwd."""
    from torch.nn.attention import sdpa_kernel

    import supervit.kernels as K
    from supervit.kernels import triton_backend as tb

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = qkv_views(batch, heads, tokens, dim, dtype, gen)
    go = torch.randn(batch, tokens, heads, dim, device="cuda", generator=gen).to(dtype).transpose(1, 2)
    gs = torch.randn(batch, tokens - 1, device="cuda", generator=gen)
    qg, kg, vg = (t.detach().requires_grad_() for t in qkv_views(batch, heads, tokens, dim, dtype, gen))
    scale = dim ** -0.5
    backend, baseline = sdpa_baseline(dtype)

    def sdpa_fwd():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    def sdpa_fwd_bwd():
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(qg, kg, vg)
        return torch.autograd.grad(out, (qg, kg, vg), go)

    def triton_fwd():
        return tb.attention_forward(q, k, v, scale, True)

    def triton_fwd_noscore():
        return tb.attention_forward(q, k, v, scale, False)

    def triton_fwd_bwd():
        out, score, lse = tb.attention_forward(q, k, v, scale, True)
        return tb.attention_backward(go, gs, q, k, v, out, lse, scale, True)

    def op_fwd_bwd():
        with forced_backend("triton"):
            out, score = K.attention(qg, kg, vg, return_cls_score=True)
            return torch.autograd.grad((out, score), (qg, kg, vg), (go, gs))

    return [("fwd", baseline, sdpa_fwd, None),
            ("fwd", "triton kernels, score", triton_fwd, 1.05),
            ("fwd", "triton kernels, no score", triton_fwd_noscore, None),
            ("fwd+bwd", baseline, sdpa_fwd_bwd, None),
            ("fwd+bwd", "triton kernels, score", triton_fwd_bwd, 1.10),
            ("fwd+bwd", "supervit.kernels.attention op (triton), score", op_fwd_bwd, None)]


def pruning_cases(batch, tokens, channels, keep_ratio, dtype):
    """(name, fn) pairs: the reference ops vs the Triton kernels for top-k + gather fwd and gather bwd."""
    import supervit.kernels as K
    from supervit.kernels import reference
    from supervit.kernels import triton_backend as tb

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, tokens, channels, device="cuda", generator=gen).to(dtype)
    score = torch.rand(batch, tokens - 1, device="cuda", generator=gen)
    num = reference.keep_count(tokens, keep_ratio)
    grad = torch.randn(batch, num + 1, channels, device="cuda", generator=gen).to(dtype)
    xg = x.detach().clone().requires_grad_()

    def ref_backend():
        _, idx = reference.prune_tokens_forward(x, score, num)
        return reference.gather_tokens_backward(grad, idx, tokens)

    def triton_backend():
        _, idx = tb.prune_tokens_forward(x, score, num)
        return tb.gather_tokens_backward(grad, idx, tokens)

    def ref_autograd():
        kept, _ = reference.prune_tokens(xg, score, keep_ratio)
        return torch.autograd.grad(kept, xg, grad)

    def op_autograd():
        with forced_backend("triton"):
            kept, _ = K.prune_tokens(xg, score, keep_ratio)
            return torch.autograd.grad(kept, xg, grad)

    return [("backend fwd+bwd", "reference", ref_backend, None),
            ("backend fwd+bwd", "triton", triton_backend, 5.0),
            ("autograd fwd+bwd", "reference composite", ref_autograd, None),
            ("autograd fwd+bwd", "supervit.kernels.prune_tokens op (triton)", op_autograd, 5.0)]


def plot(rows: list[dict], path: str) -> None:
    """One bar per (shape, case, impl) row that has a baseline: its time / the baseline's time (1 = as fast)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rated = [r for r in rows if r["time_vs_baseline"] != ""]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rated)), 4.5))
    ax.bar(range(len(rated)), [r["time_vs_baseline"] for r in rated],
           color=["C0" if r["group"] == "attention" else "C1" for r in rated])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rated)), [f"{r['shape']} {r['case']}\n{r['impl']}" for r in rated], rotation=80,
                  fontsize=6)
    ax.set_ylabel("time / baseline time (lower is faster)")
    ax.set_title(f"Triton kernels vs SDPA (attention, blue) and the reference ops (pruning, orange), "
                 f"{rows[0]['dtype']} batch {rows[0]['batch']}", fontsize=9)
    harness.save_png(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default: bf16)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default: 256)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 139, 100, 51],
                        help="attention sequence lengths (the first is the target row)")
    parser.add_argument("--out", default=None, help="result folder (default: a new runs/bench/<device>-<time>; "
                        "benchmarks/results/<device> updates the committed results)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured.",
              file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    cond = harness.conditions(device)
    cond.update(dtype=args.dtype, batch=args.batch, date=datetime.datetime.now().isoformat(timespec="seconds"),
                load_before=harness.load_average())
    rows = []

    def run(group, shape, cases):
        base = {}
        for case, impl, fn, target in cases:
            timing = bench(fn)
            ratio = ""
            if case in base:
                ratio = timing["median_ms"] / base[case]  # time / baseline time
            else:
                base[case] = timing["median_ms"]
            row = dict(group=group, case=case, impl=impl, shape=shape, **timing, time_vs_baseline=ratio,
                       target=target or "", **cond)
            if target and ratio != "":
                # attention: time ratio must be <= target; pruning: speedup (1 / ratio) must be >= target
                row["meets_target"] = (ratio <= target) if group == "attention" else (1 / ratio >= target)
            rows.append(row)
            print(f"{group:9s} {shape:22s} {case:17s} {impl:48s} {timing['median_ms']:8.4f} ms "
                  f"graph {timing['graph_median_ms']:8.4f} ms {ratio if ratio == '' else f'x{ratio:.3f}'}")

    for tokens in args.lengths:
        run("attention", f"B{args.batch} H6 N{tokens} D64", attention_cases(args.batch, 6, tokens, 64, dtype))
    for keep_ratio in (0.7, 0.5):
        run("pruning", f"B{args.batch} N197 C384 r{keep_ratio}", pruning_cases(args.batch, 197, 384, keep_ratio, dtype))

    folder = harness.run_folder(device, args.out)
    load_after = harness.load_average()
    for row in rows:
        row["load_after"] = load_after
    columns = ["group", "case", "impl", "shape", "median_ms", "p20_ms", "p80_ms", "graph_median_ms",
               "time_vs_baseline", "target", "meets_target", "dtype", "batch", "load_before", "load_after", "device",
               "torch", "triton", "machine", "date", "command"]
    csv_path, md_path = harness.write_rows(rows, folder, "bench_triton", columns)
    with open(md_path) as f:
        table = f.read()
    with open(md_path, "w") as f:
        f.write(f"# Triton kernels on {cond['device']}\n\ntorch {cond['torch']}, triton {cond['triton']}, "
                f"dtype {args.dtype}, batch {args.batch}; command `{cond['command']}`.\n"
                "time_vs_baseline = median time / median time of the first row of the same case "
                f"({sdpa_baseline(dtype)[1]}; the reference ops).\n\n" + table)
    plot(rows, os.path.join(folder, "bench_triton.png"))
    print(f"wrote {csv_path}, {md_path} and bench_triton.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
