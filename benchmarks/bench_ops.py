"""Op benchmarks (pytest-benchmark): every op on every available backend, forward and forward+backward.

    python -m pytest benchmarks/bench_ops.py -o python_files=bench_*.py --benchmark-json=ops.json
    (benchmarks/run_cpu.py runs it and writes CSV + markdown under benchmarks/results/<device>/)

Shapes are the models': DeiT-S attention (H=6, D=64) at the sequence lengths of the sub-networks, and the pruning
step (score -> top-k -> gather) at C=384. BENCH_DEVICE=cuda selects the GPU; BENCH_BATCH sets B.
"""
from __future__ import annotations

import os

import pytest
import torch

from supervit import kernels

import harness

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
BATCH = int(os.environ.get("BENCH_BATCH", "64" if DEVICE.type == "cpu" else "256"))
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[os.environ.get("BENCH_DTYPE", "fp32")]
BACKENDS = kernels.available_backends(DEVICE)
TOKENS = [197, 145, 65] if DEVICE.type == "cpu" else [197, 145, 101, 65]


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("SUPERVIT_BACKEND", request.param)
    return request.param


def bench_attention(benchmark, n, pass_, op, backend, attend):
    """Time ``attend(q, k, v) -> (out, score)`` at H=6, D=64 (forward, or forward + backward through both)."""
    batch = max(1, BATCH // 4) if DEVICE.type == "cpu" else BATCH
    q, k, v = [torch.randn(batch, 6, n, 64, device=DEVICE, dtype=DTYPE, requires_grad=pass_ != "fwd")
               for _ in range(3)]
    benchmark.extra_info.update(op=op, backend=backend, tokens=n, batch=batch, pass_=pass_)

    def run():
        out, score = attend(q, k, v)
        if pass_ != "fwd":
            torch.autograd.backward((out, score), (torch.ones_like(out), torch.ones_like(score)))
        sync()
    benchmark(run)


@pytest.mark.parametrize("n", TOKENS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_attention_with_score(benchmark, backend, n, pass_):
    bench_attention(benchmark, n, pass_, "attention+score", backend,
                    lambda q, k, v: kernels.attention(q, k, v, return_cls_score=True))


def sdpa_with_cls_row(q, k, v):
    """F.scaled_dot_product_attention without the score plus a separate CLS-row computation (what the ops beat)."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out, harness.cls_row_score(q, k, q.shape[-1] ** -0.5)


@pytest.mark.parametrize("n", TOKENS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_attention_sdpa_baseline(benchmark, n, pass_):
    bench_attention(benchmark, n, pass_, "sdpa+cls-row", "torch", sdpa_with_cls_row)


@pytest.mark.parametrize("n", TOKENS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_prune_tokens(benchmark, backend, n, pass_):
    x = torch.randn(BATCH, n, 384, device=DEVICE, dtype=DTYPE, requires_grad=pass_ != "fwd")
    score = torch.rand(BATCH, n - 1, device=DEVICE)
    benchmark.extra_info.update(op="prune_tokens(0.7)", backend=backend, tokens=n, batch=BATCH, pass_=pass_)

    def run():
        kept, _ = kernels.prune_tokens(x, score, 0.7)
        if pass_ != "fwd":
            kept.backward(torch.ones_like(kept))
        sync()
    benchmark(run)


@pytest.mark.parametrize("n", TOKENS)
def test_keep_topk(benchmark, backend, n):
    score = torch.rand(BATCH, n - 1, device=DEVICE)
    k = kernels.keep_count(n, 0.5)
    benchmark.extra_info.update(op="keep_topk(0.5)", backend=backend, tokens=n, batch=BATCH, pass_="fwd")
    benchmark(lambda: (kernels.keep_topk(score, k), sync()))


@pytest.mark.parametrize("n", TOKENS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_gather_tokens(benchmark, backend, n, pass_):
    x = torch.randn(BATCH, n, 384, device=DEVICE, dtype=DTYPE, requires_grad=pass_ != "fwd")
    idx = torch.rand(BATCH, n - 1, device=DEVICE).argsort(1)[:, : kernels.keep_count(n, 0.7)]
    benchmark.extra_info.update(op="gather_tokens(0.7)", backend=backend, tokens=n, batch=BATCH, pass_=pass_)

    def run():
        out = kernels.gather_tokens(x, idx)
        if pass_ != "fwd":
            out.backward(torch.ones_like(out))
        sync()
    benchmark(run)
