"""The core-ATen / ONNX translations of the supervit ops: no supervit op left, values and indices of the ops."""
import pytest
import torch

from supervit import kernels
from supervit.kernels import export_decompositions as translations
from supervit.kernels import reference


class OpsModule(torch.nn.Module):
    """Attention with the CLS score, then pruning, and the two standalone ops: every forward op of the models."""

    def forward(self, q, k, v, x):
        out, score = kernels.attention(q, k, v, return_cls_score=True)
        kept, idx = kernels.prune_tokens(x, score, 0.5)
        top = kernels.keep_topk(score, 3)
        gathered = kernels.gather_tokens(x, top)
        return out, score, kept, idx, top, gathered


def _inputs(batch=2, heads=3, tokens=17, dim=8, channels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=g) for _ in range(3))
    return q, k, v, torch.randn(batch, tokens, channels, generator=g)


def _supervit_targets(program):
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function" and "supervit" in str(n.target)}


def test_every_supervit_op_has_a_translation():
    # supervit::ext_<op> are the C++ extension's implementations, called inside the public op, never traced
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("supervit::") and not n.startswith("supervit::ext_")}
    covered = {op.name().split("::")[1] for op in translations.aten_translations()}
    assert registered, "no supervit op is registered"
    assert registered <= covered, f"ops without an export translation: {sorted(registered - covered)}"


def test_core_aten_program_has_no_supervit_op_and_matches_the_ops():
    inputs = _inputs()
    program = torch.export.export(OpsModule(), inputs)
    assert _supervit_targets(program), "the traced program should call the supervit ops before translation"
    core = translations.to_core_aten(program)
    assert not _supervit_targets(core)
    expected, got = OpsModule()(*inputs), core.module()(*inputs)
    for name, e, g in zip(["out", "score", "kept", "idx", "top", "gathered"], expected, got):
        if e.dtype == torch.int64:
            assert torch.equal(e, g), name
        else:
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6, msg=name)
    # and against the executable specification directly
    out_ref, score_ref = reference.attention(*inputs[:3], return_cls_score=True)
    torch.testing.assert_close(got[0], out_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], score_ref, rtol=0, atol=1e-6)


def test_attention_translation_lse_and_token_major_layout():
    q, k, v, _ = _inputs(tokens=9)
    out, score, lse = translations.attention(q, k, v, 0.3, False)
    assert score.shape == (2, 0)
    assert out.transpose(1, 2).is_contiguous()  # token-major, as every backend stores it
    torch.testing.assert_close(lse, torch.logsumexp((q @ k.transpose(-2, -1)) * 0.3, dim=-1))
    op_out, _, op_lse = torch.ops.supervit.attention(q, k, v, 0.3, False)
    torch.testing.assert_close(out, op_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(lse, op_lse, rtol=0, atol=1e-5)


def _translation(op: str):
    """The translation export uses for ``supervit::<op>``."""
    return translations.aten_translations()[getattr(torch.ops.supervit, op).default]


def test_backward_translations_match_the_ops():
    q, k, v, x = _inputs(tokens=11)
    out, score, lse = torch.ops.supervit.attention(q, k, v, 0.25, True)
    g = torch.Generator().manual_seed(1)
    grad_out, grad_score = torch.randn(out.shape, generator=g), torch.randn(score.shape, generator=g)
    expected = torch.ops.supervit.attention_backward(grad_out, grad_score, q, k, v, out, lse, 0.25, True)
    got = _translation("attention_backward")(grad_out, grad_score, q, k, v, out, lse, 0.25, True)
    for e, r in zip(expected, got):
        torch.testing.assert_close(r, e, rtol=1e-5, atol=1e-5)
    idx = torch.tensor([[4, 0, 7], [1, 9, 2]])
    grad_kept = torch.randn(2, 4, x.shape[2], generator=g)
    assert torch.equal(_translation("gather_tokens_backward")(grad_kept, idx, 11),
                       torch.ops.supervit.gather_tokens_backward(grad_kept, idx, 11))


TIED = torch.tensor([[0.5, 0.2, 0.5, 0.9, 0.2, 0.5, 0.9, 0.1],
                     [0.3, 0.3, 0.3, 0.3, 0.7, 0.7, 0.3, 0.3]])


class TopK(torch.nn.Module):
    def forward(self, score):
        return kernels.keep_topk(score, 5)


def test_keep_topk_translation_breaks_ties_by_lower_index():
    expected = torch.tensor([[3, 6, 0, 2, 5], [4, 5, 0, 1, 2]])
    assert torch.equal(_translation("keep_topk")(TIED, 5), expected)
    core = translations.to_core_aten(torch.export.export(TopK(), (TIED,)))
    assert torch.equal(core.module()(TIED), expected)


def test_onnx_topk_keeps_the_lower_index_on_ties(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    core = translations.to_core_aten(torch.export.export(TopK(), (TIED,)))
    path = str(tmp_path / "topk.onnx")
    torch.onnx.export(core, dynamo=True, custom_translation_table=translations.onnx_translations(),
                      verbose=False).save(path)
    assert "TopK" in {n.op_type for n in onnx.load(path).graph.node}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: TIED.numpy()})
    assert torch.equal(torch.from_numpy(got), reference.keep_topk(TIED, 5))
