"""Triton top-k / gather / fused pruning under TRITON_INTERPRET=1 (CPU): exact equality with the reference."""
import pytest
import torch

from oracle import tied_scores

from supervit.kernels.triton_launch import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="CPU Triton tests need TRITON_INTERPRET=1 (make test)")

if INTERPRET:
    from supervit.kernels import reference, triton_backend, triton_prune

# (B, N, C, k): N not a power of two, k = 1 and k = N-1 included
CASES = [(1, 9, 16, 4), (3, 17, 24, 16), (2, 65, 32, 33), (1, 34, 8, 1), (2, 101, 40, 100), (2, 2, 4, 1)]


def _data(batch, tokens, channels, dtype, seed=0, ties=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, channels, generator=gen).to(dtype)
    score = tied_scores(batch, tokens - 1, generator=gen) if ties else torch.randn(batch, tokens - 1, generator=gen)
    return x, score


@pytest.mark.parametrize("ties", [True, False], ids=["ties", "distinct"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}N{}C{}k{}".format(*c))
def test_prune_forward_and_backward_exact(case, ties):
    batch, tokens, channels, k = case
    x, score = _data(batch, tokens, channels, torch.float32, ties=ties)
    kept, idx = triton_backend.prune_tokens_forward(x, score, k)
    ref_kept, ref_idx = reference.prune_tokens_forward(x, score, k)
    assert idx.dtype == torch.int64 and torch.equal(idx, ref_idx)
    assert torch.equal(kept, ref_kept)
    assert torch.equal(triton_backend.keep_topk(score, k), ref_idx)
    assert torch.equal(triton_backend.gather_tokens(x, ref_idx), ref_kept)
    grad = torch.randn(batch, k + 1, channels)
    assert torch.equal(triton_backend.gather_tokens_backward(grad, ref_idx, tokens),
                       reference.gather_tokens_backward(grad, ref_idx, tokens))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_tokens_and_scores(dtype):
    """Pure data movement, so half types are exact too; fp16/bf16 scores keep their ties."""
    x, score = _data(2, 65, 24, dtype)
    score = (score * 0.37).to(dtype)
    kept, idx = triton_backend.prune_tokens_forward(x, score, 40)
    ref_kept, ref_idx = reference.prune_tokens_forward(x, score, 40)
    assert torch.equal(idx, ref_idx) and torch.equal(kept, ref_kept)
    grad = torch.randn(2, 41, 24).to(dtype)
    assert torch.equal(triton_backend.gather_tokens_backward(grad, idx, 65),
                       reference.gather_tokens_backward(grad, idx, 65))


def test_special_values_order_like_torch_sort():
    """Signed zeros tie, NaN ranks first, +-inf in place, lower index wins ties."""
    nan, inf = float("nan"), float("inf")
    score = torch.tensor([[0.0, -0.0, nan, 1.0, -inf, inf, nan, -0.0, -1.0, 1e-30, 1.0, -1e-30]])
    for k in (1, 5, 12):
        assert torch.equal(triton_backend.keep_topk(score, k), reference.keep_topk(score, k))


def test_small_tiles_many_chunks():
    """Several row chunks per sample and several channel steps (the GPU tiling, small)."""
    x, score = _data(2, 34, 20, torch.float32)
    ref_kept, ref_idx = reference.prune_tokens_forward(x, score, 23)
    kept, idx = triton_prune.prune_tokens_forward(x, score, 23, rows=8, block_c=8)
    assert torch.equal(idx, ref_idx) and torch.equal(kept, ref_kept)
    assert torch.equal(triton_prune.gather_tokens(x, ref_idx, rows=8, block_c=8), ref_kept)
    grad = torch.randn(2, 24, 20)
    got = triton_prune.gather_tokens_backward(grad, ref_idx, 34, rows=8, block_c=8, k_step=4)
    assert torch.equal(got, reference.gather_tokens_backward(grad, ref_idx, 34))


def test_unfused_path_above_fused_limit(monkeypatch):
    """Past FUSED_MAX_K the fused op runs top-k and gather as two launches: same results."""
    monkeypatch.setattr(triton_prune, "FUSED_MAX_K", 8)
    x, score = _data(2, 33, 8, torch.float32)
    kept, idx = triton_prune.prune_tokens_forward(x, score, 20)
    ref_kept, ref_idx = reference.prune_tokens_forward(x, score, 20)
    assert torch.equal(idx, ref_idx) and torch.equal(kept, ref_kept)
