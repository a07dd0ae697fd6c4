"""Export of one sub-network (a representative subset; all 24 + the demo's 12: test_export_all.py).

ONNX runs in ONNX Runtime in this process; .pt2 and AOTInductor packages run in a process where supervit cannot be
imported. Logits within 1e-4 of PyTorch eager, the same kept token indices, batch 1 and 7 through one export.
"""
import os
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch

from test_export_support import (assert_matches, eager_outputs, example_batches, model_by_name,
                                 run_without_supervit)
from supervit.deploy import export, runners

# (model, img_size, keep_ratio, formats): both bodies at a pruned sub-network, the demo net (LV-ViT body) in every
# format and at its smallest size without pruning (input resized inside, no kept outputs). Kept small for the
# default suite's time budget; test_export_all.py runs every sub-network in ONNX and .pt2.
CASES = [
    ("super_deit_s", 160, 0.5, ("onnx", "pt2")),
    ("super_lvvit_s", 224, 0.7, ("pt2",)),
    ("demo", 20, 0.7, ("onnx", "pt2", "aoti")),
    ("demo", 16, 1.0, ("onnx",)),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(model, size, ratio): (model, program, {fmt: path})}, each case traced once and written in its formats."""
    done = {}
    for name, size, ratio, formats in CASES:
        model = model_by_name(name)
        program, subnet = export.export_program(model, size, ratio, with_kept=True)
        folder = tmp_path_factory.mktemp(f"{name}_{size}_{ratio}")
        paths = {fmt: export.write_program(program, fmt, folder / f"net_{fmt}{export.SUFFIX[fmt]}",
                                           export.output_names(subnet)) for fmt in formats}
        done[(name, size, ratio)] = (model, program, paths)
    return done


@pytest.mark.parametrize("case", [c[:3] for c in CASES if "onnx" in c[3]], ids=lambda c: "-".join(map(str, c)))
def test_onnx_runtime_matches_eager(exported, case):
    model, _, paths = exported[case]
    inputs = example_batches(model)
    run = runners.load_runner(paths["onnx"], "onnx")
    for x, expected in zip(inputs, eager_outputs(model, case[1], case[2], inputs)):
        assert_matches(run(x), expected, f"onnx {case} batch {x.shape[0]}")


def test_pt2_and_aoti_run_without_supervit(exported, tmp_path):
    files, inputs, expected = [], {}, {}
    for case, (model, _, paths) in exported.items():
        batches = example_batches(model)
        for fmt in ("pt2", "aoti"):
            if fmt in paths:
                files.append((paths[fmt], fmt))
                inputs[paths[fmt]] = batches
                expected[paths[fmt]] = eager_outputs(model, case[1], case[2], batches)
    assert {fmt for _, fmt in files} == {"pt2", "aoti"} and len(files) >= 4
    results = run_without_supervit(files, inputs, str(tmp_path))  # one process for all: torch imports once
    for path, fmt in files:
        for got, want in zip(results[path], expected[path]):
            assert_matches(got, want, f"{fmt} {path} batch {want[0].shape[0]}")


def test_program_holds_one_position_table_and_standard_ops_only(exported):
    model, program, paths = exported[("super_deit_s", 160, 0.5)]
    tables = {k: tuple(v.shape) for k, v in program.state_dict.items() if "pos_embed" in k}
    assert tables == {"net.pos_embed_list.table": (1, 1 + (160 // 16) ** 2, 384)}
    assert len(model.pos_embed_list) == 4 and model.img_sizes == (128, 160, 192, 224)  # the model is untouched
    assert not any("supervit" in str(n.target) for n in program.graph.nodes)
    graph = onnx.load(paths["onnx"]).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}
    assert {"MatMul", "Softmax", "TopK", "GatherElements"} <= {n.op_type for n in graph.node}
    assert [i.name for i in graph.input] == ["image"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in graph.output] == ["logits", "kept_3", "kept_6", "kept_9"]
    assert [o.type.tensor_type.shape.dim[1].dim_value for o in graph.output[1:]] == [51, 26, 14]


def _build_cpp_runner(folder) -> str:
    """Compile the C++ program below against the torch wheel's libtorch; skip the test when it cannot build."""
    if shutil.which("g++") is None:
        pytest.skip("no g++ here to build the C++ runner")
    torch_dir = os.path.dirname(torch.__file__)
    source, binary = os.path.join(folder, "run_aoti.cpp"), os.path.join(folder, "run_aoti")
    with open(source, "w") as f:
        f.write(CPP_RUNNER)
    cmd = ["g++", "-std=c++20", "-O1", source, "-o", binary,
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           f"-I{torch_dir}/include", f"-I{torch_dir}/include/torch/csrc/api/include",
           f"-L{torch_dir}/lib", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_dir}/lib"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"the C++ runner does not build here: {proc.stderr.strip().splitlines()[-1:]}")
    return binary


CPP_RUNNER = r"""
// run_aoti PACKAGE B C S OUT: runs an AOTInductor package on linspace(-1, 1) of shape [B, C, S, S] and writes
// the logits (float32, row-major) to OUT. No Python: libtorch only.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>
#include <fstream>
#include <iostream>

int main(int argc, char** argv) {
  if (argc != 6) { std::cerr << "usage: run_aoti PACKAGE B C S OUT" << std::endl; return 2; }
  c10::InferenceMode no_autograd;
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  const int64_t b = std::stoll(argv[2]), c = std::stoll(argv[3]), s = std::stoll(argv[4]);
  auto x = torch::linspace(-1.0, 1.0, b * c * s * s).reshape({b, c, s, s});
  auto outputs = loader.run({x});
  auto logits = outputs[0].contiguous();
  std::ofstream out(argv[5], std::ios::binary);
  out.write(reinterpret_cast<const char*>(logits.data_ptr<float>()), logits.numel() * sizeof(float));
  std::cout << outputs.size() << std::endl;
  return 0;
}
"""


def test_aoti_package_runs_from_the_cpp_runtime(exported, tmp_path):
    model, _, paths = exported[("demo", 20, 0.7)]
    binary = _build_cpp_runner(str(tmp_path))
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["LD_LIBRARY_PATH"] = torch_lib  # the compiled model dlopens libtorch.so
    for batch in (1, 3):
        out_file = str(tmp_path / f"logits_{batch}.bin")
        proc = subprocess.run([binary, paths["aoti"], str(batch), "1", "28", out_file], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == "4"  # logits + 3 kept index tensors
        logits = torch.from_numpy(np.fromfile(out_file, dtype=np.float32)).reshape(batch, -1)
        x = torch.linspace(-1.0, 1.0, batch * 28 * 28).reshape(batch, 1, 28, 28)
        expected = eager_outputs(model, 20, 0.7, [x])[0][0]
        assert (logits - expected).abs().max().item() <= 1e-4
