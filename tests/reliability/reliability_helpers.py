"""Shared pieces of the reliability tests: the tiny demo run, subprocess launch with an injected fault."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from supervit.models import read_checkpoint

from shared_helpers import assert_same_state  # noqa: F401 - the reliability tests import it from here
from trainer_helpers import TINY_DEMO_MODEL, as_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN_DEIT = os.path.join(ROOT, "train", "main_deit.py")

# The embedded digits on a 4-block demo network: 2 epochs of 2 steps, full evaluation at the end only.
TINY_RUN = ["--demo", "--model-kwargs", as_json(TINY_DEMO_MODEL), "--batch-size", "16", "--max-steps-per-epoch",
            "2", "--epochs", "2", "--no-progress", "--device", "cpu", "--eval-interval", "0", "--model-ema",
            "--model-ema-decay", "0.9", "--threads", "1"]


def fault_env(point_action: str, marker, when: str = "", **extra) -> dict:
    """Environment of a child process with the test-only fault ``point_action`` (see train/faults.py)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "SUPERVIT_FAULT": point_action,
           "SUPERVIT_FAULT_MARKER": str(marker), "SUPERVIT_FAULT_WHEN": when}
    env.update(extra)
    return env


def start(args: list[str], env: dict, log_path) -> subprocess.Popen:
    """``train/main_deit.py args`` in a child process, stdout+stderr to ``log_path``."""
    with open(log_path, "w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, MAIN_DEIT, *args], env=env, stdout=handle,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for(path, proc: subprocess.Popen, log_path, timeout: float = 240.0):
    """Wait until ``path`` exists while ``proc`` runs; fail with the child's log otherwise."""
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"fault marker {path} never appeared (rc {proc.poll()}):\n"
                                 + open(log_path).read()[-3000:])
        time.sleep(0.1)


def sigkill(proc: subprocess.Popen):
    """SIGKILL ``proc`` and reap it; it must have been running."""
    assert proc.poll() is None, "the training process ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def checkpoint(path) -> dict:
    """The checkpoint dict of ``path``, read the safe way (weights_only with the allow-list)."""
    return read_checkpoint(path)


