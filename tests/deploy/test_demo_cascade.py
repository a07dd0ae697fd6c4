"""The demo's cascade report on a tiny untrained digits network: printed beside the static table, files written."""
import json

import pytest
import torch

from supervit.models import SuperLVViT


@pytest.fixture(scope="module")
def tiny_digits_model():
    torch.manual_seed(0)
    return SuperLVViT(img_sizes=(16, 20, 24, 28), keep_ratios=(0.5, 0.7, 1.0), prune_layers=(1,), patch_size=4,
                      in_chans=1, num_classes=10, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                      stem_dim=8).eval()


def test_report_cascade_prints_and_redraws_the_plot(tmp_path, capsys, tiny_digits_model):
    from train import demo_cascade, report

    rows = [{"img_size": s, "grid": f"{s // 4}x{s // 4}", "keep_ratio": r, "acc1": 10.0, "acc5": 50.0,
             "gmacs": 0.001 * s * r} for s, r in tiny_digits_model.subnets()]
    report.write_results(str(tmp_path), rows, {"title": "tiny"})
    before = (tmp_path / "accuracy_vs_gmacs.png").stat().st_size
    from train import digits

    held_out = digits.digits_datasets()[1]
    pick = torch.arange(0, 1000, 10)  # every 10th held-out digit, about 10 per class
    data = held_out.images[pick], held_out.targets[pick]
    res = demo_cascade.report_cascade(tiny_digits_model, str(tmp_path), budget_ratio=1.0, data=data,
                                      wall_time_batch=32)
    out = capsys.readouterr().out
    assert "cascade on the test half" in out and "wall time at batch 32" in out and "(reference)" in out
    assert "over 20 other stratified splits" in out and len(res["splits"]["rows"]) == 20
    halves = res["halves"]
    assert halves["calibration"] + halves["test"] == 100 and abs(halves["calibration"] - halves["test"]) <= 10
    assert res["timing"]["conditions"]["batch"] == 32 and res["curve"]
    saved = json.loads((tmp_path / "cascade.json").read_text())
    assert saved["cascade"]["stages"] == [list(s) for s in res["cascade"]["stages"]]
    assert (tmp_path / "accuracy_vs_gmacs.png").stat().st_size != before  # redrawn with the cascade curve
