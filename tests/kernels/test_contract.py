"""The op contract and the one fallback policy: every backend provides the Backend interface, the dispatcher hands a
backend only the cases it supports, and the kernels import without the model stack (timm, torchvision)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from supervit import kernels
from supervit.kernels import contract, dispatch, reference
from supervit.kernels.contract import Case

ext = pytest.importorskip("supervit.kernels.ext_backend")


@pytest.fixture(autouse=True)
def fresh_choices():
    dispatch.forget_choices()
    yield
    dispatch.forget_choices()


def test_every_backend_provides_the_interface():
    for module in (reference, ext):
        assert isinstance(module, contract.Backend), module.NAME
    assert set(contract.OPS) == {"attention_forward", "attention_backward", "keep_topk", "gather_tokens",
                                 "gather_tokens_backward", "prune_tokens_forward"}


def test_public_and_ext_ops_share_the_contract_schema():
    for spec in contract.OPS.values():
        public = getattr(torch.ops.supervit, spec.name).default._schema
        compiled = getattr(torch.ops.supervit, f"ext_{spec.name}").default._schema
        assert [a.name for a in public.arguments] == [a.name for a in compiled.arguments], spec.name
        assert str(public).split("(", 1)[1] == str(compiled).split("(", 1)[1], spec.name


def test_unsupported_cases_go_to_the_reference(monkeypatch):
    """A case the backend refuses runs on the reference, through the public op, with the reference's result."""
    monkeypatch.setenv("SUPERVIT_BACKEND", "ext")
    monkeypatch.setattr(ext, "supports", lambda op, case: case.dtype != torch.float64)
    assert dispatch.backend_for("keep_topk", Case("cpu", torch.float64, 9)) is reference
    assert dispatch.backend_for("keep_topk", Case("cpu", torch.float32, 9)) is ext
    calls = []
    monkeypatch.setattr(reference, "attention_forward",
                        lambda *a: calls.append(a[0].dtype) or contract.OPS["attention_forward"].fake(*a))
    q = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    out = kernels.attention(q, q, q)
    assert calls == [torch.float64] and out.shape == q.shape
    kernels.attention(q.float(), q.float(), q.float())
    assert calls == [torch.float64], "a supported case must not reach the reference"


def test_choice_follows_the_forced_backend(monkeypatch):
    case = Case("cpu", torch.float32, 65, 64)
    monkeypatch.setenv("SUPERVIT_BACKEND", "reference")
    assert dispatch.backend_for("attention_forward", case) is reference
    monkeypatch.setenv("SUPERVIT_BACKEND", "ext")
    assert dispatch.backend_for("attention_forward", case) is ext
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.backend_for("attention", case)


@pytest.mark.parametrize("op,case,expected", [
    ("attention_forward", Case("cuda", torch.float64, 65, 64), False),
    ("attention_backward", Case("cuda", torch.bfloat16, 65, 20), False),
    ("attention_forward", Case("cuda", torch.float16, 197, 64), True),
    ("keep_topk", Case("cuda", torch.float32, 5000), False),
    ("prune_tokens_forward", Case("cuda", torch.float64, 197), False),
    ("prune_tokens_forward", Case("cuda", torch.bfloat16, 197), True),
    ("gather_tokens", Case("cuda", torch.float64, 5000), True),
    ("attention_forward", Case("cpu", torch.float64, 5000, 20), True),
    ("gather_tokens", Case("cpu", torch.float32, 0, 0, True), False),
])
def test_ext_supports_what_its_kernels_take(op, case, expected):
    assert ext.supports(op, case) is expected


def test_kernels_import_without_timm_and_torchvision():
    """supervit.kernels needs only torch: a process where timm and torchvision cannot be imported runs the ops."""
    script = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("timm", "torchvision"):
                    raise ModuleNotFoundError(f"{name} is blocked", name=name)

        sys.meta_path.insert(0, Block())
        import torch
        import supervit.kernels as K
        x = torch.randn(2, 9, 4)
        kept, idx = K.prune_tokens(x, torch.rand(2, 8), 0.5)
        assert kept.shape == (2, idx.shape[1] + 1, 4)
        assert "timm" not in sys.modules and "torchvision" not in sys.modules
        try:
            import supervit.models
        except ImportError as err:
            print("models:", err)
    """)
    env = {**os.environ, "SUPERVIT_BACKEND": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "models:" in result.stdout and "blocked" in result.stdout


def test_eager_calls_skip_the_op_layer_only_when_nothing_is_recorded(monkeypatch):
    """No grad: the implementation runs directly (same values); autograd or a dispatch mode: the registered op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from supervit.kernels import ops

    calls = []
    registered = ops._attention
    monkeypatch.setattr(ops, "_attention", lambda *a: calls.append(1) or registered(*a))
    q = torch.randn(1, 2, 9, 8)
    with torch.no_grad():
        direct = kernels.attention(q, q, q, return_cls_score=True)
    assert calls == []
    qg = q.clone().requires_grad_()
    recorded = kernels.attention(qg, qg, qg, return_cls_score=True)
    assert calls == [1] and recorded[0].grad_fn is not None
    for a, b in zip(direct, recorded):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Passthrough():
        kernels.attention(q, q, q)
    assert calls == [1, 1]
