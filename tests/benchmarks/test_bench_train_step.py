"""The training-step benchmark's plumbing (tiny model, 'aot_eager' so nothing is generated): both candidates timed,
the numerical check, the ratio, the GPU wrapper's target line, and the GPU check's summary reading the result.
Timings are not asserted."""
import csv

import bench_train_gpu
import gpu_check


def test_train_step_benchmark_rows_and_gpu_summary(tmp_path):
    out = tmp_path / "train_step"
    rows = bench_train_gpu.main(["--tiny", "--backend", "aot_eager", "--rounds", "2", "--out", str(out)])
    assert [r["candidate"] for r in rows] == ["eager", "compiled"]
    for r in rows:
        assert r["median_ms"] > 0 and r["img_per_s"] > 0 and r["model_gflop_per_s"] > 0 and r["mfu"] == ""
        assert r["loss_max_rel_err"] < 1e-4 and r["grad_max_err_rel_to_max"] < 1e-4  # compiled == eager
        assert r["ratio_ci_low"] <= r["eager_over_compiled"] <= r["ratio_ci_high"]
    saved = list(csv.DictReader(open(out / "train_step.csv")))
    assert len(saved) == 2 and float(saved[1]["compile_s"]) > 0
    line = bench_train_gpu.target_line(rows)
    assert line.startswith("compiled fp32 training step of tiny at batch 4: ") and "target 1.2x" in line
    summary = gpu_check.target_lines(str(tmp_path))
    assert any(s.startswith("- compiled fp32 training step b4: ") for s in summary)
