"""supervit.deploy.timing: interleaved rounds, statistics, noisy flag, recorded conditions."""
import json

import pytest
import torch

from supervit import timing


def test_rounds_rotate_and_every_candidate_is_warmed_up_first():
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    stats = timing.time_interleaved(candidates, "cpu", rounds=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    for s in stats.values():
        assert s["rounds"] == 4
        assert 0 <= s["min_ms"] <= s["q1_ms"] <= s["median_ms"] <= s["q3_ms"] <= s["max_ms"]


def test_summary_statistics_and_noisy_flag():
    steady = timing.summarize([0.010, 0.010, 0.010, 0.010, 0.010])
    assert steady["median_ms"] == pytest.approx(10.0) and steady["rel_spread"] == pytest.approx(0.0)
    assert not steady["noisy"]
    spread = timing.summarize([0.010, 0.020, 0.030, 0.040, 0.050])  # quartiles 20 / 40 ms, median 30 ms
    assert spread["median_ms"] == pytest.approx(30.0)
    assert spread["iqr_ms"] == pytest.approx(20.0) and spread["rel_spread"] == pytest.approx(2 / 3)
    assert spread["noisy"] and spread["min_ms"] == pytest.approx(10.0) and spread["max_ms"] == pytest.approx(50.0)
    assert not timing.summarize([0.010, 0.020, 0.030, 0.040, 0.050], noisy_spread=1.0)["noisy"]
    single = timing.summarize([0.004])
    assert single["iqr_ms"] == 0.0 and single["rounds"] == 1


def test_min_seconds_adds_rounds():
    stats = timing.time_interleaved({"sleep": lambda: torch.ones(1)}, "cpu", rounds=1, warmup=0, min_seconds=0.02)
    assert stats["sleep"]["rounds"] > 1


def test_measure_records_conditions_and_load():
    results, cond = timing.measure({"x": lambda: None}, "cpu", dtype=torch.float32, batch=8, backend="auto",
                                   mode="eager", rounds=2, warmup=0)
    assert set(results) == {"x"}
    assert cond["dtype"] == "float32" and cond["batch"] == 8 and cond["mode"] == "eager"
    assert cond["backend"] == "auto" and cond["device"].startswith("cpu-")
    for key in ("machine", "torch", "triton", "threads", "load_before", "load_after", "command"):
        assert key in cond
    json.dumps(cond)  # JSON-able


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="rounds"):
        timing.time_interleaved({"x": lambda: None}, "cpu", rounds=0)
    with pytest.raises(ValueError, match="candidates"):
        timing.time_interleaved({}, "cpu")


def test_paired_ratio_is_the_median_round_ratio_with_an_interval_around_it():
    ours = [10.0, 11.0, 30.0, 10.5, 9.8, 10.2, 10.1]  # one slow spell (round 3) hits both sides
    plain = [11.0, 12.1, 33.0, 11.6, 10.7, 11.2, 11.0]
    res = timing.paired_ratio(ours, plain)
    ratios = sorted(o / p for o, p in zip(ours, plain))
    assert res["ratio_median"] == pytest.approx(ratios[3])
    assert ratios[0] <= res["ratio_ci_low"] <= res["ratio_median"] <= res["ratio_ci_high"] <= ratios[-1]
    assert res["ratio_ci_high"] < 1.0  # every round says ours is faster: the interval excludes 1
    even = timing.paired_ratio([1.0, 2.0, 1.0, 2.0], [2.0, 1.0, 2.0, 1.0])
    assert even["ratio_ci_low"] < 1.0 < even["ratio_ci_high"]
    with pytest.raises(ValueError, match="equally long"):
        timing.paired_ratio([1.0], [1.0, 2.0])


def test_time_interleaved_keeps_the_round_timings_on_request():
    stats = timing.time_interleaved({"a": lambda: None, "b": lambda: None}, "cpu", rounds=3, warmup=0,
                                    keep_times=True)
    assert [len(stats[n]["times_ms"]) for n in "ab"] == [3, 3]
    assert stats["a"]["median_ms"] == pytest.approx(sorted(stats["a"]["times_ms"])[1])
    assert "times_ms" not in timing.time_interleaved({"a": lambda: None}, "cpu", rounds=1, warmup=0)["a"]
