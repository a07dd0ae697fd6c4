"""What surrounds the Triton launches, checked on CPU: device guard, TF32 choice, capability query, autotune switch."""
import contextlib
import types

import pytest
import torch

from supervit.kernels.triton_launch import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="CPU Triton tests need TRITON_INTERPRET=1 (make test)")

if INTERPRET:
    from supervit.kernels import triton_attention, triton_backend, triton_launch, triton_prune
    from supervit.kernels.contract import Case

@pytest.fixture
def precision_flags():
    """Restores the process-global fp32 matmul precision settings after the test."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision, torch.backends.fp32_precision
    yield matmul
    torch.backends.fp32_precision = saved[1]
    matmul.fp32_precision = saved[0]  # "none" also ends the legacy/new mix, so the legacy getter works again


def test_tf32_choice_under_both_precision_apis(precision_flags):
    matmul, choose = precision_flags, triton_attention._dot_precision
    matmul.fp32_precision = "none"
    assert choose(torch.float32) == "ieee", "default: exact fp32 products"
    matmul.allow_tf32 = True
    assert choose(torch.float32) == "tf32", "the legacy API allows TF32"
    matmul.allow_tf32 = False
    assert choose(torch.float32) == "ieee"
    matmul.fp32_precision = "tf32"  # the new API: from here on the legacy getter raises (torch >= 2.9)
    with pytest.raises(RuntimeError):
        matmul.allow_tf32  # noqa: B018 - the getter that the kernels must not read
    assert choose(torch.float32) == "tf32", "the new API allows TF32"
    matmul.fp32_precision = "ieee"
    assert choose(torch.float32) == "ieee", "the new API forbids TF32"
    torch.backends.fp32_precision = "tf32"
    matmul.fp32_precision = "none"
    assert choose(torch.float32) == "tf32", "matmul 'none' inherits the global setting"
    assert choose(torch.bfloat16) == "tf32"  # half types: tensor-core dots whatever the flags


def test_on_device_enters_the_tensors_cuda_device(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with triton_launch.on_device(types.SimpleNamespace(device=torch.device("cuda", 1))):
        pass
    assert entered == [torch.device("cuda", 1)]
    with triton_launch.on_device(torch.zeros(1)):  # CPU: no CUDA call at all
        pass
    assert entered == [torch.device("cuda", 1)]


class _GuardedLaunches:
    """Replaces ``on_device`` in a wrapper module: counts launches made inside / outside the guard."""

    def __init__(self):
        self.depth, self.inside, self.outside, self.devices = 0, 0, 0, []

    @contextlib.contextmanager
    def on_device(self, t):
        self.devices.append(t.device)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def wrap(self, kernel):
        outer = self

        class Kernel:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    if outer.depth:
                        outer.inside += 1
                    else:
                        outer.outside += 1
                    return kernel[grid](*args, **kwargs)
                return launch
        return Kernel()


def test_every_launch_runs_inside_the_device_guard(monkeypatch):
    guard = _GuardedLaunches()
    for module, names in ((triton_attention, ("_attention_fwd_kernel", "_cls_score_kernel", "_bwd_delta_kernel",
                                              "_attention_bwd_kernel")),
                          (triton_prune, ("_prune_tokens_kernel", "_gather_tokens_kernel",
                                          "_gather_tokens_backward_kernel"))):
        monkeypatch.setattr(module, "on_device", guard.on_device)
        for name in names:
            monkeypatch.setattr(module, name, guard.wrap(getattr(module, name)))
    gen = torch.Generator().manual_seed(0)
    q, k, v, go = (torch.randn(1, 2, 9, 16, generator=gen) for _ in range(4))
    out, score, lse = triton_attention.attention_forward(q, k, v, 0.25, True)
    triton_attention.attention_backward(go, torch.randn(1, 8, generator=gen), q, k, v, out, lse, 0.25, True)
    x, s = torch.randn(2, 9, 8, generator=gen), torch.randn(2, 8, generator=gen)
    kept, idx = triton_prune.prune_tokens_forward(x, s, 4)
    triton_prune.keep_topk(s, 4)
    triton_prune.gather_tokens(x, idx)
    triton_prune.gather_tokens_backward(kept, idx, 9)
    assert guard.outside == 0 and guard.inside == 8
    assert all(d == torch.device("cpu") for d in guard.devices)


def test_backend_module_provides_the_contract_interface():
    from supervit.kernels.contract import OPS, Backend

    assert isinstance(triton_backend, Backend)
    assert all(callable(getattr(triton_backend, name)) for name in OPS)


def test_supports_states_the_covered_cases():
    ok = Case("cuda", torch.bfloat16, 197, 64)
    assert triton_backend.supports("attention_forward", ok) and triton_backend.supports("attention_backward", ok)
    assert not triton_backend.supports("attention_forward", ok._replace(dtype=torch.float64))
    assert not triton_backend.supports("attention_forward", ok._replace(head_dim=257))
    assert triton_backend.supports("attention_forward", ok._replace(head_dim=200))  # zero-padded to 256
    assert not triton_backend.supports("attention_backward", ok._replace(empty=True))
    score = Case("cuda", torch.float32, 197)
    assert triton_backend.supports("keep_topk", score) and triton_backend.supports("prune_tokens_forward", score)
    assert triton_backend.supports("keep_topk", score._replace(tokens=8193))
    assert not triton_backend.supports("keep_topk", score._replace(tokens=8194))
    assert not triton_backend.supports("prune_tokens_forward", score._replace(dtype=torch.float64))
    assert triton_backend.supports("gather_tokens", score._replace(dtype=torch.float64))
    assert not triton_backend.supports("gather_tokens_backward", score._replace(empty=True))


def test_one_config_switch_keeps_the_first_fitting_config(monkeypatch):
    tuner = triton_attention._tuned("mma", 64, backward=False)
    monkeypatch.delenv(triton_launch.ONE_CONFIG_ENV, raising=False)
    every = triton_launch.configs_for_length(tuner.configs, {"N_BUCKET": 256})
    assert len(every) > 1
    monkeypatch.setenv(triton_launch.ONE_CONFIG_ENV, "1")
    assert triton_launch.configs_for_length(tuner.configs, {"N_BUCKET": 256}) == every[:1]
