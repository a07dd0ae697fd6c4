"""Non-finite losses: a NaN/inf step is skipped (by AMP's GradScaler, or by the engine without one); a persistent NaN
stops the run with an error naming the sub-network, and no checkpoint is overwritten with NaN weights."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from supervit.models import SuperDeiT
from train import checkpointing, digits, engine, main_deit
from train.distributed import DistInfo
from train.engine import Amp, ClassificationTask, NonFiniteLossError, StepContext, train_step

from reliability_helpers import TINY_RUN, assert_same_state
from trainer_helpers import TINY_DEMO_MODEL

SUBNETS = [(28, 1.0), (28, 0.5), (20, 1.0), (20, 0.7)]


class FlakyTask(ClassificationTask):
    """Cross-entropy, but NaN at the full-keep sub-networks (and so at their students) while ``poison`` is set."""

    def __init__(self):
        super().__init__(torch.nn.CrossEntropyLoss())
        self.poison = False

    def supervised_loss(self, output, targets, largest):
        loss = super().supervised_loss(output, targets, largest)
        return loss * float("nan") if self.poison else loss


def _context(scaler=None, max_nonfinite_steps=20):
    torch.manual_seed(0)
    model = SuperDeiT(**{**digits.DEMO_MODEL, **{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in TINY_DEMO_MODEL.items()}})
    return StepContext(model=model, module=model, task=FlakyTask(), optimizer=torch.optim.AdamW(model.parameters()),
                       scaler=scaler, amp=Amp("cpu", None), info=DistInfo(), max_nonfinite_steps=max_nonfinite_steps)


def _batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 28, 28, generator=gen), torch.randint(0, 10, (4,), generator=gen)


@pytest.mark.parametrize("with_scaler", [True, False], ids=["grad_scaler", "fp32"])
def test_nonfinite_step_is_skipped_then_training_goes_on(with_scaler):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if with_scaler else None
    ctx = _context(scaler)
    before = copy.deepcopy(ctx.module.state_dict())
    ctx.task.poison = True
    out = train_step(ctx, *_batch(0), SUBNETS, 1)
    assert not out["stepped"] and ctx.skipped_steps == 1 and ctx.nonfinite_streak == 1
    assert_same_state(ctx.module.state_dict(), before)  # no update from the NaN step
    assert not ctx.optimizer.state, "the optimizer moments saw the NaN step"
    if with_scaler:
        assert scaler.get_scale() == 2.0 ** 9  # the scaler backed off, as under CUDA AMP
    ctx.task.poison = False
    out = train_step(ctx, *_batch(1), SUBNETS, 2)
    assert out["stepped"] and ctx.nonfinite_streak == 0
    state = ctx.module.state_dict()
    assert any(not torch.equal(state[k], before[k]) for k in state), "training did not go on"
    assert all(torch.isfinite(v).all() for v in state.values())


def test_persistent_nan_stops_with_the_subnetwork_named():
    ctx = _context(max_nonfinite_steps=3)
    ctx.task.poison = True
    for step in range(2):
        train_step(ctx, *_batch(step), SUBNETS, step + 1)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps.*\(img_size=28, keep_ratio=1\) loss nan.*"
                                                 r"\(img_size=20, keep_ratio=1\) loss nan"):
        train_step(ctx, *_batch(2), SUBNETS, 3)


def test_persistent_nan_in_a_run_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    main_deit.main(TINY_RUN + ["--output", str(out), "--epochs-this-run", "1"])
    good = {name: open(out / name, "rb").read() for name in ("checkpoint.pth", "best_checkpoint.pth")}

    def nan_loss(self, output, targets, largest):
        return self.criterion(output.float(), targets) * float("nan")

    monkeypatch.setattr(engine.ClassificationTask, "supervised_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive steps.*\(img_size=28, keep_ratio=1\) loss nan"):
        main_deit.main(TINY_RUN + ["--output", str(out), "--autoresume", "--max-nonfinite-steps", "2"])
    for name, data in good.items():
        assert open(out / name, "rb").read() == data, f"{name} was rewritten"
    assert not [p for p in os.listdir(out) if ".partial" in p]  # no temporary of supervit.files.atomic_write


def test_save_refuses_nan_weights(tmp_path):
    ctx = _context()
    common = dict(optimizer=ctx.optimizer, scheduler=None, scaler=None, ema=None, epoch=0,
                  args=__import__("argparse").Namespace(model="demo"), metric=1.0, best=(1.0, 0))
    last = checkpointing.save_epoch("deit", str(tmp_path), True, model=ctx.module, **common)
    before = open(last, "rb").read()
    with torch.no_grad():
        ctx.module.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(checkpointing.NonFiniteWeightsError, match=r"model tensor 'blocks.1.mlp.fc1.weight'"):
        checkpointing.save_epoch("deit", str(tmp_path), True, model=ctx.module, **{**common, "epoch": 1})
    assert open(last, "rb").read() == before
