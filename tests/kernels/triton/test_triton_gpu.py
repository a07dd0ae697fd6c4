"""Triton kernels on a CUDA device: the full shape grid, all dtypes, long sequences, torch.compile, dispatch.

Run natively (not under the interpreter): ``.venv/bin/python -m pytest -q -m gpu tests/kernels/triton``.
Skipped without CUDA (tests/conftest.py) and under TRITON_INTERPRET=1.
"""
import pytest
import torch

from oracle import (AttentionValues, assert_attention_within_rule, attention_same_precision, attention_truth,
                    tied_scores)

from supervit.kernels.triton_launch import INTERPRET

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(INTERPRET, reason="GPU tests run the compiled kernels, not the interpreter")]

import supervit.kernels as K  # noqa: E402
from supervit.kernels import reference  # noqa: E402

if not INTERPRET:
    try:
        from supervit.kernels import triton_attention
        from supervit.kernels import triton_backend as tb
    except Exception:  # noqa: BLE001 - reported by the tests below through dispatch
        tb = None

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# The models' sequence lengths: the four token grids and every length after pruning at r = 0.5 / 0.7
SEQ_LENS = [65, 101, 145, 197, 34, 18, 10, 47, 25, 52, 27, 15, 72, 38, 74, 20, 103, 53, 100, 51, 139, 99, 71]
GRID_LENS = [65, 101, 145, 197, 34, 27, 18, 100, 51, 139]


def _inputs(batch, heads, tokens, dim, dtype, seed=0, qkv_views=False):
    """q, k, v, grad_out [B, H, N, D] and grad_score [B, N-1] on the GPU; with ``qkv_views`` q, k, v are views of one
    [B, N, 3, H, D] tensor and grad_out is token-major, as the models pass them."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    if qkv_views:
        q, k, v = torch.randn(batch, tokens, 3, heads, dim, device="cuda", generator=gen).to(dtype).permute(
            2, 0, 3, 1, 4).unbind(0)
        go = torch.randn(batch, tokens, heads, dim, device="cuda", generator=gen).to(dtype).transpose(1, 2)
    else:
        q, k, v, go = (torch.randn(batch, heads, tokens, dim, device="cuda", generator=gen).to(dtype)
                       for _ in range(4))
    return q, k, v, go, torch.randn(batch, tokens - 1, device="cuda", generator=gen)


def _run_attention(batch, heads, tokens, dim, dtype, mode, seed=0, qkv_views=False):
    q, k, v, go, gs = _inputs(batch, heads, tokens, dim, dtype, seed, qkv_views)
    scale = dim ** -0.5
    go, gs = (go if mode in ("out", "both") else None), (gs if mode in ("score", "both") else None)
    out, score, lse = tb.attention_forward(q, k, v, scale, True)
    assert out.transpose(1, 2).is_contiguous(), "out must be stored token-major"
    grads = tb.attention_backward(torch.zeros_like(q) if go is None else go, score[:, :0] if gs is None else gs,
                                  q, k, v, out, lse, scale, gs is not None)
    got = AttentionValues(out, score, lse, *grads)
    assert_attention_within_rule(f"{mode} {dtype} {tuple(q.shape)}", got,
                                 attention_same_precision(q, k, v, scale, go, gs),
                                 attention_truth(q, k, v, scale, go, gs), dtype)
    return got


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
def test_attention_every_model_length(tokens):
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
    first = _run_attention(16, 6, 197, 64, torch.bfloat16, "both")
    q, k, v, go, gs = _inputs(16, 6, 197, 64, torch.bfloat16)
    again = tb.attention_backward(go, gs, q, k, v, first.out, first.lse, 64 ** -0.5, True)
    for a, b in zip((first.dq, first.dk, first.dv), again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tokens", [197, 100, 27])  # several key blocks, one key block (dQ in the dK/dV loop)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_reads_qkv_views_and_token_major_grads(dtype, tokens):
    """The models' layout: q, k, v views of the fused qkv projection, grad_out token-major (no copies made)."""
    _run_attention(8, 6, tokens, 64, dtype, "both", qkv_views=True)


@pytest.mark.parametrize("blocks", [(32, 256), (16, 64)], ids=["one-key-block", "key-blocks"])
def test_attention_backward_both_variants_at_197(blocks):
    """N = 197 in one key block (dQ in the dK/dV loop) and in several (the dQ loop), fixed tiles."""
    q, k, v, go, gs = _inputs(8, 6, 197, 64, torch.bfloat16, qkv_views=True)
    out, score, lse = tb.attention_forward(q, k, v, 0.125, True)
    grads = triton_attention.attention_backward(go, gs, q, k, v, out, lse, 0.125, True, blocks=blocks)
    assert_attention_within_rule(f"blocks {blocks}", AttentionValues(out, score, lse, *grads),
                                 attention_same_precision(q, k, v, 0.125, go, gs),
                                 attention_truth(q, k, v, 0.125, go, gs), torch.bfloat16)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launches_follow_the_tensors_device():
    """Tensors on cuda:1 while cuda:0 is current: the results are right (the launch ran on cuda:1)."""
    with torch.cuda.device(0):
        q, k, v, go, gs = (t.to("cuda:1") for t in _inputs(2, 6, 65, 64, torch.bfloat16))
        out, score, lse = tb.attention_forward(q, k, v, 0.125, True)
        grads = tb.attention_backward(go, gs, q, k, v, out, lse, 0.125, True)
        x = torch.randn(2, 65, 384, device="cuda:1")
        kept, idx = tb.prune_tokens_forward(x, score, 33)
    assert out.device == torch.device("cuda", 1)
    assert_attention_within_rule("cuda:1", AttentionValues(out, score, lse, *grads),
                                 attention_same_precision(q, k, v, 0.125, go, gs),
                                 attention_truth(q, k, v, 0.125, go, gs), torch.bfloat16)
    ref_kept, ref_idx = reference.prune_tokens_forward(x, score, 33)
    assert torch.equal(idx, ref_idx) and torch.equal(kept, ref_kept)


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
