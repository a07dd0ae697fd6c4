"""The extension's attention with CLS score on CPU vs an fp64 ground truth (the oracle's tolerance rule).

Forward (out, score, lse) and backward through both outputs with the same upstream gradients, fp32 and bf16,
odd sequence lengths, B = 1 and B > 1.
"""
import pytest
import torch

from oracle import AttentionValues, assert_attention_within_rule, attention_same_precision, attention_truth

ext = pytest.importorskip("supervit.kernels.ext_backend")

SEQ_LENS = [9, 65, 101, 145, 197]


def run(forward, backward, batch, heads, tokens, dim, dtype, grads="both", seed=0, magnitude=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, go = (torch.randn(batch, heads, tokens, dim, generator=g).mul(magnitude).to(dtype) for _ in range(4))
    gs = torch.randn(batch, tokens - 1, generator=g)
    go = go if grads in ("both", "out") else None
    gs = gs if grads in ("both", "score") else None
    scale = dim ** -0.5
    out, score, lse = forward(q, k, v, scale, True)
    assert out.dtype == dtype and score.dtype == lse.dtype == torch.float32
    assert out.transpose(1, 2).is_contiguous(), "out must be stored token-major ([B, N, H, D] contiguous)"
    assert score.shape == (batch, tokens - 1) and lse.shape == (batch, heads, tokens)
    dq, dk, dv = backward(torch.zeros_like(out) if go is None else go, score[:, :0] if gs is None else gs,
                          q, k, v, out, lse, scale, gs is not None)
    got = AttentionValues(out, score, lse, dq, dk, dv)
    same_precision, truth = attention_same_precision(q, k, v, scale, go, gs), attention_truth(q, k, v, scale, go, gs)
    assert_attention_within_rule(f"{dtype} B{batch} N{tokens} grads={grads}", got, same_precision, truth, dtype)
    return out, score, lse, (dq, dk, dv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tokens", SEQ_LENS)
@pytest.mark.parametrize("batch", [1, 3])
def test_attention_forward_backward_within_tolerance(batch, tokens, dtype):
    run(ext.attention_forward, ext.attention_backward, batch, 6, tokens, 64, dtype)


@pytest.mark.parametrize("grads", ["out", "score"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_attention_one_upstream_gradient_at_a_time(dtype, grads):
    run(ext.attention_forward, ext.attention_backward, 2, 3, 65, 32, dtype, grads=grads)


@pytest.mark.parametrize("dim", [8, 20, 64])
def test_attention_odd_head_dims(dim):
    run(ext.attention_forward, ext.attention_backward, 2, 2, 27, dim, torch.float32)


def test_attention_large_logits():
    """Logits in the hundreds: the score must agree with its own softmax, not just with the flash lse."""
    run(ext.attention_forward, ext.attention_backward, 2, 3, 50, 16, torch.float32, magnitude=6.0)


def test_strided_qkv_views_match_contiguous():
    """q, k, v as views of a fused qkv projection (how the models call it): read through strides, same values."""
    batch, tokens, heads, dim = 3, 65, 4, 16
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(batch, tokens, 3, heads, dim, generator=g).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D] views
    q, k, v = qkv.unbind(0)
    assert not q.is_contiguous()
    go, gs = torch.randn(batch, heads, tokens, dim, generator=g), torch.randn(batch, tokens - 1, generator=g)
    got = ext.attention_forward(q, k, v, 0.25, True)
    want = ext.attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), 0.25, True)
    assert got[0].transpose(1, 2).is_contiguous() and got[1].is_contiguous() and got[2].is_contiguous()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # The backward as the models drive it: q/k/v views, out token-major, grad_out a head-split view of [B, N, C].
    go_view = go.transpose(1, 2).contiguous().transpose(1, 2)
    grads = ext.attention_backward(go_view, gs, q, k, v, got[0], got[2], 0.25, True)
    want_g = ext.attention_backward(go, gs, q.contiguous(), k.contiguous(), v.contiguous(), got[0].contiguous(),
                                    got[2], 0.25, True)
    for a, b in zip(grads, want_g):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_attention_fp64_is_exact():
    g = torch.Generator().manual_seed(1)
    q, k, v, go = (torch.randn(2, 3, 33, 16, generator=g, dtype=torch.float64) for _ in range(4))
    gs = torch.randn(2, 32, generator=g, dtype=torch.float64)
    out, score, lse = ext.attention_forward(q, k, v, 0.3, True)
    assert score.dtype == lse.dtype == torch.float64
    grads = ext.attention_backward(go, gs, q, k, v, out, lse, 0.3, True)
    for got, want in zip((out, score, lse) + tuple(grads), attention_truth(q, k, v, 0.3, go, gs)):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_without_score_request_the_score_is_empty():
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    out, score, lse = ext.attention_forward(q, k, v, 0.5, False)
    assert score.shape == (2, 0) and score.dtype == torch.float32
    assert torch.equal(out, ext.attention_forward(q, k, v, 0.5, True)[0])
