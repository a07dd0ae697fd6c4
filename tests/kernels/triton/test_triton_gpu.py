"""Triton kernels on a CUDA device: the full shape grid, all dtypes, long sequences, torch.compile, dispatch.

Run natively (not under the interpreter): ``.venv/bin/python -m pytest -q -m gpu tests/kernels/triton``.
Skipped without CUDA (tests/conftest.py) and under TRITON_INTERPRET=1.
"""
import pytest
import torch

from _triton_testutil import (FLOOR, INTERPRET, assert_within_rule, attention_lowp_reference, attention_truth,
                              tied_scores)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(INTERPRET, reason="GPU tests run the compiled kernels, not the interpreter")]

import supervit.kernels as K  # noqa: E402
from supervit.kernels import reference  # noqa: E402

if not INTERPRET:
    try:
        from supervit.kernels import triton_backend as tb
    except Exception:  # noqa: BLE001 - reported by the tests below through dispatch
        tb = None

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# SPEC sequence lengths: the four resolutions and every length after pruning at r = 0.5 / 0.7
SEQ_LENS = [65, 101, 145, 197, 34, 18, 10, 47, 25, 52, 27, 15, 72, 38, 74, 20, 103, 53, 100, 51, 139, 99, 71]
GRID_LENS = [65, 101, 145, 197, 34, 27, 18, 100, 51, 139]


def _run_attention(batch, heads, tokens, dim, dtype, mode, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (batch, heads, tokens, dim)
    q, k, v, go = (torch.randn(shape, device="cuda", generator=gen).to(dtype) for _ in range(4))
    gs = torch.randn(batch, tokens - 1, device="cuda", generator=gen)
    scale = dim ** -0.5
    use_out, use_score = mode in ("out", "both"), mode in ("score", "both")
    out, score, lse = tb.attention_forward(q, k, v, scale, True)
    assert out.transpose(1, 2).is_contiguous(), "out must be stored token-major"
    grads = tb.attention_backward(go if use_out else torch.zeros_like(go), gs if use_score else gs[:, :0],
                                  q, k, v, out, lse, scale, use_score)
    truth = attention_truth(q, k, v, scale, go if use_out else None, gs if use_score else None)
    lowp = attention_lowp_reference(q, k, v, scale, go if use_out else None, gs if use_score else None)
    for name, got, lp, tr in zip(("out", "score", "dq", "dk", "dv"), (out, score) + tuple(grads), lowp, truth):
        assert_within_rule(f"{name} {mode} {dtype} {shape}", got, lp, tr, FLOOR[dtype])
    return out, score, lse, grads


@pytest.mark.parametrize("tokens", GRID_LENS)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_grid(dtype, batch, tokens):
    _run_attention(batch, 6, tokens, 64, dtype, "both")


@pytest.mark.parametrize("mode", ["out", "score"])
@pytest.mark.parametrize("tokens", [197, 27])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_single_upstream_grad(dtype, tokens, mode):
    _run_attention(8, 6, tokens, 64, dtype, mode)


@pytest.mark.parametrize("tokens", SEQ_LENS)
def test_attention_every_spec_length(tokens):
    _run_attention(4, 6, tokens, 64, torch.bfloat16, "both")


@pytest.mark.parametrize("dim", [32, 128, 16, 48])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_head_dims(dtype, dim):
    _run_attention(2, 4, 197, dim, dtype, "both")


@pytest.mark.parametrize("tokens", [513, 1000, 2048, 4096])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_attention_long_sequences(dtype, tokens):
    _run_attention(1, 2, tokens, 64, dtype, "both")


def test_attention_backward_is_deterministic():
    out, score, lse, grads = _run_attention(16, 6, 197, 64, torch.bfloat16, "both")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, go = (torch.randn(16, 6, 197, 64, device="cuda", generator=gen).bfloat16() for _ in range(4))
    gs = torch.randn(16, 196, device="cuda", generator=gen)
    again = tb.attention_backward(go, gs, q, k, v, out, lse, 64 ** -0.5, True)
    for a, b in zip(grads, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("keep_ratio", [0.5, 0.7])
@pytest.mark.parametrize("tokens", [65, 101, 145, 197, 100, 51, 27])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pruning_grid_exact(dtype, batch, tokens, keep_ratio):
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(batch, tokens, 384, generator=gen).to(dtype).cuda()
    for score in (tied_scores(batch, tokens - 1, generator=gen).cuda(),
                  torch.rand(batch, tokens - 1, generator=gen).cuda(),
                  tied_scores(batch, tokens - 1, generator=gen).to(dtype).cuda()):
        k = reference.keep_count(tokens, keep_ratio)
        kept, idx = tb.prune_tokens_forward(x, score, k)
        ref_kept, ref_idx = reference.prune_tokens_forward(x, score, k)
        assert torch.equal(idx, ref_idx) and torch.equal(kept, ref_kept)
        assert torch.equal(tb.keep_topk(score, k), ref_idx)
        assert torch.equal(tb.gather_tokens(x, ref_idx), ref_kept)
        grad = torch.randn(batch, k + 1, 384, device="cuda").to(dtype)
        assert torch.equal(tb.gather_tokens_backward(grad, ref_idx, tokens),
                           reference.gather_tokens_backward(grad, ref_idx, tokens))


@pytest.mark.parametrize("patches", [1023, 1024, 2000, 4096])
def test_topk_long_rows(patches):
    score = tied_scores(4, patches, device="cuda", levels=50)
    for k in (1, patches // 2, patches):
        assert torch.equal(tb.keep_topk(score, k), reference.keep_topk(score, k))
    x = torch.randn(4, patches + 1, 64, device="cuda")
    k = patches // 2
    kept, idx = tb.prune_tokens_forward(x, score, k)
    assert torch.equal(kept, reference.prune_tokens_forward(x, score, k)[0])


def test_dispatch_picks_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("SUPERVIT_BACKEND", raising=False)
    assert K.backend_status("triton", "cuda") == (True, "")
    assert K.select_backend("cuda").NAME == "triton"
    assert K.select_backend(torch.device("cuda", 0)).NAME == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compile_fullgraph_with_triton(monkeypatch, dtype):
    """Attention + pruning step under torch.compile(fullgraph=True) (inductor) matches eager, values and grads."""
    monkeypatch.setenv("SUPERVIT_BACKEND", "triton")
    torch._dynamo.reset()

    def step(x, q, k, v):
        out, score = K.attention(q, k, v, return_cls_score=True)  # [B, H, N, D], [B, N-1]
        x = x + out.transpose(1, 2).flatten(2)  # [B, N, H*D]
        kept, idx = K.prune_tokens(x, score, 0.5)
        return kept.float().square().mean(), idx

    gen = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (torch.randn(8, 6, 197, 64, device="cuda", generator=gen).to(dtype).requires_grad_() for _ in range(3))
    x = torch.randn(8, 197, 384, device="cuda", generator=gen).to(dtype).requires_grad_()
    loss, idx = step(x, q, k, v)
    grads = torch.autograd.grad(loss, (x, q, k, v))
    c_loss, c_idx = torch.compile(step, fullgraph=True)(x, q, k, v)
    c_grads = torch.autograd.grad(c_loss, (x, q, k, v))
    assert torch.equal(c_idx, idx)
    torch.testing.assert_close(c_loss, loss)
    for a, b in zip(c_grads, grads):
        torch.testing.assert_close(a, b)
