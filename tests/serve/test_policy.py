"""The serving policy on hand-made latency tables (exact decisions) and on a saved profile of super_deit_s.

No timing: every latency comes from a table; the clock is a number passed in. data/super_deit_s_profiles.json holds
the profiles the load test of super_deit_s used (one thread of the 2-core AMD EPYC machine, batch 1, 2, 4, 8);
data/super_deit_s_published_top1.json its published ImageNet top-1 per sub-network.
"""
import json
import math
import os

import pytest

from supervit.models import Subnet
from supervit.serve.policy import Calibration, LatencyTable, Policy, PolicyError, latency_from_profiles

from serve_helpers import DATA

A, B, C = Subnet(224, 1.0), Subnet(160, 0.7), Subnet(128, 0.5)
# profiled ms at batch 1, 2, 4: A the most accurate and slowest, C the fastest
HAND = {A: {1: 10.0, 2: 16.0, 4: 28.0}, B: {1: 5.0, 2: 8.0, 4: 14.0}, C: {1: 2.0, 2: 3.0, 4: 5.0}}
HAND_ACC = {A: 80.0, B: 70.0, C: 60.0}
SAVED_PROFILES = os.path.join(DATA, "super_deit_s_profiles.json")


def hand_policy(margin=0.0, **kwargs):
    return Policy(LatencyTable(HAND), HAND_ACC, margin=margin, **kwargs)


def test_latency_table_measured_and_between_sizes():
    table = LatencyTable(HAND)
    assert table.batches == [1, 2, 4] and table.max_batch == 4
    assert table.ms(A, 2) == 16.0
    assert table.ms(A, 3) == pytest.approx(22.0)  # halfway between 16 (batch 2) and 28 (batch 4)
    assert table.ms((160, 0.7), 3) == pytest.approx(11.0)  # plain tuples work as keys
    with pytest.raises(PolicyError, match="1..4"):
        table.ms(A, 5)
    with pytest.raises(PolicyError, match="1..4"):
        table.ms(A, 0)


@pytest.mark.parametrize("bad, message", [
    ({}, "empty"),
    ({A: {2: 1.0, 4: 2.0}}, "include 1"),
    ({A: {1: 1.0, 2: 2.0}, B: {1: 1.0, 4: 2.0}}, "same batch sizes"),
    ({A: {1: 0.0}}, "positive"),
    ({A: {1: math.nan}}, "positive"),
])
def test_latency_table_rejects_bad_profiles(bad, message):
    with pytest.raises(PolicyError, match=message):
        LatencyTable(bad)


@pytest.mark.parametrize("slack, expected", [(100.0, A), (10.0, A), (9.99, B), (5.0, B), (4.0, C), (2.0, C)])
def test_one_request_gets_the_most_accurate_point_that_fits(slack, expected):
    decision = hand_policy().decide(1000.0, [1000.0 + slack])
    assert (decision.batch, decision.subnet, decision.run, decision.reject) == (1, expected, (0,), ())


def test_hopeless_request_is_rejected_at_once():
    decision = hand_policy().decide(0.0, [1.9])  # even C alone (2 ms) cannot make it
    assert decision.batch == 0 and decision.subnet is None and decision.reject == (0,)
    decision = hand_policy().decide(0.0, [1.0, 50.0])  # the first is hopeless, the second is served
    assert decision.reject == (0,) and decision.run == (1,) and decision.subnet == A


def test_margin_is_applied_to_every_prediction():
    # A takes 10 ms; with a 20 % margin it is predicted at 12 ms and no longer fits 11 ms
    assert hand_policy(margin=0.0).decide(0.0, [11.0]).subnet == A
    decision = hand_policy(margin=0.2).decide(0.0, [11.0])
    assert decision.subnet == B and decision.predicted_ms == pytest.approx(6.0)


def test_whole_queue_in_one_batch_on_the_best_point_that_fits():
    decision = hand_policy().decide(0.0, [20.0, 21.0, 22.0, 23.0])  # 4 at once: A 28 ms too slow, B 14 fits
    assert (decision.batch, decision.subnet, decision.run) == (4, B, (0, 1, 2, 3))
    decision = hand_policy().decide(0.0, [6.0] * 4)  # only C (5 ms at 4) fits
    assert (decision.batch, decision.subnet) == (4, C)


def test_batch_shrinks_until_a_point_fits():
    # 4 at once needs 5 ms on C but the oldest has 4 ms left: 3 at once take 4 ms on C (between 3 and 5)
    decision = hand_policy().decide(0.0, [4.0, 50.0, 50.0, 50.0])
    assert (decision.batch, decision.subnet, decision.run, decision.reject) == (3, C, (0, 1, 2), ())


def test_requests_left_behind_keep_their_chance():
    # 6 queued, batches of at most 4: A fits the first 4 (28 <= 30) but would leave the other 2 (3 ms on C) no
    # time; B (14 ms) leaves them room
    decision = hand_policy().decide(0.0, [30.0] * 6)
    assert (decision.batch, decision.subnet, decision.run, decision.reject) == (4, B, (0, 1, 2, 3), ())


def test_requests_that_will_miss_anyway_are_rejected_now():
    # 5 queued with 6 ms each: 4 run on C (5 ms); the fifth then has 1 ms left, less than C alone needs (2 ms)
    decision = hand_policy().decide(0.0, [6.0] * 5)
    assert (decision.batch, decision.subnet, decision.run, decision.reject) == (4, C, (0, 1, 2, 3), (4,))


def test_static_policy_serves_its_one_point_or_rejects():
    static = Policy(LatencyTable({A: HAND[A]}), {A: 80.0}, margin=0.0)
    assert static.decide(0.0, [100.0] * 3)[:2] == (3, A)
    decision = static.decide(0.0, [20.0] * 3)  # 3 at once take 22 ms; 2 take 16, leaving the third 4 ms (< 10)
    assert decision[:2] == (2, A) and decision.reject == (2,)
    assert static.decide(0.0, [9.0]).reject == (0,)


def test_equal_accuracy_prefers_the_faster_point():
    policy = Policy(LatencyTable(HAND), {A: 70.0, B: 70.0, C: 60.0}, margin=0.0)
    assert policy.decide(0.0, [100.0]).subnet == B


def test_calibration_scales_predictions_by_the_observed_slowdown():
    policy = hand_policy(calibration=Calibration(quantile=0.5, window=4))
    assert policy.decide(0.0, [10.0]).subnet == A
    for t in range(4):
        policy.observe(A, 1, 20.0, now_ms=t)  # twice the profiled 10 ms
    assert policy.calibration.scale == pytest.approx(2.0)
    assert policy.predict_ms(C, 4) == pytest.approx(10.0)
    assert policy.decide(5.0, [15.0]).subnet == B  # A now predicted at 20 ms; B at 10 ms fits
    for t in range(4):
        policy.observe(B, 2, 8.0, now_ms=10 + t)  # back to the profile: the window forgets the slow batches
    assert policy.calibration.scale == pytest.approx(1.0)


def test_calibration_takes_the_quantile_and_clips():
    calibration = Calibration(quantile=0.9, window=10)
    for ratio in [1.0] * 8 + [3.0, 5.0]:
        calibration.observe(ratio * 10, 10, now_ms=0.0)
    assert calibration.scale == pytest.approx(3.0)  # the 9th of 10 sorted ratios
    calibration.observe(10_000, 1, now_ms=0.0)  # a stray measurement cannot run away
    assert calibration.scale <= 20.0
    with pytest.raises(PolicyError, match="quantile"):
        Calibration(quantile=0.0)


def test_one_slow_batch_moves_nothing_until_a_tenth_of_the_window_is_slow():
    calibration = Calibration(quantile=0.9, window=32)
    calibration.observe(200.0, 10.0, now_ms=0.0)  # e.g. the first batch after start-up, 20x the profile
    assert calibration.scale == pytest.approx(1.0)
    for t in range(1, 4):
        calibration.observe(30.0, 10.0, now_ms=t)
    assert calibration.scale == pytest.approx(3.0)  # 4 of 32 slow: the 0.9 quantile (29th of 32) is slow


def test_a_scale_no_batch_confirms_expires_and_the_server_serves_again():
    policy = hand_policy(calibration=Calibration(quantile=0.9, window=4, max_age_ms=1000.0))
    for t in range(4):
        policy.observe(C, 1, 40.0, now_ms=t)  # 20x: everything now looks hopeless
    assert policy.decide(10.0, [10.0 + 30.0]).reject == (0,)  # C alone predicted at 40 ms > 30 ms
    decision = policy.decide(2000.0, [2000.0 + 30.0])  # a second later the old ratios are gone
    assert policy.calibration.scale == pytest.approx(1.0) and (decision.batch, decision.subnet) == (1, A)


def test_policy_rejects_missing_accuracy_and_bad_margin():
    with pytest.raises(PolicyError, match="no accuracy for operating point.*128:0.5"):
        Policy(LatencyTable(HAND), {A: 1.0, B: 2.0})
    with pytest.raises(PolicyError, match="margin"):
        Policy(LatencyTable(HAND), HAND_ACC, margin=-0.1)


# --- on the saved profile of super_deit_s and its published accuracy table ---

@pytest.fixture(scope="module")
def saved():
    with open(SAVED_PROFILES) as handle:
        profiles = list(json.load(handle)["profiles"].values())
    with open(os.path.join(DATA, "super_deit_s_published_top1.json")) as handle:
        accuracy = {Subnet.parse(k): v for k, v in json.load(handle).items()}
    return latency_from_profiles(profiles), accuracy


def test_saved_profile_covers_every_point_at_several_batch_sizes(saved):
    latency, accuracy = saved
    assert len(latency) == 12 and set(latency) == set(accuracy)
    batches = {tuple(sorted(by_batch)) for by_batch in latency.values()}
    assert len(batches) == 1 and len(next(iter(batches))) >= 3


def test_saved_profile_one_request_matches_a_brute_force_choice(saved):
    latency, accuracy = saved
    policy = Policy(LatencyTable(latency), accuracy, margin=0.1)
    fastest = min(by_batch[1] for by_batch in latency.values()) * 1.1
    chosen = set()
    for slack in [fastest * (1 + i / 20) for i in range(80)]:
        fits = [s for s in latency if latency[s][1] * 1.1 <= slack]
        expected = max(fits, key=lambda s: (accuracy[s], -latency[s][1]))
        decision = policy.decide(0.0, [slack])
        assert (decision.batch, decision.subnet) == (1, expected), slack
        chosen.add(decision.subnet)
    assert len(chosen) >= 4  # the sweep crossed several points, ending at the most accurate
    assert max(accuracy, key=accuracy.get) in chosen


def test_saved_profile_a_burst_lowers_the_point_and_batches(saved):
    latency, accuracy = saved
    policy = Policy(LatencyTable(latency), accuracy, margin=0.1)
    best = max(accuracy, key=accuracy.get)
    slack = 1.2 * latency[best][1] * 1.1  # the most accurate point alone fits, with 20 % to spare
    assert policy.decide(0.0, [slack]).subnet == best
    queue = [slack] * 12  # a burst: 12 requests with that much time left
    decision = policy.decide(0.0, queue)
    assert decision.batch > 1 and accuracy[decision.subnet] < accuracy[best]
    assert policy.predict_ms(decision.subnet, decision.batch) <= slack  # and the batch still meets the deadline


def test_rate_guard_keeps_to_points_that_sustain_the_arrival_rate():
    # best throughput within a 100 ms budget: A 4 / 28 ms = 143/s, B 4 / 14 ms = 286/s, C 4 / 5 ms = 800/s
    policy = hand_policy(budget_ms=100.0)
    assert policy.capacity(A) == pytest.approx(1e3 * 4 / 28)
    assert policy.decide(0.0, [100.0], arrival_rate=100.0).subnet == A
    assert policy.decide(0.0, [100.0], arrival_rate=200.0).subnet == B  # one request, but a burst is arriving
    assert policy.decide(0.0, [100.0], arrival_rate=500.0).subnet == C
    assert policy.decide(0.0, [100.0], arrival_rate=5000.0).subnet == C  # none sustains it: the one closest
    assert hand_policy().decide(0.0, [100.0], arrival_rate=500.0).subnet == A  # no budget: deadlines alone


def test_rate_guard_counts_only_batches_that_fit_the_budget_at_the_typical_speed():
    policy = hand_policy(budget_ms=20.0)  # A: 3 at once (22 ms) no longer fit: 2 / 16 ms = 125/s
    assert policy.capacity(A) == pytest.approx(125.0)
    assert policy.decide(0.0, [20.0], arrival_rate=130.0).subnet == B
    for t in range(32):
        policy.observe(C, 1, 4.0, now_ms=t)  # twice the profile: typical (median) speed halves the throughput
    assert policy.calibration.typical == pytest.approx(2.0)
    # B now predicted at 10, 16, 22 ms for 1, 2, 3 at once: batches of up to 2 fit, 2 / (8 ms x 2) = 125/s
    assert policy.capacity(B) == pytest.approx(125.0)


def test_time_around_the_forward_is_added_to_every_prediction():
    policy = hand_policy(calibration=Calibration(quantile=0.9, window=4))
    for t in range(4):
        policy.observe(A, 1, 10.0, now_ms=t, overhead_ms=3.0)  # the forward as profiled, 3 ms around it
    assert policy.calibration.scale == pytest.approx(1.0) and policy.calibration.overhead_ms == pytest.approx(3.0)
    assert policy.predict_ms(B, 2) == pytest.approx(8.0 + 3.0)
    assert policy.decide(10.0, [10.0 + 12.0]).subnet == B  # A would take 13 ms now


def test_a_probe_runs_when_everything_looks_hopeless_for_a_second():
    policy = hand_policy(calibration=Calibration(quantile=0.9, window=4, max_age_ms=60_000.0))
    for t in range(4):
        policy.observe(C, 1, 40.0, now_ms=t)  # a busy spell: 20x the profile
    decision = policy.decide(500.0, [500.0 + 30.0, 500.0 + 31.0])  # C alone predicted at 40 ms > 30
    assert decision.batch == 0 and decision.reject == (0, 1)  # no batch for only 0.5 s: no probe yet
    decision = policy.decide(1003.0, [1003.0 + 30.0, 1003.0 + 31.0])
    assert (decision.batch, decision.subnet, decision.run, decision.reject) == (1, C, (0,), (1,))
    assert policy.decide(1003.0, [1003.0 + 1.5]).batch == 0  # not even the profile fits: no probe
    policy.observe(C, 1, 2.0, now_ms=1010.0)  # the probe ran as profiled
    assert policy.calibration.last_ms == 1010.0
