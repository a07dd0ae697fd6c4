"""supervit.deploy.timing: interleaved rounds, statistics, noisy flag, recorded conditions."""
import json

import pytest
import torch

from supervit.deploy import timing


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
