"""The server's own request queue: deadlines, the policy's batches, one forward at a time, prompt rejections.

Ray Serve's ``@serve.batch`` hands a method a list of requests it has already cut to its own size and wait; the
policy needs the whole queue (every request's deadline) to choose both the batch size and the operating point,
and to reject what cannot be served in time. So each replica keeps this queue: ``submit`` enqueues one input and
waits for its answer, never past its deadline; one asyncio task forms batches whenever the model is free and runs
the forward in a worker thread (the event loop keeps accepting requests meanwhile).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import RequestError
from .policy import Policy


RATE_WINDOW_MS = 1000.0   # the arrival rate the policy sees: requests of the last second


def now_ms() -> float:
    """The server's clock: monotonic milliseconds."""
    return time.monotonic() * 1e3


@dataclass
class Pending:
    """One queued request."""

    input: Any
    arrival_ms: float
    deadline_ms: float
    future: asyncio.Future
    expired: bool = False


@dataclass
class BatchRecord:
    """What one batch did (kept for /info and the answers)."""

    id: int
    subnet: Any
    size: int
    start_ms: float
    compute_ms: float
    service_ms: float
    predicted_ms: float


@dataclass
class Counters:
    answered: int = 0
    rejected_early: int = 0     # 503 before their deadline: the policy saw they could not make it
    expired: int = 0            # 503 at their deadline (a misprediction or an overloaded event loop)
    failed: int = 0             # the forward raised
    batches: int = 0
    switches: int = 0           # batches whose point differs from the previous batch's
    by_subnet: dict = field(default_factory=lambda: collections.Counter())


class Batcher:
    """Queue + batch loop of one replica.

    Args:
        policy: chooses each batch's size and operating point.
        run_batch: ``run_batch(inputs, subnet) -> (outputs, compute_ms)`` with one output per input; called in a
            worker thread, one call at a time.
        budget_ms: how long after its arrival a request must be answered (the SLO less the transit allowance).
    """

    def __init__(self, policy: Policy, run_batch: Callable, budget_ms: float):
        self.policy = policy
        self.run_batch = run_batch
        self.budget_ms = float(budget_ms)
        self.queue: collections.deque[Pending] = collections.deque()
        self.arrivals: collections.deque[float] = collections.deque()  # arrival times of the last RATE_WINDOW_MS
        self.counters = Counters()
        self.last_batch: BatchRecord | None = None
        self._ids = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    async def submit(self, item, arrival_ms: float) -> tuple[Any, BatchRecord, float]:
        """(output, its batch, queue ms) of one input; ``RequestError(503)`` when it cannot be answered in time."""
        self._ensure_loop()
        deadline = arrival_ms + self.budget_ms
        request = Pending(item, arrival_ms, deadline, asyncio.get_running_loop().create_future())
        self.queue.append(request)
        self.arrivals.append(arrival_ms)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), max(0.0, deadline - now_ms()) / 1e3)
        except (asyncio.TimeoutError, TimeoutError):
            if request.future.done():  # answered (or rejected) just as the time ran out
                return request.future.result()
            request.expired = True
            self.counters.expired += 1
            raise RequestError(503, f"deadline passed: no answer within {self.budget_ms:.0f} ms of arrival "
                                    "(the server is overloaded; retry later)") from None

    def _ensure_loop(self):
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self):
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                self.queue = collections.deque(r for r in self.queue if not (r.expired or r.future.done()))
                if not self.queue:
                    break
                await self._run_next()

    def _reject(self, request: Pending, now: float):
        self.counters.rejected_early += 1
        request.future.set_exception(RequestError(
            503, f"cannot be answered within {self.budget_ms:.0f} ms of arrival: {now - request.arrival_ms:.0f} ms "
                 "already spent and the queue ahead needs more than is left (the server is overloaded; retry "
                 "later)"))

    def arrival_rate(self, now: float) -> float:
        """Requests per second over the last ``RATE_WINDOW_MS``."""
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW_MS:
            self.arrivals.popleft()
        return len(self.arrivals) * 1e3 / RATE_WINDOW_MS

    async def _run_next(self):
        now = now_ms()
        queued = list(self.queue)
        decision = self.policy.decide(now, [r.deadline_ms for r in queued], self.arrival_rate(now))
        for i in decision.reject:
            self._reject(queued[i], now)
        batch = [queued[i] for i in decision.run]
        taken = set(decision.run) | set(decision.reject)
        self.queue = collections.deque(r for i, r in enumerate(queued) if i not in taken)
        if not batch:
            return
        loop = asyncio.get_running_loop()
        start = now_ms()
        try:
            outputs, compute_ms = await loop.run_in_executor(self._executor, self.run_batch,
                                                             [r.input for r in batch], decision.subnet)
        except Exception as err:  # the forward failed: answer the batch, keep serving
            self.counters.failed += len(batch)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(RequestError(500, f"the forward failed: {type(err).__name__}: {err}"))
            return
        service_ms = now_ms() - start
        self.policy.observe(decision.subnet, len(batch), compute_ms, now_ms(), overhead_ms=service_ms - compute_ms)
        record = BatchRecord(next(self._ids), decision.subnet, len(batch), start, compute_ms, service_ms,
                             decision.predicted_ms)
        counters = self.counters
        counters.batches += 1
        counters.switches += self.last_batch is not None and self.last_batch.subnet != decision.subnet
        counters.by_subnet[str(decision.subnet)] += len(batch)
        self.last_batch = record
        for r, out in zip(batch, outputs):
            if not (r.expired or r.future.done()):
                counters.answered += 1
                r.future.set_result((out, record, start - r.arrival_ms))

    def in_worker(self, fn, *args):
        """``fn(*args)`` run now in the forward's worker thread (e.g. warm-up calls: a thread's first forward sets up
        its thread pool and allocator caches)."""
        return self._executor.submit(fn, *args).result()

    def shutdown(self):
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
