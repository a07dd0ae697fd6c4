"""The per-call fast path: every private symbol it uses exists here (a new PyTorch or Python that drops one fails
this test), it skips the custom-op layer only when nothing is to be recorded, it gives the custom op's results, and
SUPERVIT_FAST_PATH=0 turns it off."""
import os
import subprocess
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from supervit import kernels
from supervit.kernels import fast_path, ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _DispatchMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_every_private_symbol_the_fast_path_uses_exists():
    assert fast_path.missing_private_symbols() == []
    assert fast_path.ENABLED  # on by default


def test_nothing_to_record_only_for_plain_eager_calls_without_grad():
    x = torch.randn(2, 3)
    assert fast_path.nothing_to_record(x)
    w = torch.randn(2, 3, requires_grad=True)
    assert not fast_path.nothing_to_record(x, w)  # an autograd graph to build
    with torch.no_grad():
        assert fast_path.nothing_to_record(x, w)
    assert not fast_path.nothing_to_record(torch.nn.Parameter(x))  # a tensor subclass
    with _FunctionMode():
        assert not fast_path.nothing_to_record(x)
    with _DispatchMode():
        assert not fast_path.nothing_to_record(x)
    assert not torch.func.vmap(lambda t: torch.tensor(float(fast_path.nothing_to_record(t))))(x).any()


def test_environ_lookup_follows_assignments(monkeypatch):
    lookup = fast_path.environ_lookup("SUPERVIT_FAST_PATH_PROBE")
    monkeypatch.delenv("SUPERVIT_FAST_PATH_PROBE", raising=False)
    assert lookup() is None
    monkeypatch.setenv("SUPERVIT_FAST_PATH_PROBE", "ext")
    assert lookup() in ("ext", b"ext")


def test_fast_path_and_custom_op_give_the_same_results():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    x, score = torch.randn(2, 17, 8), torch.rand(2, 16)
    with torch.no_grad():
        out, s = kernels.attention(q, k, v, return_cls_score=True)
        out_op, s_op, _ = ops._attention(q, k, v, 8 ** -0.5, True)
        kept, idx = kernels.prune_tokens(x, score, 0.5)
        kept_op, idx_op = ops._prune_tokens(x, score, idx.shape[1])
    assert torch.equal(out, out_op) and torch.equal(s, s_op)
    assert torch.equal(kept, kept_op) and torch.equal(idx, idx_op)


def test_switched_off_every_call_goes_through_the_custom_op():
    check = ("import torch\nfrom supervit.kernels import fast_path, ops\n"
             "x = torch.randn(2, 3)\n"
             "print(fast_path.REQUESTED, fast_path.ENABLED, fast_path.nothing_to_record(x), "
             "ops._nothing_to_record(x))\n")
    env = {**os.environ, "SUPERVIT_FAST_PATH": "0"}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False", "False"]
