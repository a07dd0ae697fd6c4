"""A tiny super-network checkpoint, saved profiles and a server process for the serve tests (nothing is trained)."""
from __future__ import annotations

import os

DATA = os.path.join(os.path.dirname(__file__), "data")

# 3 sizes x 2 keep rates; the 128 px points (1024 tokens) cost ~40x the 16 px ones at a batch of 8 (about 150 vs
# 3.5 ms on one thread of the 2-core machine), so that a burst of 64 requests cannot be served on them within the
# test's SLO even on a much faster machine, while one request alone easily can
TINY = dict(img_sizes=(16, 64, 128), keep_ratios=(0.5, 1.0), prune_layers=(1,), patch_size=4, in_chans=3,
            num_classes=10, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)
# accuracy rising with the image size, then with the keep rate: (128, 1.0) is the most accurate
TINY_ACCURACY = {(16, 0.5): 50.0, (16, 1.0): 55.0, (64, 0.5): 60.0, (64, 1.0): 65.0, (128, 0.5): 70.0,
                 (128, 1.0): 75.0}


def write_tiny_checkpoint(path, seed: int = 0, with_table: bool = True) -> str:
    """A checkpoint of the tiny model as the trainer saves one: weights, model config, accuracy table (unless
    ``with_table`` is False)."""
    import torch

    from supervit.models import SuperDeiT
    from supervit.models.config import model_config

    torch.manual_seed(seed)
    model = SuperDeiT(**TINY).eval()
    rows = [{"img_size": s, "keep_ratio": r, "acc1": a, "acc5": 99.0} for (s, r), a in TINY_ACCURACY.items()]
    info = {"model_config": model_config(model)}
    if with_table:
        info["accuracy"] = {"epoch": 3, "ema": False, "num_images": 100, "dataset": "fake", "rows": rows}
    torch.save({"model": model.state_dict(), "epoch": 3, "supervit": info}, path)
    return str(path)


class ServerProcess:
    """``python -m supervit.serve ...`` in a child process: started, waited for, stopped with SIGINT."""

    def __init__(self, args, ready_timeout: float = 150.0):
        import re
        import subprocess
        import sys
        import threading
        import time

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "supervit.serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines = []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if "Ctrl-C stops" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        end = time.monotonic() + ready_timeout
        while not ready.wait(0.5) and time.monotonic() < end:
            pass
        match = next((re.search(r"at (http://\S+?)/ - Ctrl-C", line) for line in self.lines if "Ctrl-C" in line), None)
        if match is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.lines[-40:]))
        self.url = match.group(1)

    def descendants(self) -> list[tuple[int, str]]:
        """(pid, name) of every process below the server's (Linux /proc)."""
        return descendants(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _parents() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, name)} of every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = (int(fields[1]), name)
    return table


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, name) of every process below ``pid``."""
    table = _parents()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [(p, name) for p, (ppid, name) in table.items() if ppid == parent]
        found.extend(children)
        frontier.extend(p for p, _ in children)
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"
