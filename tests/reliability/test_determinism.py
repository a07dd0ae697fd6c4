"""Determinism on CPU: two runs with one seed give identical losses and weights; the ops' backward passes (default
CPU backend) and a whole super-network's backward are bit-identical from run to run."""
from __future__ import annotations

import json

import pytest
import torch

from supervit import kernels
from supervit.kernels.dispatch import select_backend
from supervit.models import SuperDeiT
from train import digits, main_deit

from reliability_helpers import TINY_RUN, assert_same_state, checkpoint
from trainer_helpers import TINY_DEMO_MODEL


def _run(out, *extra):
    main_deit.main(TINY_RUN + ["--output", str(out), *extra])
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    losses = [{k: v for k, v in r.items() if k.startswith("train_loss")} for r in records]
    return losses, checkpoint(out / "checkpoint.pth")


def test_two_runs_same_seed_identical_losses_and_weights(tmp_path):
    losses_a, ckpt_a = _run(tmp_path / "a")
    losses_b, ckpt_b = _run(tmp_path / "b")
    assert len(losses_a) == 2 and losses_a == losses_b  # exact float equality, every loss of every epoch
    assert_same_state(ckpt_a["model"], ckpt_b["model"])
    assert_same_state(ckpt_a["model_ema"], ckpt_b["model_ema"])
    losses_c, ckpt_c = _run(tmp_path / "c", "--seed", "1", "--epochs-this-run", "1")
    assert losses_c[0] != losses_a[0], "the seed has no effect: the comparison above proves nothing"


def _op_grads(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v, go = (torch.randn(2, 3, 65, 16, generator=gen).to(dtype).requires_grad_() for _ in range(4))
    gs = torch.randn(2, 64, generator=gen)
    out, score = kernels.attention(q, k, v, return_cls_score=True)
    x = torch.randn(2, 65, 48, generator=gen).to(dtype).requires_grad_()
    kept, idx = kernels.prune_tokens(x, score.detach(), 0.5)
    gathered = kernels.gather_tokens(x, idx)
    loss = (out * go.detach()).sum() + (score * gs).sum() + (kept.float() ** 2).sum() + gathered.float().sum()
    return torch.autograd.grad(loss, (q, k, v, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_op_backward_is_bit_identical(dtype):
    torch.set_num_threads(2)  # the OpenMP kernels with several threads (the fixture restores 1 afterwards)
    first, second = _op_grads(dtype), _op_grads(dtype)
    assert select_backend("cpu").NAME in ("ext", "reference")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_model_backward_is_bit_identical():
    torch.set_num_threads(2)
    config = {**digits.DEMO_MODEL, **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_DEMO_MODEL.items()}}
    torch.manual_seed(0)
    model = SuperDeiT(**config)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def grads():
        model.zero_grad(set_to_none=True)
        for size, ratio in ((28, 1.0), (28, 0.5), (20, 0.7)):
            model(x, img_size=size, keep_ratio=ratio).logsumexp(-1).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    first, second = grads(), grads()
    assert len(first) == len(second) == len(list(model.parameters())) - 2  # the tables of sizes 16 and 24 unused
    for a, b in zip(first, second):
        assert torch.equal(a, b)
