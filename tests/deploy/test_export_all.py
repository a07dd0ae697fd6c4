"""Every sub-network of both super-networks and of the demo network, exported to ONNX and .pt2 with the kept
indices: ONNX Runtime and the .pt2 (in a process without supervit) against PyTorch eager at batch 1 and 7.

About 30-60 s per sub-network, so it runs only when asked for: ``pytest -m export_all tests/deploy``.
"""
import pytest

from test_export_support import (assert_matches, eager_outputs, example_batches, model_by_name,
                                 run_without_supervit)
from supervit.deploy import export, runners

pytestmark = pytest.mark.export_all
MODELS = ("super_deit_s", "super_lvvit_s", "demo")
_models = {}


@pytest.fixture(autouse=True)
def _only_when_selected(request):
    if "export_all" not in (request.config.option.markexpr or ""):
        pytest.skip("all-sub-network export check: run with -m export_all")


def _model(name):
    if name not in _models:
        _models[name] = model_by_name(name)
    return _models[name]


def _subnets(name):
    sizes = {"demo": (16, 20, 24, 28)}.get(name, (128, 160, 192, 224))
    return [(name, s, r) for s in sizes for r in (0.5, 0.7, 1.0)]


@pytest.mark.parametrize("case", [c for name in MODELS for c in _subnets(name)], ids=lambda c: "-".join(map(str, c)))
def test_onnx_and_pt2_match_eager(case, tmp_path):
    name, size, ratio = case
    model = _model(name)
    program, subnet = export.export_program(model, size, ratio, with_kept=True)
    names = export.output_names(subnet)
    onnx_path = export.write_program(program, "onnx", tmp_path / "net.onnx", names)
    pt2_path = export.write_program(program, "pt2", tmp_path / "net.pt2", names)
    inputs = example_batches(model)
    expected = eager_outputs(model, size, ratio, inputs)
    run = runners.load_runner(onnx_path, "onnx")
    for x, want in zip(inputs, expected):
        assert_matches(run(x), want, f"onnx {case} batch {x.shape[0]}")
    results = run_without_supervit([(pt2_path, "pt2")], {pt2_path: inputs}, str(tmp_path))
    for got, want in zip(results[pt2_path], expected):
        assert_matches(got, want, f"pt2 {case} batch {want[0].shape[0]}")
