"""Which operating point and batch size the server runs next, from latency profiles and the queue's deadlines.

Pure Python (no torch): times are milliseconds on the caller's monotonic clock.

The rule, applied each time the model is free and requests are queued (oldest first):

1. A request that cannot be answered in time even alone on the fastest point is rejected at once (a prompt 503
   lets its client retry elsewhere instead of waiting for a certain miss). Exception, the probe: when every
   request looks hopeless only because of the observed slowdown and no batch ran for ``PROBE_AFTER_MS``, the
   oldest runs alone on the fastest point, so that a server slowed by a busy spell learns that it is over.
2. The batch is as many of the oldest requests as some point can finish before the earliest deadline among them
   (at most ``max_batch``, the largest profiled batch size); queued requests are all served as soon as possible.
3. Among the points that fit, the most accurate one, provided that the requests left behind can still be served
   afterwards (their first batch on the fastest point); when no fitting point leaves them that chance, the fastest
   fitting point (the least harm). With the rate guard (``budget_ms`` given and the recent arrival rate passed in),
   only points that sustain the arrival rate qualify: the point's best throughput over the batch sizes that fit the
   budget, at the typical (median) observed speed, must reach the rate (none does: the one that sustains the most).
   Without it a lone request in a burst gets the most accurate point, the requests arriving meanwhile find less
   time, and the server runs at the edge of every deadline until the burst ends.
4. Requests left behind that will miss their deadline whatever follows are rejected now rather than at their
   deadline.

Predicted latency = profiled latency at that batch size (linear between profiled sizes) x the slowdown the server
observes (``Calibration``: a high quantile of forward / profiled over recent batches, the profile itself until
enough batches ran) x (1 + ``margin``) + the observed time around the forward (same quantile).
"""
from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass
from typing import NamedTuple

from supervit.models import Subnet

DEFAULT_MARGIN = 0.1          # headroom on top of the calibrated prediction (jitter between batches)
DEFAULT_QUANTILE = 0.9        # which quantile of recent observed / profiled ratios the predictions scale by
DEFAULT_WINDOW = 32           # how many recent batches the calibration remembers
DEFAULT_MAX_AGE_MS = 10_000   # and for how long
PROBE_AFTER_MS = 1000.0       # with every request judged hopeless and no batch for this long: run one anyway
SCALE_LIMITS = (0.5, 20.0)    # a calibrated scale outside these is clipped (a stray measurement cannot run away)


class PolicyError(ValueError):
    """Profiles or settings the policy cannot work with (the message says what is missing)."""


class LatencyTable:
    """Profiled latency (ms) of each operating point at several batch sizes, with values between them.

    Args:
        latency_ms: ``{Subnet: {batch: median ms}}``; every point must be profiled at the same batch sizes, and
            the smallest must be 1 (a batch of one is always possible).
    """

    def __init__(self, latency_ms: dict):
        if not latency_ms:
            raise PolicyError("the latency table is empty: give at least one operating point's profile")
        batch_sets = {tuple(sorted(by_batch)) for by_batch in latency_ms.values()}
        if len(batch_sets) != 1:
            raise PolicyError("every operating point must be profiled at the same batch sizes, got "
                              + "; ".join(f"{Subnet(*s)}: {sorted(b)}" for s, b in latency_ms.items()))
        self.batches = list(next(iter(batch_sets)))
        if self.batches[0] != 1:
            raise PolicyError(f"the profiled batch sizes must include 1, got {self.batches}")
        self._ms = {}
        for subnet, by_batch in latency_ms.items():
            values = [float(by_batch[b]) for b in self.batches]
            if any(not math.isfinite(v) or v <= 0 for v in values):
                raise PolicyError(f"profiled latencies of {Subnet(*subnet)} must be positive numbers, got {values}")
            self._ms[Subnet(*subnet)] = values

    @property
    def max_batch(self) -> int:
        return self.batches[-1]

    @property
    def subnets(self) -> list[Subnet]:
        return list(self._ms)

    def ms(self, subnet, batch: int) -> float:
        """Profiled latency of ``subnet`` at ``batch``: measured, or linear between the two nearest sizes."""
        if not 1 <= batch <= self.max_batch:
            raise PolicyError(f"batch must be in 1..{self.max_batch} (the largest profiled size), got {batch}")
        values = self._ms[Subnet(*subnet)]
        hi = bisect.bisect_left(self.batches, batch)
        if self.batches[hi] == batch:
            return values[hi]
        lo = hi - 1
        b0, b1 = self.batches[lo], self.batches[hi]
        return values[lo] + (values[hi] - values[lo]) * (batch - b0) / (b1 - b0)


def latency_from_profiles(profiles, subnets=None) -> dict:
    """``{Subnet: {batch: median ms}}`` from deploy profiles (``supervit.deploy.profile_model`` dicts, one per batch
    size), restricted to ``subnets`` when given; ``PolicyError`` when a profile lacks one of them."""
    table = {}
    for profile in profiles:
        batch = int(profile["settings"]["batch"])
        rows = {Subnet(r["img_size"], r["keep_ratio"]): r["latency_ms"] for r in profile["rows"]}
        wanted = list(rows) if subnets is None else [Subnet(*s) for s in subnets]
        missing = [str(s) for s in wanted if s not in rows]
        if missing:
            raise PolicyError(f"the profile {profile.get('key', '')!r} has no row for {', '.join(missing)}")
        for subnet in wanted:
            table.setdefault(subnet, {})[batch] = float(rows[subnet])
    return table


class Calibration:
    """How the server's batches compare with the profile: a quantile of recent slowdowns and overheads.

    Each finished batch reports its forward time, the profile's time for it, and the time around the forward
    (stacking the inputs, handing the batch to the worker thread and back through a busy event loop). ``scale`` is
    the ``quantile`` of the last ``window`` forward / profiled ratios and ``overhead_ms`` that of the overheads; the
    window is topped up with the profile's own values (ratio 1, overhead 0) while it holds fewer (at start, and
    after entries older than ``max_age_ms`` are dropped); the scale is clipped to ``SCALE_LIMITS``. So a single
    slow batch moves nothing (a 0.9 quantile needs a tenth of the window to be slow), and what a busy spell taught
    fades when no batch confirms it. ``typical`` and ``typical_overhead_ms`` are the medians (throughput estimates).
    """

    def __init__(self, quantile: float = DEFAULT_QUANTILE, window: int = DEFAULT_WINDOW,
                 max_age_ms: float = DEFAULT_MAX_AGE_MS):
        if not 0.0 < quantile <= 1.0:
            raise PolicyError(f"calibration quantile must be in (0, 1], got {quantile!r}")
        if window < 1:
            raise PolicyError(f"calibration window must be >= 1, got {window!r}")
        if not max_age_ms > 0:
            raise PolicyError(f"calibration max_age_ms must be > 0, got {max_age_ms!r}")
        self.quantile = quantile
        self.window = window
        self.max_age_ms = max_age_ms
        self.entries = collections.deque(maxlen=window)  # (time ms, forward / profiled, overhead ms)
        self.last_ms: float | None = None  # when the last batch was reported
        self.scale = self.typical = 1.0    # quantile and median of the ratios
        self.overhead_ms = self.typical_overhead_ms = 0.0

    def observe(self, observed_ms: float, profiled_ms: float, now_ms: float, overhead_ms: float = 0.0) -> None:
        """Report one batch: its forward took ``observed_ms`` where the profile says ``profiled_ms``, and
        ``overhead_ms`` more passed around the forward."""
        if profiled_ms > 0 and math.isfinite(observed_ms) and observed_ms >= 0:
            overhead = overhead_ms if math.isfinite(overhead_ms) and overhead_ms > 0 else 0.0
            self.entries.append((now_ms, observed_ms / profiled_ms, overhead))
            self.last_ms = now_ms
        self.expire(now_ms)

    def expire(self, now_ms: float) -> None:
        """Drop entries older than ``max_age_ms`` and recompute the quantiles."""
        while self.entries and self.entries[0][0] < now_ms - self.max_age_ms:
            self.entries.popleft()
        missing = self.window - len(self.entries)
        ratios = sorted([r for _, r, _ in self.entries] + [1.0] * missing)
        overheads = sorted([o for _, _, o in self.entries] + [0.0] * missing)

        def pick(values, q):
            return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

        self.scale = min(max(pick(ratios, self.quantile), SCALE_LIMITS[0]), SCALE_LIMITS[1])
        self.typical = min(max(pick(ratios, 0.5), SCALE_LIMITS[0]), SCALE_LIMITS[1])
        self.overhead_ms, self.typical_overhead_ms = pick(overheads, self.quantile), pick(overheads, 0.5)


class Decision(NamedTuple):
    """What to do now with the queue (positions count from the oldest request, 0)."""

    batch: int                   # run the ``batch`` oldest requests that are not rejected (0: nothing to run)
    subnet: Subnet | None        # on this operating point
    predicted_ms: float          # how long the batch is expected to take (calibrated, with the margin)
    run: tuple[int, ...]         # queue positions of the requests in the batch
    reject: tuple[int, ...]      # queue positions to answer now with 503: they cannot meet their deadline


@dataclass
class Policy:
    """Chooses (batch size, operating point) for the queue; see the module docstring for the rule.

    Args:
        table: profiled latencies of the candidate points.
        accuracy: ``{Subnet: top-1 %}`` of every candidate point (static serving: one point, any accuracy).
        margin: relative headroom on every prediction (>= 0).
        calibration: the observed slowdown (a fresh ``Calibration()`` when None).
        budget_ms: how long a request may take from its arrival; with it, the rate guard (module docstring, rule
            3) applies whenever ``decide`` is given an arrival rate.
    """

    table: LatencyTable
    accuracy: dict
    margin: float = DEFAULT_MARGIN
    calibration: Calibration | None = None
    budget_ms: float | None = None

    def __post_init__(self):
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise PolicyError(f"margin must be a number >= 0, got {self.margin!r}")
        self.accuracy = {Subnet(*s): float(a) for s, a in self.accuracy.items()}
        missing = [str(s) for s in self.table.subnets if s not in self.accuracy]
        if missing:
            raise PolicyError(f"no accuracy for operating point(s) {', '.join(missing)}")
        self.calibration = self.calibration or Calibration()
        # candidates, most accurate first; equal accuracy: the faster at batch 1 first
        self.points = sorted(self.table.subnets, key=lambda s: (-self.accuracy[s], self.table.ms(s, 1)))

    @property
    def max_batch(self) -> int:
        return self.table.max_batch

    def predict_ms(self, subnet, batch: int) -> float:
        """Expected time of one batch: profiled x observed slowdown x (1 + margin) + observed overhead."""
        calibration = self.calibration
        return self.table.ms(subnet, batch) * calibration.scale * (1.0 + self.margin) + calibration.overhead_ms

    def capacity(self, subnet) -> float:
        """Requests per second ``subnet`` sustains: its best batch throughput at the typical observed speed, over the
        batch sizes whose (calibrated, margined) prediction fits ``budget_ms``."""
        sizes = [b for b in range(1, self.max_batch + 1)
                 if self.budget_ms is None or self.predict_ms(subnet, b) <= self.budget_ms]
        calibration = self.calibration
        return max((1e3 * b / (self.table.ms(subnet, b) * calibration.typical + calibration.typical_overhead_ms)
                    for b in sizes), default=0.0)

    def fastest(self, batch: int) -> Subnet:
        return min(self.points, key=lambda s: self.table.ms(s, batch))

    def observe(self, subnet, batch: int, observed_ms: float, now_ms: float, overhead_ms: float = 0.0) -> None:
        """Report how long a batch's forward took, and the time around it (feeds the calibration)."""
        self.calibration.observe(observed_ms, self.table.ms(subnet, batch), now_ms, overhead_ms)

    def decide(self, now_ms: float, deadlines_ms, arrival_rate: float | None = None) -> Decision:
        """The decision for a queue whose requests (oldest first) must be answered by ``deadlines_ms``.

        Args:
            arrival_rate: recent requests per second (the rate guard's input; ignored without ``budget_ms``).
        """
        deadlines = list(deadlines_ms)
        self.calibration.expire(now_ms)
        alone = self.predict_ms(self.fastest(1), 1)
        reject = [i for i, d in enumerate(deadlines) if d - now_ms < alone]
        alive = [i for i, d in enumerate(deadlines) if d - now_ms >= alone]
        if not alive:
            if deadlines and self._probe_due(now_ms, deadlines[0]):
                probe = self.fastest(1)
                return Decision(1, probe, alone, (0,), tuple(range(1, len(deadlines))))
            return Decision(0, None, 0.0, (), tuple(reject))
        batch, fits = self._largest_batch(now_ms, [deadlines[i] for i in alive])
        left = alive[batch:]
        subnet = self._choose(fits, batch, arrival_rate)
        if left:
            nxt = min(len(left), self.max_batch)
            need_next = self.predict_ms(self.fastest(nxt), nxt)
            next_slack = min(deadlines[i] for i in left[:nxt]) - now_ms - need_next
            leaves_room = [s for s in fits if self.predict_ms(s, batch) <= next_slack]
            subnet = (self._choose(leaves_room, batch, arrival_rate) if leaves_room
                      else min(fits, key=lambda s: self.predict_ms(s, batch)))
        took = self.predict_ms(subnet, batch)
        late = [i for i in left if deadlines[i] - (now_ms + took) < alone]
        return Decision(batch, subnet, took, tuple(alive[:batch]), tuple(sorted(reject + late)))

    def _probe_due(self, now_ms: float, deadline_ms: float) -> bool:
        """Whether to run the oldest request although the calibration judges it hopeless: no batch has been reported
        for ``PROBE_AFTER_MS`` (so the calibration cannot learn that the server got faster again) and the profile
        itself, with the margin, says it fits."""
        last = self.calibration.last_ms
        quiet = last is None or now_ms - last >= PROBE_AFTER_MS
        return quiet and deadline_ms - now_ms >= self.table.ms(self.fastest(1), 1) * (1.0 + self.margin)

    def _choose(self, candidates: list, batch: int, arrival_rate: float | None) -> Subnet:
        """The most accurate of ``candidates`` (ordered so), among those that sustain ``arrival_rate`` when the
        rate guard is on (none does: the one that sustains the most)."""
        if self.budget_ms is None or not arrival_rate:
            return candidates[0]
        capacity = {s: self.capacity(s) for s in candidates}
        steady = [s for s in candidates if capacity[s] >= arrival_rate]
        return steady[0] if steady else max(candidates, key=capacity.get)

    def _largest_batch(self, now_ms: float, deadlines: list) -> tuple[int, list]:
        """(largest batch b of the oldest requests that some point finishes in time, those points best first)."""
        earliest = list(deadlines)
        for i in range(1, len(earliest)):
            earliest[i] = min(earliest[i], earliest[i - 1])  # earliest[i]: tightest deadline among the i+1 oldest
        for batch in range(min(len(deadlines), self.max_batch), 1, -1):
            slack = earliest[batch - 1] - now_ms
            fits = [s for s in self.points if self.predict_ms(s, batch) <= slack]
            if fits:
                return batch, fits
        # a batch of one: the oldest request passed the alone-on-the-fastest-point test, so this is never empty
        return 1, [s for s in self.points if self.predict_ms(s, 1) <= earliest[0] - now_ms]
