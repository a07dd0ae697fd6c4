"""The public ops on the reference backend: values, gradients, opcheck, compile, and argument errors."""
import math

import pytest
import torch

from supervit import kernels
from supervit.kernels import reference


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("SUPERVIT_BACKEND", "reference")


def qkv(b=2, h=3, n=9, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def test_attention_values_match_softmax_definition():
    q, k, v = qkv(dtype=torch.float32)
    out, score = kernels.attention(q, k, v, return_cls_score=True)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    assert torch.allclose(out, probs @ v, atol=1e-6)
    assert torch.allclose(score, probs.mean(1)[:, 0, 1:], atol=1e-7)
    assert score.dtype == torch.float32 and score.shape == (2, 8)
    assert torch.allclose(kernels.attention(q, k, v, scale=0.3), torch.softmax(q @ k.transpose(-2, -1) * 0.3, -1) @ v,
                          atol=1e-6)


def test_attention_gradients_through_both_outputs():
    q, k, v = qkv()
    gradcheck_inputs = (q, k, v)
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.attention(a, b, c, return_cls_score=True),
                                    gradcheck_inputs)
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.attention(a, b, c), gradcheck_inputs)


def test_keep_topk_descending_and_lower_index_wins_ties():
    score = torch.tensor([[0.1, 0.5, 0.5, 0.9, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert kernels.keep_topk(score, 4).tolist() == [[3, 1, 2, 4], [0, 1, 2, 3]]
    assert kernels.keep_topk(score, 4).dtype == torch.int64


def test_gather_tokens_and_its_backward():
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[5, 0, 2], [1, 3, 4]])
    out = kernels.gather_tokens(x, idx)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[0, 1:], x[0, 1 + idx[0]]) and torch.equal(out[1, 1:], x[1, 1 + idx[1]])
    grad = torch.randn_like(out)
    out.backward(grad)
    want = torch.zeros_like(x)
    want[:, 0] = grad[:, 0]
    for b in range(2):
        want[b, 1 + idx[b]] = grad[b, 1:]
    assert torch.equal(x.grad, want)


@pytest.mark.parametrize("n,ratio", [(65, 0.5), (101, 0.7), (197, 0.7), (10, 1.0), (2, 0.5)])
def test_prune_tokens_keep_count_and_order(n, ratio):
    x = torch.randn(3, n, 5)
    score = torch.rand(3, n - 1)
    kept, idx = kernels.prune_tokens(x, score, ratio)
    k = min(math.ceil(ratio * n), n - 1)
    assert idx.shape == (3, k) and kept.shape == (3, k + 1, 5)
    assert torch.equal(idx, torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k])
    assert torch.equal(kept, reference.gather_tokens(x, idx))


def test_keep_count_spec_examples():
    assert kernels.keep_count(197, 0.7) == 138 and kernels.keep_count(65, 0.5) == 33
    assert kernels.keep_count(2, 1.0) == 1


def test_backend_explicit_backward_matches_autograd_of_composite():
    q, k, v = qkv(dtype=torch.float64)
    out, score = reference.attention(q, k, v, 0.4, return_cls_score=True)
    g_out, g_score = torch.randn_like(out), torch.randn_like(score)
    want = torch.autograd.grad((out * g_out).sum() + (score * g_score).sum(), (q, k, v))
    o, s, lse = reference.attention_forward(q.detach(), k.detach(), v.detach(), 0.4, True)
    got = reference.attention_backward(g_out, g_score, q.detach(), k.detach(), v.detach(), o, lse, 0.4, True)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10)


def opcheck_cases():
    q, k, v = [t.detach().float() for t in qkv()]
    x = torch.randn(2, 9, 4, requires_grad=True)
    score = torch.rand(2, 8)
    idx = kernels.keep_topk(score, 5)
    return [
        (torch.ops.supervit.attention.default, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), 0.3, True)),
        (torch.ops.supervit.attention.default, (q, k, v, 0.3, False)),
        (torch.ops.supervit.keep_topk.default, (score, 5)),
        (torch.ops.supervit.gather_tokens.default, (x, idx)),
        (torch.ops.supervit.prune_tokens.default, (x, score, 5)),
        (torch.ops.supervit.gather_tokens_backward.default, (torch.randn(2, 6, 4), idx, 9)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("call,match", [
    (lambda: kernels.attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)), "q must have 4"),
    (lambda: kernels.attention(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)),
     "one shape"),
    (lambda: kernels.attention(*[torch.randn(1, 2, 5, 4)] * 2, torch.randn(1, 2, 5, 4).half()), "one dtype"),
    (lambda: kernels.attention(*[torch.ones(1, 1, 3, 2, dtype=torch.int32)] * 3), "dtype must be one of"),
    (lambda: kernels.keep_topk(torch.rand(2, 8), 0), r"k must be in \[1, 8\]"),
    (lambda: kernels.keep_topk(torch.rand(2, 8), 9), r"k must be in \[1, 8\]"),
    (lambda: kernels.keep_topk(torch.rand(8), 2), "score must have 2"),
    (lambda: kernels.gather_tokens(torch.rand(2, 9, 4), torch.tensor([[0, 8], [1, 2]])), r"idx values must be in"),
    (lambda: kernels.gather_tokens(torch.rand(2, 9, 4), torch.tensor([[1, 1], [1, 2]])), "unique"),
    (lambda: kernels.gather_tokens(torch.rand(2, 9, 4), torch.tensor([[1, 0]])), "batch size"),
    (lambda: kernels.gather_tokens(torch.rand(2, 9, 4), torch.tensor([[1.0, 0.0]] * 2)), "idx dtype"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8), 0.0), r"keep_ratio must be in \(0, 1\]"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8), 1.5), r"keep_ratio must be in \(0, 1\]"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8), float("nan")), "keep_ratio"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 9), 0.5), r"score must have shape"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_forced_backend_errors(monkeypatch):
    monkeypatch.setenv("SUPERVIT_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="SUPERVIT_BACKEND must be one of"):
        kernels.keep_topk(torch.rand(1, 4), 2)
    monkeypatch.setenv("SUPERVIT_BACKEND", "triton")
    if not kernels.backend_status("triton", "cpu")[0]:
        with pytest.raises(RuntimeError, match="SUPERVIT_BACKEND=triton cannot run on cpu"):
            kernels.keep_topk(torch.rand(1, 4), 2)


def test_reference_backend_is_always_available():
    assert "reference" in kernels.available_backends("cpu")
