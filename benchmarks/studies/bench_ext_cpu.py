"""CPU benchmarks of the compiled extension (supervit._C, the `ext` backend).

Sections (ratios are measured in one run, candidates interleaved round by round so that load from other
processes hits all of them alike; median and min..max over the rounds):

* prune: the pruning step forward + backward (prune_tokens, then the gradient w.r.t. x) at B=64, N=197,
  C=384, keep 0.7 -- ext vs the reference backend through the same op, and vs the plain-PyTorch reference
  composite (reference.prune_tokens under autograd). Target: ext >= 4x faster.
* attention: attention with the CLS score, eval (no grad) and train (forward + backward through both outputs)
  at H=6, N=197, D=64 -- ext vs F.scaled_dot_product_attention plus a separate CLS-row softmax, both followed by
  the models' merge of the heads into [B, N, C]. Target: no slower. Two input layouts: q, k, v as views of one
  fused qkv projection (how the models call it) and contiguous q, k, v (the op then copies its token-major
  output into place; SDPA's CPU flash kernel returns the layout of q).
* models: super_deit_s eval at batch 32 fp32, sub-networks (224, 1), (224, 0.5), (128, 0.5), and timm's
  deit_small_patch16_224. Targets: (224, 0.5) >= 1.8x and (128, 0.5) >= 5x the throughput of (224, 1);
  (224, 1) within 5% of timm.

    python benchmarks/studies/bench_ext_cpu.py                                  # prune + attention, 2 and 1 threads
    python benchmarks/studies/bench_ext_cpu.py --sections models --threads 2    # the model rows (slow: minutes)

Results: ext_cpu.{csv,md} and ext_models.{csv,md} in a new runs/bench/<cpu>-<time>/ folder, or in --out
(--out benchmarks/results/<cpu> updates the committed results). Each row records the load average, the spread
(IQR / median) and a noisy flag.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: harness
import harness  # noqa: E402
from supervit import kernels  # noqa: E402
from supervit.kernels import dispatch, reference  # noqa: E402

CPU = torch.device("cpu")


backend = harness.forced_backend


def interleaved(candidates: dict, rounds: int, warmup: int) -> dict:
    """Candidates timed round by round on the CPU (harness.time_interleaved)."""
    return harness.time_interleaved(candidates, CPU, rounds=rounds, warmup=warmup)


def rows_of(section, case, stats, ext_name, extra):
    """One row per candidate; ext_speedup = this row's time / the ext row's time (median and min)."""
    ext = stats[ext_name]
    out = []
    for name, s in stats.items():
        row = {"section": section, "case": case, "impl": name, **extra, **s,
               "ext_speedup_median": s["median_ms"] / ext["median_ms"], "ext_speedup_min": s["min_ms"] / ext["min_ms"]}
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------------------------
def bench_prune(rounds, warmup, extra):
    batch, tokens, channels, ratio = 64, 197, 384, 0.7
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, channels, generator=gen, requires_grad=True)
    score = torch.rand(batch, tokens - 1, generator=gen)
    grad = torch.randn(batch, reference.keep_count(tokens, ratio) + 1, channels, generator=gen)

    def through_op(name):
        def step():
            with backend(name):
                kept, _ = kernels.prune_tokens(x, score, ratio)
                return torch.autograd.grad(kept, x, grad)
        return step

    def composite():
        kept, _ = reference.prune_tokens(x, score, ratio)
        return torch.autograd.grad(kept, x, grad)

    stats = interleaved({"ext": through_op("ext"), "reference_backend": through_op("reference"),
                         "reference_composite": composite}, rounds, warmup)
    case = f"prune_tokens fwd+bwd B={batch} N={tokens} C={channels} keep={ratio}"
    return rows_of("prune", case, stats, "ext", {"dtype": "fp32", "batch": batch, **extra})


def attention_inputs(batch, heads, tokens, dim, layout, gen, requires_grad=False):
    """q, k, v [B, H, N, D]: views of one fused qkv projection output [B, N, 3, H, D] (``qkv-views``, how the
    models call attention) or three contiguous tensors (``contiguous``)."""
    if layout == "qkv-views":
        fused = torch.randn(batch, tokens, 3, heads, dim, generator=gen, requires_grad=requires_grad)
        return fused, list(fused.permute(2, 0, 3, 1, 4).unbind(0))
    qkv = [torch.randn(batch, heads, tokens, dim, generator=gen, requires_grad=requires_grad) for _ in range(3)]
    return qkv, qkv


def merge_heads(out):
    """[B, H, N, D] -> [B, N, H * D], as the models feed the output projection."""
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def bench_attention(rounds, warmup, extra, batches=(32, 64), layouts=("qkv-views", "contiguous")):
    rows = []
    heads, tokens, dim = 6, 197, 64
    scale = dim ** -0.5
    for layout in layouts:
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            _, (q, k, v) = attention_inputs(batch, heads, tokens, dim, layout, gen)

            def ext_eval():
                with torch.no_grad(), backend("ext"):
                    out, score = kernels.attention(q, k, v, scale, return_cls_score=True)
                    return merge_heads(out), score

            def sdpa_eval():
                with torch.no_grad():
                    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                    return merge_heads(out), harness.cls_row_score(q, k, scale)

            def sdpa_only():
                with torch.no_grad():
                    return merge_heads(F.scaled_dot_product_attention(q, k, v, scale=scale))

            stats = interleaved({"ext": ext_eval, "sdpa+cls_row": sdpa_eval, "sdpa_without_score": sdpa_only},
                                rounds, warmup)
            rows += rows_of("attention", f"eval {layout} B={batch} H={heads} N={tokens} D={dim}", stats, "ext",
                            {"dtype": "fp32", "batch": batch, **extra})

        batch = batches[0]
        gen = torch.Generator().manual_seed(1)
        leaves, qkv = attention_inputs(batch, heads, tokens, dim, layout, gen, requires_grad=True)
        leaves = [leaves] if torch.is_tensor(leaves) else leaves
        go = torch.randn(batch, tokens, heads * dim, generator=gen)  # upstream grad of the merged heads
        gs = torch.randn(batch, tokens - 1, generator=gen)

        def ext_train():
            with backend("ext"):
                out, score = kernels.attention(*qkv, scale, return_cls_score=True)
                return torch.autograd.grad((merge_heads(out) * go).sum() + (score * gs).sum(), leaves)

        def sdpa_train():
            out = F.scaled_dot_product_attention(*qkv, scale=scale)
            score = harness.cls_row_score(qkv[0], qkv[1], scale)
            return torch.autograd.grad((merge_heads(out) * go).sum() + (score * gs).sum(), leaves)

        stats = interleaved({"ext": ext_train, "sdpa+cls_row": sdpa_train}, max(3, rounds // 2),
                            max(1, warmup // 2))
        rows += rows_of("attention", f"train fwd+bwd {layout} B={batch} H={heads} N={tokens} D={dim}", stats,
                        "ext", {"dtype": "fp32", "batch": batch, **extra})
    return rows


def bench_models(rounds, warmup, extra, batch=32):
    import timm

    import supervit  # noqa: F401 - registers the models with timm

    torch.manual_seed(0)
    ours = timm.create_model("super_deit_s").eval()
    deit = timm.create_model("deit_small_patch16_224").eval()
    x = torch.randn(batch, 3, 224, 224)

    def sub(size, ratio):
        def run():
            with torch.no_grad():
                return ours(x, img_size=size, keep_ratio=ratio)
        return run

    def timm_run():
        with torch.no_grad():
            return deit(x)

    with backend(None):
        assert dispatch.select_backend(CPU).NAME == "ext", "the models should run on the ext backend on CPU"
        stats = interleaved({"super_deit_s (224,1)": sub(224, 1.0), "super_deit_s (224,0.5)": sub(224, 0.5),
                             "super_deit_s (128,0.5)": sub(128, 0.5), "timm deit_small_patch16_224": timm_run},
                            rounds, warmup)
    base = stats["super_deit_s (224,1)"]
    rows = []
    for name, s in stats.items():
        rows.append({"section": "models", "case": f"eval fp32 batch {batch}", "impl": name, "dtype": "fp32",
                     "batch": batch, **extra, **s, "images_per_s": batch / (s["median_ms"] / 1e3),
                     "throughput_vs_224_1_median": base["median_ms"] / s["median_ms"],
                     "throughput_vs_224_1_min": base["min_ms"] / s["min_ms"]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["prune", "attention"],
                        choices=["prune", "attention", "models"], help="what to time (default: prune attention)")
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="torch CPU thread counts to run")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (models: a fifth, at least 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each candidate first")
    parser.add_argument("--out", default=None, help="results folder (default: a new runs/bench/<cpu>-<time>)")
    args = parser.parse_args()

    ok, why = dispatch.backend_status("ext", CPU)
    if not ok:
        sys.exit(f"the ext backend is not available: {why}")
    folder = harness.run_folder(CPU, args.out)
    op_rows, model_rows = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        extra = harness.conditions(CPU)  # records threads, torch version, the command
        extra["loadavg_1min"] = round(os.getloadavg()[0], 2)  # other processes on the machine at the start
        if "prune" in args.sections:
            op_rows += bench_prune(args.rounds, args.warmup, extra)
        if "attention" in args.sections:
            op_rows += bench_attention(args.rounds, args.warmup, extra)
        if "models" in args.sections:
            model_rows += bench_models(max(5, args.rounds // 5), max(1, args.warmup // 2), extra)
        for row in (op_rows + model_rows):
            if row["threads"] == threads:
                keys = ("ext_speedup_median", "ext_speedup_min", "throughput_vs_224_1_median")
                print(f"[{threads} thr] {row['case']:<52} {row['impl']:<30} median {row['median_ms']:9.2f} ms  "
                      f"min {row['min_ms']:9.2f} ms  " + "  ".join(f"{k} {row[k]:.2f}" for k in keys if k in row))
    columns = ["section", "case", "impl", "dtype", "batch", "threads", "median_ms", "min_ms", "max_ms", "rel_spread",
               "noisy", "rounds"]
    meta = ["loadavg_1min", "machine", "device", "torch", "triton", "command"]
    if op_rows:
        paths = harness.write_rows(op_rows, folder, "ext_cpu",
                                   columns + ["ext_speedup_median", "ext_speedup_min"] + meta)
        print("wrote", *paths)
    if model_rows:
        paths = harness.write_rows(model_rows, folder, "ext_models", columns + [
            "images_per_s", "throughput_vs_224_1_median", "throughput_vs_224_1_min"] + meta)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
