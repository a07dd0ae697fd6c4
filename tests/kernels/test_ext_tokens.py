"""The compiled extension (supervit._C) on CPU: build status, top-k, gathers and the fused prune vs reference.py.

Integer outputs and gathers must be bit-exact: indices on random and heavily tied scores (signed zeros, NaN),
every dtype, odd sequence lengths, B = 1 and B > 1.
"""
import shutil

import pytest
import torch

from oracle import tied_scores
from supervit import kernels
from supervit.kernels import dispatch, reference

ext = pytest.importorskip("supervit.kernels.ext_backend")

SEQ_LENS = [9, 65, 101, 145, 197]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
DTYPE_IDS = ["fp32", "bf16", "fp16", "fp64"]


@pytest.fixture(autouse=True)
def ext_backend(monkeypatch):
    monkeypatch.setenv("SUPERVIT_BACKEND", "ext")


def has_compiler() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def test_extension_is_built_where_a_compiler_exists():
    ok, why = dispatch.backend_status("ext", "cpu")
    if not has_compiler():
        pytest.skip(f"no C++ compiler on this machine; ext backend: {why}")
    assert ok, f"the ext backend must be built on a machine with a compiler: {why}"


def test_cpu_prefers_ext_when_not_forced(monkeypatch):
    monkeypatch.delenv("SUPERVIT_BACKEND")
    assert dispatch.select_backend("cpu").NAME == "ext"


def test_cuda_status_is_reported_without_a_device():
    ok, why = ext.is_available(torch.device("cuda"))
    assert ok or why  # never a silent False


def scores(batch, num, dtype, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(batch, num, generator=g).to(dtype)
    s = tied_scores(batch, num, generator=g)
    if kind == "nan":
        s[:, ::7] = float("nan")
        s[:, 1::11] = float("inf")
        s[:, 2::13] = float("-inf")
    return s.to(dtype)


@pytest.mark.parametrize("kind", ["random", "ties", "nan"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("tokens", SEQ_LENS)
@pytest.mark.parametrize("batch", [1, 5])
def test_keep_topk_matches_reference_exactly(batch, tokens, dtype, kind):
    score = scores(batch, tokens - 1, dtype, kind, seed=tokens)
    for k in sorted({1, 2, reference.keep_count(tokens, 0.5), reference.keep_count(tokens, 0.7), tokens - 1}):
        got = ext.keep_topk(score, k)
        assert got.dtype == torch.int64 and got.shape == (batch, k)
        assert torch.equal(got, reference.keep_topk(score, k)), (k, score)


def test_keep_topk_tie_rule_by_hand():
    score = torch.tensor([[0.1, 0.5, 0.5, 0.9, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                          [0.0, -0.0, float("nan"), 0.0, -1.0, float("nan")]])
    assert ext.keep_topk(score, 4).tolist() == [[3, 1, 2, 4], [0, 1, 2, 3], [2, 5, 0, 1]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("tokens", SEQ_LENS)
@pytest.mark.parametrize("batch", [1, 4])
def test_gather_and_backward_match_reference_exactly(batch, tokens, dtype):
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(batch, tokens, 24, generator=g).to(dtype)
    k = reference.keep_count(tokens, 0.7)
    idx = torch.stack([torch.randperm(tokens - 1, generator=g)[:k] for _ in range(batch)])  # [B, k]
    assert torch.equal(ext.gather_tokens(x, idx), reference.gather_tokens(x, idx))
    assert torch.equal(ext.gather_tokens(x, idx.int()), reference.gather_tokens(x, idx))
    grad = torch.randn(batch, k + 1, 24, generator=g).to(dtype)
    want = reference.gather_tokens_backward(grad, idx, tokens)
    assert torch.equal(ext.gather_tokens_backward(grad, idx, tokens), want)


@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tokens", SEQ_LENS)
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_prune_matches_reference_exactly(batch, tokens, dtype, kind):
    x = torch.randn(batch, tokens, 40).to(dtype)
    score = scores(batch, tokens - 1, torch.float32, kind, seed=tokens)
    for ratio in (0.5, 0.7, 1.0):
        k = reference.keep_count(tokens, ratio)
        got_x, got_idx = ext.prune_tokens_forward(x, score, k)
        want_x, want_idx = reference.prune_tokens_forward(x, score, k)
        assert torch.equal(got_idx, want_idx) and torch.equal(got_x, want_x)


def test_public_prune_op_forward_and_backward_on_ext():
    x = torch.randn(4, 197, 64, requires_grad=True)
    score = torch.rand(4, 196)
    kept, idx = kernels.prune_tokens(x, score, 0.7)
    g = torch.randn_like(kept)
    (grad,) = torch.autograd.grad(kept, x, g)
    x_ref = x.detach().clone().requires_grad_()
    kept_ref, idx_ref = reference.prune_tokens(x_ref, score, 0.7)
    (grad_ref,) = torch.autograd.grad(kept_ref, x_ref, g)
    assert torch.equal(idx, idx_ref) and torch.equal(kept, kept_ref) and torch.equal(grad, grad_ref)


def test_noncontiguous_inputs_are_handled():
    x = torch.randn(3, 40, 65).transpose(1, 2)  # [3, 65, 40], strided
    score = torch.randn(196, 3).t()[:, :64]      # [3, 64], strided
    kept, idx = torch.ops.supervit.ext_prune_tokens(x, score, 20)
    want_x, want_idx = reference.prune_tokens_forward(x, score, 20)
    assert torch.equal(idx, want_idx) and torch.equal(kept, want_x)


@pytest.mark.parametrize("call,match", [
    (lambda: torch.ops.supervit.ext_keep_topk(torch.randn(2, 8), 9), "k must be in"),
    (lambda: torch.ops.supervit.ext_gather_tokens(torch.randn(2, 9, 4), torch.tensor([[0, 8], [1, 2]])),
     "idx values must be in"),
    (lambda: torch.ops.supervit.ext_gather_tokens(torch.randn(2, 9, 4), torch.zeros(2, 2)), "idx must be int64"),
    (lambda: torch.ops.supervit.ext_prune_tokens(torch.randn(2, 9, 4), torch.randn(2, 7), 3), "score must be"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
