"""The SuperViT training step compiled (torch.compile, inductor) vs eager: 4 sub-networks' forward + backward and
the AdamW step, candidates interleaved in one run; their losses and gradients compared on one step from the same
weights.

    python benchmarks/bench_train_step.py --out benchmarks/results/<machine>      # CPU: super_deit_s fp32, b16/b32
    python benchmarks/gpu/bench_train_gpu.py --out DIR                            # GPU: bf16 batch 256, with MFU

Writes train_step.csv / .md (one row per batch and candidate: median, spread, img/s, compile seconds, model
GFLOP/s and MFU where the device's peak is known, the compiled/eager ratio with its bootstrap interval and the
numerical check). ``--tiny`` runs a tiny model (seconds; for testing the plumbing).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import harness
from supervit.models import compile_model
from supervit.training import ClassificationTask, supervit_step, zero_grad
from supervit.training.throughput import matmul_dtype_name, peak_flops, step_flops

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# One fixed draw: the step the model benchmark also times; a fixed draw compiles 4 graphs instead of 12.
DRAW = [(224, 1.0), (224, 0.7), (160, 1.0), (160, 0.5)]
TINY = dict(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=3, embed_dim=32, depth=4, num_heads=2,
            num_classes=10, prune_layers=(1, 2, 3))
TINY_DRAW = [(28, 1.0), (28, 0.7), (20, 1.0), (20, 0.5)]


def build_model(tiny: bool, device):
    import timm

    torch.manual_seed(0)
    if tiny:
        from supervit.models import SuperDeiT

        model = SuperDeiT(**TINY)
    else:
        model = timm.create_model("super_deit_s")
    return model.to(device).train()


class Stepper:
    """One training step of ``forward_model`` (eager or compiled) updating ``model``'s parameters."""

    def __init__(self, model, forward_model, draw, amp_dtype, device):
        self.model, self.forward_model, self.draw, self.amp_dtype = model, forward_model, draw, amp_dtype
        self.task = ClassificationTask(torch.nn.CrossEntropyLoss())
        impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **impl)

    def step(self, images, targets, optimizer_step: bool = True):
        zero_grad(self.optimizer)
        result = supervit_step(self.forward_model, images, targets, self.draw, self.task, amp_dtype=self.amp_dtype)
        if optimizer_step:
            self.optimizer.step()
        return result.losses


def numerical_check(eager: Stepper, compiled: Stepper, images, targets) -> dict:
    """Losses and gradients of one step from the same weights (no optimizer step), compiled against eager."""
    a = eager.step(images, targets, optimizer_step=False)
    b = compiled.step(images, targets, optimizer_step=False)
    grads_a = torch.cat([p.grad.float().flatten() for p in eager.model.parameters() if p.grad is not None])
    grads_b = torch.cat([p.grad.float().flatten() for p in compiled.model.parameters() if p.grad is not None])
    return {"loss_max_rel_err": float(((a - b).abs() / a.abs().clamp_min(1e-6)).max()),
            "grad_max_err_rel_to_max": float((grads_a - grads_b).abs().max() / grads_a.abs().max()),
            "grad_rel_l2_err": float((grads_a - grads_b).norm() / grads_a.norm())}


def bench_batch(args, device, batch: int) -> list[dict]:
    amp_dtype = DTYPES[args.dtype]
    draw = TINY_DRAW if args.tiny else DRAW
    side = max(s for s, _ in draw)
    gen = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, side, side, generator=gen).to(device)
    targets = torch.randint(0, 10 if args.tiny else 1000, (batch,), generator=gen).to(device)
    torch._dynamo.reset()
    eager_model = build_model(args.tiny, device)
    model = copy.deepcopy(eager_model)
    compiled_forward = compile_model(model, backend=args.backend, fullgraph=True, dynamic=False)
    eager, compiled = (Stepper(eager_model, eager_model, draw, amp_dtype, device),
                       Stepper(model, compiled_forward, draw, amp_dtype, device))
    start = time.perf_counter()
    check = numerical_check(eager, compiled, images, targets)  # the compiled side compiles its 4 graphs here
    compile_s = time.perf_counter() - start
    print(f"batch {batch}: compiled in {compile_s:.0f} s; losses rel err {check['loss_max_rel_err']:.2e}, "
          f"gradients max err / max {check['grad_max_err_rel_to_max']:.2e}", flush=True)
    stats, cond = harness.measure({"eager": lambda: eager.step(images, targets),
                                   "compiled": lambda: compiled.step(images, targets)},
                                  device, dtype=args.dtype, batch=batch, backend=args.backend, mode="train_step",
                                  rounds=args.rounds, warmup=args.warmup, keep_times=True,
                                  min_seconds=args.min_seconds)
    ratio = harness.paired_ratio(stats["eager"]["times_ms"], stats["compiled"]["times_ms"])
    flop = step_flops(eager_model, draw, batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = peak_flops(name, matmul_dtype_name(amp_dtype)) if name else None
    rows = []
    for candidate in ("eager", "compiled"):
        t = {k: v for k, v in stats[candidate].items() if k != "times_ms"}
        seconds = t["median_ms"] / 1e3
        rows.append({"model": "tiny" if args.tiny else "super_deit_s", "candidate": candidate, "dtype": args.dtype,
                     "batch": batch, "subnets": " ".join(f"({s},{r:g})" for s, r in draw), **t,
                     "img_per_s": batch / seconds, "model_gflop_per_s": flop / seconds / 1e9,
                     "mfu": flop / seconds / peak if peak else "",
                     "compile_s": compile_s if candidate == "compiled" else "",
                     "eager_over_compiled": ratio["ratio_median"], "ratio_ci_low": ratio["ratio_ci_low"],
                     "ratio_ci_high": ratio["ratio_ci_high"], **check,
                     **{k: v for k, v in cond.items() if k not in ("dtype", "batch")}})
        print(f"  {candidate:>8} b{batch}: {t['median_ms']:9.1f} ms (spread {t['rel_spread']:.1%})"
              + (f", MFU {100 * flop / seconds / peak:.1f} %" if peak else ""), flush=True)
    print(f"  eager / compiled: {ratio['ratio_median']:.3f} (95% interval {ratio['ratio_ci_low']:.3f}.."
          f"{ratio['ratio_ci_high']:.3f})", flush=True)
    return rows


COLUMNS = ["model", "candidate", "dtype", "batch", "subnets", "median_ms", "min_ms", "max_ms", "rel_spread", "noisy",
           "rounds", "img_per_s", "model_gflop_per_s", "mfu", "compile_s", "eager_over_compiled", "ratio_ci_low",
           "ratio_ci_high", "loss_max_rel_err", "grad_max_err_rel_to_max", "grad_rel_l2_err", "threads",
           "load_before", "load_after", "device", "torch", "command"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (default fp32)")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="batches (default 16 32)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per batch (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each candidate first (default 1)")
    p.add_argument("--min-seconds", type=float, default=0.0, help="keep adding rounds until this much time passed")
    p.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default 2)")
    p.add_argument("--tiny", action="store_true", help="a tiny model at 28 px instead of super_deit_s (plumbing)")
    p.add_argument("--out", default=None, help="result folder (default: a new runs/bench/<device>-<time>)")
    return p


def main(argv=None) -> list[dict]:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    for batch in args.batches:
        rows += bench_batch(args, device, batch)
    harness.report_rows(rows, harness.run_folder(device, args.out), "train_step", COLUMNS)
    return rows


if __name__ == "__main__":
    main()
