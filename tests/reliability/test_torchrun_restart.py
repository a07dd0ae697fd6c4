"""Worker failure under torchrun: rank 1 SIGKILLs itself once mid-epoch; torchrun (``--max-restarts 1``) restarts
both workers, which resume from the last checkpoint (``--autoresume``) and finish with the weights of an
uninterrupted 2-process run (Gloo on CPU)."""
from __future__ import annotations

import subprocess
import sys

import torch

from reliability_helpers import MAIN_DEIT, ROOT, TINY_RUN, assert_same_state, checkpoint, fault_env


def torchrun(out, env, max_restarts: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={max_restarts}", "--monitor-interval=0.2", MAIN_DEIT, *TINY_RUN, "--output", str(out),
           "--autoresume", "--dump-rank-weights"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)


def test_rank_killed_job_restarts_from_checkpoint_and_finishes(tmp_path):
    marker = tmp_path / "rank1_killed"
    faulty = torchrun(tmp_path / "faulty", fault_env("step:kill", marker, "rank=1,epoch=1,step=1"), max_restarts=1)
    log = faulty.stdout[-4000:] + faulty.stderr[-4000:]
    assert faulty.returncode == 0, log
    assert marker.is_file(), "the fault never fired:\n" + log
    assert "'rank': 1" in marker.read_text()
    assert "continuing at epoch 1" in faulty.stdout, log  # the restarted workers resumed from epoch 0's checkpoint
    final = checkpoint(tmp_path / "faulty" / "checkpoint.pth")
    assert final["epoch"] == 1
    ranks = [torch.load(tmp_path / "faulty" / f"weights_rank{r}.pth", weights_only=True) for r in (0, 1)]
    assert_same_state(ranks[0], ranks[1])
    assert_same_state(ranks[0], final["model"])

    clean = torchrun(tmp_path / "clean", fault_env("", tmp_path / "unused"), max_restarts=0)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    assert_same_state(final["model"], checkpoint(tmp_path / "clean" / "checkpoint.pth")["model"])
