"""The GPU check and GPU benchmarks on a machine without a GPU: a clear stop (exit 2), and their CPU-side logic."""
import csv
import os
import subprocess
import sys

import pytest
import torch

import bench_triton
import gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")


@no_gpu
def test_make_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run(["make", "-s", "gpu-check", f"OUT={out}", f"PY={sys.executable}", "PART=tests"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("gpu-check needs a CUDA GPU") and "nothing was run" in first
    assert "Traceback" not in done.stderr and not out.exists()


@no_gpu
def test_gpu_scripts_exit_2_without_a_gpu(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "x"), "--part", "bench"]) == 2
    assert bench_triton.main(["--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "nothing was measured" in err
    assert gpu_check.main(["--out", " "]) == 2


def test_fp32_attention_baseline_is_a_backend_with_fp32_kernels():
    from torch.nn.attention import SDPBackend

    backend, label = bench_triton.sdpa_baseline(torch.float32)
    assert backend == SDPBackend.EFFICIENT_ATTENTION and "flash has no fp32" in label
    for dtype in (torch.bfloat16, torch.float16):
        assert bench_triton.sdpa_baseline(dtype)[0] == SDPBackend.FLASH_ATTENTION


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_summary_reads_the_targets_from_the_result_files(tmp_path):
    _write(tmp_path / "models" / "models_eval.csv", [
        dict(model="timm_deit_small_patch16_224", batch="256", img_size="224", keep_ratio="1.0", img_per_s="1000"),
        dict(model="super_deit_s", batch="256", img_size="224", keep_ratio="0.7", img_per_s="1500"),
        dict(model="super_deit_s", batch="256", img_size="224", keep_ratio="0.5", img_per_s="1700"),
        dict(model="super_deit_s", batch="1", img_size="224", keep_ratio="0.5", img_per_s="10")])
    _write(tmp_path / "cuda_graphs" / "cuda_graphs.csv", [
        dict(model="super_deit_s", img_size="224", keep_ratio="1.0", mode="cuda_graph", below_full=""),
        dict(model="super_deit_s", img_size="128", keep_ratio="0.5", mode="cuda_graph", below_full="True"),
        dict(model="super_deit_s", img_size="224", keep_ratio="0.7", mode="cuda_graph", below_full="False")])
    text = "\n".join(gpu_check.target_lines(str(tmp_path)))
    assert "(224, 0.7) b256: 1.50x timm DeiT-S throughput (target 1.4x): True" in text
    assert "(224, 0.5) b256: 1.70x timm DeiT-S throughput (target 1.8x): False" in text
    assert "1 of 2 pruned sub-networks below (224, 1); not: (224, 0.7)" in text
    assert gpu_check.target_lines(str(tmp_path / "empty")) == ["- no benchmark results under this folder "
                                                               "(run PART=bench)"]


def test_steps_log_each_command_and_the_summary_lists_them(tmp_path):
    steps = gpu_check.Steps(str(tmp_path), budget_s=60)
    assert steps.run("ok", [sys.executable, "-c", "print('hello from the step')"]) == 0
    assert steps.run("fails", [sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert "hello from the step" in (tmp_path / "ok.log").read_text()
    summary = open(gpu_check.write_summary(str(tmp_path), "tests", steps)).read()
    assert "| ok | 0 |" in summary and "| fails | 3 |" in summary and "## Targets" not in summary
    import tarfile

    with tarfile.open(gpu_check.write_archive(str(tmp_path), "tests")) as tar:
        assert set(tar.getnames()) == {"ok.log", "fails.log", "summary.md"}


def test_gpu_test_files_are_the_files_with_gpu_marks():
    files = gpu_check.gpu_test_files()
    assert "tests/kernels/triton/test_triton_gpu.py" in files
    assert "tests/kernels/triton/test_triton_gpu_cuda_graph.py" in files
    assert "tests/kernels/triton/test_triton_prune.py" not in files


def test_cuda_graph_plot_draws_every_model(tmp_path):
    import bench_cuda_graphs

    rows = [dict(model=m, img_size=s, keep_ratio=r, mode=mode, median_ms=1.0 + s / 224 * r)
            for m in ("super_deit_s", "timm_deit_small_patch16_224") for s, r in ((224, 1.0), (128, 0.5))
            if not (m.startswith("timm_") and s != 224) for mode in ("eager", "cuda_graph")]
    path = tmp_path / "graphs.png"
    bench_cuda_graphs.plot(rows, str(path))
    assert path.stat().st_size > 1000
    if not torch.cuda.is_available():
        assert bench_cuda_graphs.main(["--out", str(tmp_path / "x")]) == 2


def test_triton_benchmark_plot(tmp_path):
    rows = [dict(group="attention", case="fwd+bwd", impl=impl, shape="B256 H6 N197 D64", time_vs_baseline=ratio,
                 dtype="bf16", batch=256) for impl, ratio in (("sdpa-flash (no score)", ""), ("triton", 1.08))]
    rows.append(dict(group="pruning", case="backend fwd+bwd", impl="triton", shape="B256 N197 C384 r0.7",
                     time_vs_baseline=0.1, dtype="bf16", batch=256))
    bench_triton.plot(rows, str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").stat().st_size > 1000
