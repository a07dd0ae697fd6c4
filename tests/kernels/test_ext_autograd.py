"""The public ops on the ext backend: fp64 gradcheck, opcheck, deterministic backward; CUDA checks (gpu mark)."""
import pytest
import torch

from supervit import kernels
from supervit.kernels import reference
from supervit.kernels.contract import accumulation_dtype

ext = pytest.importorskip("supervit.kernels.ext_backend")


@pytest.fixture(autouse=True)
def ext_backend(monkeypatch):
    monkeypatch.setenv("SUPERVIT_BACKEND", "ext")


@pytest.fixture
def one_thread():
    """gradcheck runs thousands of tiny calls: intra-op threads only add barrier waits (slow on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rand(*shape, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


@pytest.mark.parametrize("tokens", [2, 9])
def test_gradcheck_attention_both_outputs(tokens, one_thread):
    q, k, v = (rand(2, 2, tokens, 4, seed=s) for s in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.attention(a, b, c, return_cls_score=True), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.attention(a, b, c, 0.7), (q, k, v))


def test_gradcheck_attention_score_only(one_thread):
    q, k, v = (rand(2, 2, 11, 4, seed=s) for s in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.attention(a, b, c, return_cls_score=True)[1], (q, k, v))


def test_gradcheck_prune_and_gather(one_thread):
    x = rand(2, 11, 5)
    score = rand(2, 10, grad=False, seed=3)
    assert torch.autograd.gradcheck(lambda t: kernels.prune_tokens(t, score, 0.5)[0], (x,))
    idx = torch.tensor([[4, 0, 9], [1, 7, 2]])
    assert torch.autograd.gradcheck(lambda t: kernels.gather_tokens(t, idx), (x,))


def opcheck_cases():
    q, k, v = (rand(2, 3, 9, 8, dtype=torch.float32, seed=s) for s in range(3))
    q64, k64, v64 = (rand(1, 2, 5, 4, seed=s) for s in range(3))
    x = rand(2, 9, 4, dtype=torch.float32)
    score = torch.rand(2, 8)
    idx = reference.keep_topk(score, 5)
    out, s, lse = ext.attention_forward(q.detach(), k.detach(), v.detach(), 0.3, True)
    qkv = rand(2, 9, 3, 3, 8, dtype=torch.float32, seed=7).permute(2, 0, 3, 1, 4)  # strided views, as in the models
    ops = torch.ops.supervit
    return {
        "attention_strided": (ops.attention.default, (*qkv.unbind(0), 0.3, True)),
        "attention_score": (ops.attention.default, (q, k, v, 0.3, True)),
        "attention_plain": (ops.attention.default, (q, k, v, 0.3, False)),
        "attention_fp64": (ops.attention.default, (q64, k64, v64, 0.5, True)),
        "attention_backward": (ops.attention_backward.default,
                               (torch.randn_like(out), torch.randn_like(s), q.detach(), k.detach(), v.detach(), out,
                                lse, 0.3, True)),
        "keep_topk": (ops.keep_topk.default, (score, 5)),
        "gather_tokens": (ops.gather_tokens.default, (x, idx)),
        "prune_tokens": (ops.prune_tokens.default, (x, score, 5)),
        "gather_tokens_backward": (ops.gather_tokens_backward.default, (torch.randn(2, 6, 4), idx, 9)),
        "ext_prune_tokens": (ops.ext_prune_tokens.default, (x.detach(), score, 5)),
        "ext_attention": (ops.ext_attention.default, (q.detach(), k.detach(), v.detach(), 0.3, True)),
    }


@pytest.mark.parametrize("case", list(opcheck_cases()))
def test_opcheck_on_ext_backend(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


def attention_grads(q, k, v, go, gs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, score = kernels.attention(q, k, v, return_cls_score=True)
    return torch.autograd.grad((out * go).sum() + (score * gs).sum(), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backward_is_deterministic(dtype):
    q, k, v, go = (rand(4, 6, 197, 64, dtype=dtype, seed=s, grad=False) for s in range(4))
    gs = rand(4, 196, dtype=torch.float32, seed=5, grad=False)
    first, second = attention_grads(q, k, v, go, gs), attention_grads(q, k, v, go, gs)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    x = rand(8, 197, 384, dtype=dtype, seed=6)
    score = torch.rand(8, 196)
    g = torch.randn(8, reference.keep_count(197, 0.7) + 1, 384).to(dtype)
    grads = [torch.autograd.grad(kernels.prune_tokens(x, score, 0.7)[0], x, g)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------------------------
# CUDA (skipped without a device)
# ----------------------------------------------------------------------------------------------------------------
def require_ext_cuda():
    """Skip, with the reason, when the extension was built without CUDA kernels; any other cause fails."""
    ok, why = ext.is_available(torch.device("cuda"))
    if not ok and "without CUDA sources" in why:
        pytest.skip(f"the extension has no CUDA kernels: {why}")
    assert ok, why


def test_ext_cuda_tests_skip_with_the_reason_without_cuda_kernels(monkeypatch):
    monkeypatch.setattr(ext, "_status", {})
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: key != "CUDA")
    with pytest.raises(pytest.skip.Exception, match="no CUDA kernels: .*built without CUDA sources"):
        require_ext_cuda()


@pytest.mark.gpu
def test_cuda_kernels_are_built():
    require_ext_cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("tokens", [9, 65, 197, 5000])
def test_cuda_token_ops_match_reference_exactly(tokens, dtype):
    """Through the public ops (SUPERVIT_BACKEND=ext): the ext kernels where they apply, the reference elsewhere."""
    require_ext_cuda()
    ops = torch.ops.supervit
    g = torch.Generator().manual_seed(tokens)
    score = (torch.randint(0, 4, (3, tokens - 1), generator=g).float() - 1).to(dtype).cuda()
    score[:, ::5] = -0.0
    x = torch.randn(3, tokens, 48, generator=g).to(dtype).cuda()
    k = reference.keep_count(tokens, 0.7)
    idx = ops.keep_topk(score, k)
    assert torch.equal(idx.cpu(), reference.keep_topk(score.cpu(), k))
    kept, idx2 = ops.prune_tokens(x, score, k)
    assert torch.equal(idx2, idx) and torch.equal(kept, reference.gather_tokens(x, idx))
    assert torch.equal(ops.gather_tokens(x, idx), kept)
    grad = torch.randn_like(kept)
    want = reference.gather_tokens_backward(grad, idx, tokens)
    assert torch.equal(ops.gather_tokens_backward(grad, idx, tokens), want)


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [64, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_attention_matches_reference(dtype, dim):
    """Through the public ops (SUPERVIT_BACKEND=ext): fp64 and head dim 20 run on the reference backend."""
    require_ext_cuda()
    ops = torch.ops.supervit
    g = torch.Generator().manual_seed(0)
    q, k, v, go = (torch.randn(2, 6, 197, dim, generator=g).to(dtype).cuda() for _ in range(4))
    gs = torch.randn(2, 196, generator=g).cuda().to(accumulation_dtype(dtype))
    got = ops.attention(q, k, v, dim ** -0.5, True)
    assert got[0].transpose(1, 2).is_contiguous(), "out must be stored token-major on CUDA too"
    want = reference.attention_forward(q.double(), k.double(), v.double(), dim ** -0.5, True)
    tol = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}[dtype]  # fp32 may run as TF32
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max().item() < tol
    grads = ops.attention_backward(go, gs, q, k, v, got[0], got[2], dim ** -0.5, True)
    want_g = reference.attention_backward(go.double(), gs.double(), q.double(), k.double(), v.double(), want[0],
                                          want[2], dim ** -0.5, True)
    for a, b in zip(grads, want_g):
        assert (a.double() - b).abs().max().item() < 5 * tol
    again = ops.attention_backward(go, gs, q, k, v, got[0], got[2], dim ** -0.5, True)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.parametrize("backend", ["ext", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_heads_merge_back_into_tokens_without_a_copy(backend, dtype, monkeypatch):
    """The op returns out token-major, so the models' [B, H, N, D] -> [B, N, C] merge is a view of it, in the
    forward and for the gradient flowing back, and the values equal the contiguous reference."""
    monkeypatch.setenv("SUPERVIT_BACKEND", backend)
    batch, tokens, heads, dim = 2, 17, 3, 8
    qkv = rand(batch, tokens, 3, heads, dim, dtype=dtype, seed=4)  # the fused projection, as in the models
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out, score = kernels.attention(q, k, v, return_cls_score=True)
    merged = out.transpose(1, 2).reshape(batch, tokens, heads * dim)
    assert merged.data_ptr() == out.data_ptr() and merged._base is not None
    want_out, want_score = reference.attention(q.detach(), k.detach(), v.detach(), dim ** -0.5, True)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.detach(), want_out, **tol)
    (merged.square().sum() + score.sum()).backward()
    assert qkv.grad is not None and torch.isfinite(qkv.grad).all()
