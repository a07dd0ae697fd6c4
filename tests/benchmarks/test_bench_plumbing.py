"""The benchmark plumbing: interleaved timing and the model benchmark's rows, files and efficiency column.

Timings themselves are not asserted (speed claims live in benchmarks/results, never in unit tests).
"""
import csv
import os
import subprocess
import sys

import pytest
import torch

import bench_latency_breakdown
import bench_models
import harness

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")


def test_time_interleaved_times_every_candidate_once_per_round_in_rotating_order():
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    stats = harness.time_interleaved(candidates, torch.device("cpu"), rounds=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one call each
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    for s in stats.values():
        assert s["rounds"] == 4 and 0 <= s["min_ms"] <= s["median_ms"] <= s["max_ms"]


def test_model_benchmark_writes_one_row_per_subnet_with_efficiency(tmp_path):
    bench_models.main(["--device", "cpu", "--models", "super_deit_s", bench_models.TIMM_BASELINE,
                       "--backends", "auto", "--batches", "1", "--repeats", "1", "--warmup", "0", "--no-train",
                       "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "models_eval.csv")))
    ours = [r for r in rows if r["model"] == "super_deit_s"]
    assert len(ours) == 12 and len(rows) == 13
    assert {(int(r["img_size"]), float(r["keep_ratio"])) for r in ours} == {
        (s, k) for s in (128, 160, 192, 224) for k in (0.5, 0.7, 1.0)}
    for r in ours:
        speedup, flop_ratio, eff = float(r["speedup_vs_full"]), float(r["flop_ratio"]), float(r["efficiency"])
        assert abs(eff - speedup / flop_ratio) < 1e-9
        assert flop_ratio >= 1.0
    full = next(r for r in ours if r["img_size"] == "224" and r["keep_ratio"] == "1.0")
    assert float(full["efficiency"]) == 1.0 and float(full["flop_ratio"]) == 1.0
    smallest = next(r for r in ours if r["img_size"] == "128" and r["keep_ratio"] == "0.5")
    assert abs(float(smallest["flop_ratio"]) - 6.2) < 0.1  # the published 4.60 / 0.74 GMACs
    assert (tmp_path / "models_eval.md").read_text().startswith("| model |")
    assert (tmp_path / "models_eval.png").stat().st_size > 1000
    for r in rows:  # every row says how loaded the machine was and whether its timing is trustworthy
        assert float(r["load_before"]) >= 0 and float(r["load_after"]) >= 0
        assert r["noisy"] in ("True", "False") and float(r["rel_spread"]) >= 0


def test_run_cpu_help_runs_nothing(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(BENCH, "run_cpu.py"), "--help"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "--out" in done.stdout and "runs/bench" in done.stdout
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("module", [bench_models, bench_latency_breakdown])
def test_runner_help_runs_nothing(module, capsys):
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0 and "--out" in capsys.readouterr().out


def test_results_go_to_a_new_run_folder_unless_out_is_given(tmp_path):
    default = harness.run_folder(torch.device("cpu"))
    root = os.path.dirname(os.path.abspath(BENCH))
    assert os.path.dirname(default) == os.path.join(root, "runs", "bench")
    assert "benchmarks" not in os.path.relpath(default, root).split(os.sep)
    assert harness.run_folder(torch.device("cpu"), str(tmp_path)) == str(tmp_path)


def test_noisy_rows_are_counted_in_one_warning():
    rows = [{"noisy": True, "load_before": 1.5}, {"noisy": False, "load_before": 0.2}, {"noisy": True,
                                                                                      "load_before": 2.0}]
    note = harness.noisy_note(rows)
    assert note.startswith("warning: 2 of 3 rows are noisy") and "1.50..2.00" in note
    assert harness.noisy_note([{"noisy": False}]) == ""
