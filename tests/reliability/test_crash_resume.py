"""A training process SIGKILLed mid-epoch and mid-checkpoint-write: the previous checkpoint stays loadable and
``--autoresume`` finishes the run with the weights of an uninterrupted run (CPU, fixed seeds)."""
from __future__ import annotations

import os

import pytest
import torch

from supervit.files import is_partial_write

from train import main_deit

from reliability_helpers import TINY_RUN, assert_same_state, checkpoint, fault_env, sigkill, start, wait_for


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final checkpoint of the tiny 2-epoch run without any fault."""
    out = tmp_path_factory.mktemp("uninterrupted")
    main_deit.main(TINY_RUN + ["--output", str(out)])
    return checkpoint(out / "checkpoint.pth")


def _finish_with_autoresume(out, uninterrupted, capsys):
    main_deit.main(TINY_RUN + ["--output", str(out), "--autoresume"])
    assert "continuing at epoch 1" in capsys.readouterr().out
    final = checkpoint(out / "checkpoint.pth")
    assert final["epoch"] == 1
    assert_same_state(final["model"], uninterrupted["model"])
    assert_same_state(final["model_ema"], uninterrupted["model_ema"])
    assert_same_state(final["optimizer"]["state"][0], uninterrupted["optimizer"]["state"][0])
    assert not [p for p in os.listdir(out) if is_partial_write(p, "checkpoint.pth")], \
        "a stale temporary file was left behind"


def test_sigkill_mid_epoch_then_autoresume(tmp_path, uninterrupted, capsys):
    out, marker, log = tmp_path / "run", tmp_path / "paused", tmp_path / "child.log"
    # the child pauses before step 1 of epoch 1 (epoch 0's checkpoint written, epoch 1 half done), then is killed
    proc = start(TINY_RUN + ["--output", str(out)], fault_env("step:pause", marker, "epoch=1,step=1"), log)
    wait_for(marker, proc, log)
    sigkill(proc)
    previous = checkpoint(out / "checkpoint.pth")  # loadable: the end of epoch 0
    assert previous["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in previous["model"].values() if v.is_floating_point())
    assert not any(torch.equal(previous["model"][k], uninterrupted["model"][k])
                   for k in ("head.weight", "blocks.0.attn.qkv.weight")), "epoch 0 should differ from the end"
    _finish_with_autoresume(out, uninterrupted, capsys)


def test_sigkill_mid_checkpoint_write_then_autoresume(tmp_path, uninterrupted, capsys):
    out, marker, log = tmp_path / "run", tmp_path / "paused", tmp_path / "child.log"
    # the child pauses while saving epoch 1: the temporary file is complete on disk, not yet renamed
    proc = start(TINY_RUN + ["--output", str(out)], fault_env("save:pause", marker, "epoch=1"), log)
    wait_for(marker, proc, log)
    temporaries = [p for p in os.listdir(out) if is_partial_write(p, "checkpoint.pth")]
    assert len(temporaries) == 1, os.listdir(out)
    sigkill(proc)
    previous = checkpoint(out / "checkpoint.pth")  # still the complete epoch-0 file
    assert previous["epoch"] == 0
    assert checkpoint(out / "best_checkpoint.pth")["epoch"] == 0
    _finish_with_autoresume(out, uninterrupted, capsys)

