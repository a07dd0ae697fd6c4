"""The public ops run through the Triton backend on CPU when forced (SUPERVIT_BACKEND=triton, interpreter)."""
import pytest
import torch

from oracle import attention_truth

from supervit.kernels.triton_launch import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="CPU Triton tests need TRITON_INTERPRET=1 (make test)")

import supervit.kernels as K  # noqa: E402
from supervit.kernels import reference  # noqa: E402


@pytest.fixture
def forced_triton(monkeypatch):
    monkeypatch.setenv("SUPERVIT_BACKEND", "triton")
    assert K.select_backend("cpu").NAME == "triton"


def test_triton_available_on_cpu_only_under_interpreter():
    assert K.backend_status("triton", "cpu") == (True, "")
    assert "triton" in K.available_backends("cpu")


def test_public_attention_autograd(forced_triton):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 17, 32, generator=gen, requires_grad=True) for _ in range(3))
    go, gs = torch.randn(2, 3, 17, 32, generator=gen), torch.randn(2, 16, generator=gen)
    out, score = K.attention(q, k, v, return_cls_score=True)
    ((out * go).sum() + (score * gs).sum()).backward()
    truth = attention_truth(q, k, v, 32 ** -0.5, go, gs)
    for got, tr in zip((out, score, q.grad, k.grad, v.grad), (truth.out, truth.score, truth.dq, truth.dk, truth.dv)):
        torch.testing.assert_close(got.double(), tr, atol=2e-5, rtol=1e-4)
    q.grad = None  # score alone: the backward gets a zero grad_out
    K.attention(q, k, v, return_cls_score=True)[1].mul(gs).sum().backward()
    torch.testing.assert_close(q.grad.double(), attention_truth(q, k, v, 32 ** -0.5, None, gs).dq, atol=2e-5,
                               rtol=1e-4)


def test_public_pruning_ops(forced_triton):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 65, 16, generator=gen, requires_grad=True)
    score = torch.randint(0, 3, (2, 64), generator=gen).float()
    kept, idx = K.prune_tokens(x, score, 0.5)
    ref_kept, ref_idx = reference.prune_tokens(x.detach(), score, 0.5)
    assert idx.shape == (2, reference.keep_count(65, 0.5)) and torch.equal(idx, ref_idx)
    assert torch.equal(kept, ref_kept)
    grad = torch.randn_like(kept)
    kept.backward(grad)
    assert torch.equal(x.grad, reference.gather_tokens_backward(grad, ref_idx, 65))
    assert torch.equal(K.keep_topk(score, 10), reference.keep_topk(score, 10))
    x.grad = None
    K.gather_tokens(x, ref_idx).backward(grad)
    assert torch.equal(x.grad, reference.gather_tokens_backward(grad, ref_idx, 65))


def test_opcheck_with_triton_backend(forced_triton):
    """Fake impls, schema and autograd registration agree with what the Triton backend returns."""
    from supervit.kernels import ops

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 9, 16, generator=gen, requires_grad=True) for _ in range(3))
    torch.library.opcheck(ops._attention, (q, k, v, 0.25, True), test_utils=("test_schema", "test_faketensor"))
    x, score = torch.randn(2, 9, 8, generator=gen), torch.randn(2, 8, generator=gen)
    torch.library.opcheck(ops._prune_tokens, (x, score, 5), test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_traces_through_triton_ops(forced_triton):
    """torch.compile(fullgraph=True) over the opaque ops (aot_eager: no C++ toolchain needed on CPU)."""
    def block(x, q, k, v):
        out, score = K.attention(q, k, v, return_cls_score=True)
        kept, _ = K.prune_tokens(x + out.mean(1), score, 0.7)
        return kept.square().sum()

    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 17, 16, generator=gen, requires_grad=True) for _ in range(3))
    x = torch.randn(2, 17, 16, generator=gen, requires_grad=True)
    eager = block(x, q, k, v)
    eager_grads = torch.autograd.grad(eager, (x, q, k, v))
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(x, q, k, v)
    for got, want in zip(torch.autograd.grad(compiled, (x, q, k, v)), eager_grads):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(compiled, eager)


def test_model_step_through_triton_matches_the_reference(monkeypatch):
    """A small super-network, pruned sub-network, forward + backward: the model passes q, k, v as views of its qkv
    projection, which reach the Triton kernels as they are; values and every gradient match the reference."""
    from supervit.models import SuperDeiT

    torch.manual_seed(0)
    model = SuperDeiT(img_sizes=(16, 24), keep_ratios=(0.5, 1.0), prune_layers=(1,), patch_size=4, in_chans=1,
                      num_classes=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    x = torch.randn(2, 1, 24, 24)
    results = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SUPERVIT_BACKEND", backend)
        model.zero_grad()
        logits = model(x, img_size=24, keep_ratio=0.5)
        logits.square().sum().backward()
        results[backend] = [logits.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(results["triton"]) == len(results["reference"]) > 10
    for got, want in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
