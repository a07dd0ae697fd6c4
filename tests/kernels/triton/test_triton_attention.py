"""Triton fused attention under TRITON_INTERPRET=1 (CPU): forward and backward against the reference.

fp32 and fp16 only (bf16 arithmetic is wrong in the interpreter); small shapes, few big tiles.
"""
import pytest
import torch

from oracle import AttentionValues, assert_attention_within_rule, attention_same_precision, attention_truth

from supervit.kernels.triton_launch import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="CPU Triton tests need TRITON_INTERPRET=1 (make test)")

if INTERPRET:
    from supervit.kernels import triton_attention, triton_backend
    from supervit.kernels.triton_launch import configs_for_length

SHAPES = [(1, 2, 9, 16), (2, 3, 17, 32), (2, 2, 65, 64), (1, 1, 130, 64)]  # B, H, N, D
MODES = ["out", "score", "both"]


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, go = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    gs = torch.randn(shape[0], shape[2] - 1, generator=gen)  # [B, N-1] fp32
    return q, k, v, go, gs


def _check(shape, dtype, mode, fwd, bwd):
    """Run kernel forward/backward and compare out, score, lse, dq, dk, dv with the oracle's rule."""
    q, k, v, go, gs = _inputs(shape, dtype)
    scale = shape[-1] ** -0.5
    go, gs = (go if mode in ("out", "both") else None), (gs if mode in ("score", "both") else None)
    out, score, lse = fwd(q, k, v, scale, True)
    assert out.dtype == dtype and out.shape == q.shape
    assert out.transpose(1, 2).is_contiguous(), "out must be stored token-major ([B, N, H, D] contiguous)"
    assert score.dtype == torch.float32 and lse.dtype == torch.float32
    grads = bwd(torch.zeros_like(q) if go is None else go, score[:, :0] if gs is None else gs, q, k, v, out, lse,
                scale, gs is not None)
    assert all(g.dtype == dtype for g in grads)
    assert_attention_within_rule(f"{mode} {dtype} {shape}", AttentionValues(out, score, lse, *grads),
                                 attention_same_precision(q, k, v, scale, go, gs),
                                 attention_truth(q, k, v, scale, go, gs), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_backend_matches_reference(dtype, shape, mode):
    _check(shape, dtype, mode, triton_backend.attention_forward, triton_backend.attention_backward)


@pytest.mark.parametrize("tokens", [37, 32])
@pytest.mark.parametrize("blocks", [(16, 16), (16, 32), (32, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_small_tiles_many_blocks(dtype, blocks, tokens):
    """Several key/query blocks, with a ragged tail (37) or none (32): exercises the loops and every mask."""
    fwd = lambda *a: triton_attention.attention_forward(*a, blocks=blocks)  # noqa: E731
    bwd = lambda *a: triton_attention.attention_backward(*a, blocks=blocks)  # noqa: E731
    _check((2, 2, tokens, 32), dtype, "both", fwd, bwd)


@pytest.mark.parametrize("dim", [8, 24, 40])
def test_head_dim_padding(dim):
    """Head dims below 16 or not a power of two are zero-padded by the wrappers."""
    _check((1, 2, 17, dim), torch.float32, "both", triton_backend.attention_forward, triton_backend.attention_backward)


def test_no_score_and_tiny_sequences():
    for tokens in (1, 2):
        q, k, v, go, _ = _inputs((2, 2, tokens, 16), torch.float32)
        out, score, lse = triton_backend.attention_forward(q, k, v, 0.25, False)
        assert score.shape == (2, 0) and score.dtype == torch.float32
        truth = attention_truth(q, k, v, 0.25, go, None)
        torch.testing.assert_close(out.double(), truth.out, atol=1e-6, rtol=1e-5)
        dq, dk, dv = triton_backend.attention_backward(go, score, q, k, v, out, lse, 0.25, False)
        for got, tr in zip((dq, dk, dv), (truth.dq, truth.dk, truth.dv)):
            torch.testing.assert_close(got.double(), tr, atol=1e-6, rtol=1e-5)
    out, score, _ = triton_backend.attention_forward(q, k, v, 0.25, True)  # N = 2: one patch key, score 1 - P00
    torch.testing.assert_close(score.double(), attention_truth(q, k, v, 0.25, go, None).score, atol=1e-6, rtol=1e-5)


def test_strided_inputs_are_read_in_place(monkeypatch):
    """q, k, v as views of one qkv tensor and token-major out / grad_out reach the kernels without a copy."""
    gen = torch.Generator().manual_seed(7)
    batch, heads, tokens, dim = 2, 3, 21, 16
    qkv = torch.randn(batch, tokens, 3, heads, dim, generator=gen).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D] view
    q, k, v = qkv.unbind(0)
    go = torch.randn(batch, tokens, heads, dim, generator=gen).transpose(1, 2)  # token-major [B, H, N, D]
    gs = torch.randn(batch, tokens - 1, generator=gen)
    launched = {}
    for name in ("_attention_fwd_kernel", "_bwd_delta_kernel", "_attention_bwd_kernel"):
        kernel = getattr(triton_attention, name)
        monkeypatch.setattr(triton_attention, name, _Recorder(kernel, launched.setdefault(name, [])))
    out, score, lse = triton_attention.attention_forward(q, k, v, dim ** -0.5, True)
    grads = triton_attention.attention_backward(go, gs, q, k, v, out, lse, dim ** -0.5, True)
    pointers = lambda name: {a.data_ptr() for a in launched[name][0] if isinstance(a, torch.Tensor)}  # noqa: E731
    assert {q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()} <= pointers("_attention_fwd_kernel")
    assert {q.data_ptr(), k.data_ptr(), v.data_ptr(), go.data_ptr()} <= pointers("_attention_bwd_kernel")
    assert {out.data_ptr(), go.data_ptr()} <= pointers("_bwd_delta_kernel")
    truth = attention_truth(q, k, v, dim ** -0.5, go, gs)
    for got, want in zip((out, score) + tuple(grads), (truth.out, truth.score, truth.dq, truth.dk, truth.dv)):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


class _Recorder:
    """Stands in for a kernel: records the arguments of each launch, then launches."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(args)
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_gpu_launch_tables():
    """Every autotune table row is a valid tile, and the length filter always leaves a config (pure Python)."""
    for backward in (False, True):
        for kind in ("mma", "ieee"):
            for dim in (16, 32, 64, 128, 256):
                tuner = triton_attention._tuned(kind, dim, backward)
                for tokens in (2, 10, 27, 65, 197, 4096):
                    kept = configs_for_length(tuner.configs, {"N_BUCKET": triton_attention._padded_dim(tokens)})
                    assert kept and all(v >= 16 for c in kept for v in c.kwargs.values())
