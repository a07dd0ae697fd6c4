"""Where a training step's time goes, and how much of the device it uses.

Per epoch: images/s, the share of step time spent waiting for data (including the host-to-device copy and the
device-side batch transform), in the forward and backward passes, in the optimizer step and in the EMA update; the
model GMACs/s achieved (analytic MACs of the sub-networks actually drawn, x3 for forward + backward), and the MFU
where the device's peak is known (``supervit.training.throughput.PEAK_TFLOPS``).

On CUDA the phases are timed with CUDA events on the stream (GPU time between phase boundaries, so a GPU idle while
the host waits for the loader counts as data time); on CPU with the host clock.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from supervit.training.throughput import matmul_dtype_name, peak_flops, step_flops

PHASES = ("data", "forward_backward", "optimizer", "ema")

class StepClock:
    """Phase boundaries of each training step: ``start()`` before the batch is fetched, ``mark(phase)`` at the end
    of each phase (``PHASES``), ``end_step()`` after the last. ``seconds()`` sums each phase over the steps."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.sums = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self._current: list = []
        self._pending: list = []

    def _stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self):
        self._current = [("start", self._stamp())]

    def mark(self, phase: str):
        if self._current:
            self._current.append((phase, self._stamp()))

    def end_step(self):
        if self._current:
            self._pending.append(self._current)
            self.steps += 1
        self._current = []
        self._resolve(wait=False)

    def _resolve(self, wait: bool):
        while self._pending:
            marks = self._pending[0]
            if self.cuda:
                if not wait and not marks[-1][1].query():
                    return
                marks[-1][1].synchronize()
            for (_, before), (phase, after) in zip(marks, marks[1:]):
                seconds = before.elapsed_time(after) / 1e3 if self.cuda else after - before
                self.sums[phase] = self.sums.get(phase, 0.0) + seconds
            self._pending.pop(0)

    def seconds(self) -> dict:
        """{phase: seconds summed over the steps so far}."""
        self._resolve(wait=True)
        return dict(self.sums)


class Throughput:
    """One epoch's accounting: images, analytic model MACs of the sub-networks drawn, phase times."""

    def __init__(self, model, device: torch.device, amp_dtype: Optional[torch.dtype], world_size: int = 1):
        self.model = model
        self._gmacs: dict = {}  # {subnet: forward GMACs}
        self.clock = StepClock(device)
        self.images = 0
        self.gmacs = 0.0  # forward + backward, this process
        self.world_size = world_size
        self.dtype_name = matmul_dtype_name(amp_dtype)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        self.peak = peak_flops(name, self.dtype_name) if name else None
        self.start_time = time.perf_counter()

    def count(self, subnets, batch: int):
        self.images += batch
        self.gmacs += step_flops(self.model, subnets, batch, self._gmacs) / 2e9  # forward + backward MACs

    def summary(self) -> dict:
        """images_per_s (all processes), data/forward_backward/optimizer/ema shares of the step time,
        gmacs_per_s (per process), mfu (None when the device's peak is unknown)."""
        wall = max(time.perf_counter() - self.start_time, 1e-9)
        phases = self.clock.seconds()
        step_time = max(sum(phases.values()), 1e-9)
        out = {"images_per_s": self.images * self.world_size / wall,
               **{f"{phase}_share": phases.get(phase, 0.0) / step_time for phase in PHASES},
               "gmacs_per_s": self.gmacs / wall, "matmul_dtype": self.dtype_name}
        out["mfu"] = 2e9 * out["gmacs_per_s"] / self.peak if self.peak else None
        return out


def format_summary(summary: dict) -> str:
    """``1234 img/s | data 3% fwd+bwd 90% opt 5% ema 2% | 812 GMACs/s, MFU 23.1% (bf16)``."""
    shares = " ".join(f"{label} {100 * summary[f'{phase}_share']:.0f}%" for phase, label in
                      zip(PHASES, ("data", "fwd+bwd", "opt", "ema")))
    mfu = f", MFU {100 * summary['mfu']:.1f}% ({summary['matmul_dtype']})" if summary.get("mfu") else ""
    return f"{summary['images_per_s']:.0f} img/s | {shares} | {summary['gmacs_per_s']:.1f} GMACs/s{mfu}"


class StepProfiler:
    """``--profile-steps N``: a torch profiler trace (Chrome trace JSON) of N training steps, after one warm-up
    step, written to ``path``; inert when ``steps`` is 0."""

    def __init__(self, steps: int, path: Optional[str], device: torch.device):
        self.steps, self.path, self.device = steps, path, device
        self._profile = None
        self._done = 0
        self.written: Optional[str] = None

    def before_step(self, index: int):
        if self.steps and self._profile is None and self.written is None and index >= 1:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities, record_shapes=True)
            self._profile.__enter__()

    def after_step(self):
        if self._profile is not None:
            self._done += 1
            if self._done >= self.steps:
                self.finish()

    def finish(self):
        """Stop and write the trace (also when the epoch ended before N steps)."""
        if self._profile is None:
            return
        profile, self._profile = self._profile, None
        profile.__exit__(None, None, None)
        from supervit.files import atomic_write

        with atomic_write(self.path, make_folder=True) as tmp:
            profile.export_chrome_trace(tmp)
        self.written = self.path
