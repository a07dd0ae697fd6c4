"""The confidence cascade: real gathering, batch 1, agreement with the simulation, fitting, splits, the command."""
import json

import pytest
import torch

from supervit.deploy import cascade as casc
from supervit.deploy.cli import main as deploy_main
from supervit.deploy import DeployError
from supervit.models import flops

from deploy_helpers import tiny_model


class CountingModel(torch.nn.Module):
    """Records the batch size each sub-network call receives."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, img_size, keep_ratio):
        self.calls.append(((img_size, keep_ratio), x.shape[0]))
        return self.model(x, img_size=img_size, keep_ratio=keep_ratio)


def test_confidence_measures():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    assert torch.allclose(casc.confidence(logits, "max_softmax"), torch.tensor([0.7, 0.4]))
    assert torch.allclose(casc.confidence(logits, "margin"), torch.tensor([0.5, 0.05]))
    with pytest.raises(DeployError, match="confidence must be one of"):
        casc.confidence(logits, "entropy")


def test_uncertain_samples_are_gathered_and_the_result_matches_the_simulation():
    torch.manual_seed(0)
    model = tiny_model()
    counting = CountingModel(model)
    images = torch.randn(32, 1, 16, 16)
    labels = torch.randint(0, 4, (32,))
    stages = [(8, 0.5), (12, 0.5), (16, 1.0)]
    outputs = casc.stage_outputs(model, images, stages)
    conf0 = casc.confidence(outputs[stages[0]], "max_softmax")
    conf1 = casc.confidence(outputs[stages[1]], "max_softmax")
    thresholds = [conf0.median().item(), conf1.quantile(0.3).item()]
    cascade = casc.Cascade(stages, thresholds, "max_softmax")
    logits, exits = cascade(counting, images)
    n0 = int((conf0 < thresholds[0]).sum())
    n1 = int(((conf0 < thresholds[0]) & (conf1 < thresholds[1])).sum())
    assert [c[1] for c in counting.calls] == [32, n0, n1] and 0 < n1 < n0 < 32  # smaller batches, not masks
    for i, stage in enumerate(stages):
        chosen = exits == i
        torch.testing.assert_close(logits[chosen], outputs[stage][chosen], atol=1e-5, rtol=1e-5)
    gmacs = {s: flops(model, *s) for s in stages}
    sim = casc.simulate(outputs, labels, stages, [thresholds], "max_softmax", gmacs)
    real = casc.evaluate_cascade(cascade, model, images, labels, gmacs, batch_size=32)
    assert real["acc1"] == pytest.approx(sim["acc1"][0])
    assert real["mean_gmacs"] == pytest.approx(sim["cost"][0])
    assert real["exit_fractions"] == pytest.approx(list(sim["exit_fractions"][0]))


def test_batch_one_runs_only_the_stages_it_needs():
    model = tiny_model()
    counting = CountingModel(model)
    x = torch.randn(1, 1, 16, 16)
    logits, exits = casc.Cascade([(8, 0.5), (16, 1.0)], [0.0], "margin")(counting, x)  # every sample exits
    assert logits.shape == (1, 4) and exits.tolist() == [0] and len(counting.calls) == 1
    counting.calls.clear()
    logits, exits = casc.Cascade([(8, 0.5), (16, 1.0)], [2.0], "margin")(counting, x)  # none exits early
    assert exits.tolist() == [1] and [c[1] for c in counting.calls] == [1, 1]
    with torch.inference_mode():
        torch.testing.assert_close(logits, model(x, img_size=16, keep_ratio=1.0))


CHEAP, COSTLY = (8, 0.5), (16, 1.0)


def _synthetic_outputs(n=400, seed=0):
    """Cheap stage 'a' is right on its confident 70 % and at chance elsewhere; expensive stage 'b' always right."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=gen)
    easy = torch.rand(n, generator=gen) < 0.7
    a = torch.randn(n, 5, generator=gen) * 0.1
    guess = torch.where(easy, labels, torch.randint(0, 5, (n,), generator=gen))
    a[torch.arange(n), guess] += torch.where(easy, 5.0, 0.3)
    b = torch.randn(n, 5, generator=gen) * 0.1
    b[torch.arange(n), labels] += 3.0
    return {CHEAP: a, COSTLY: b}, labels, {CHEAP: 1.0, COSTLY: 4.0}


def test_fit_finds_the_cascade_within_budget():
    outputs, labels, costs = _synthetic_outputs()
    fitted = casc.fit_cascade(outputs, labels, costs, budget=2.5)
    assert fitted.stages == [CHEAP, COSTLY]
    calib = fitted.fit["calibration"]
    assert calib["mean_gmacs"] <= 2.5 and calib["acc1"] == pytest.approx(100.0)  # hard ones all escalated
    assert calib["exit_fractions"][0] == pytest.approx(0.7, abs=0.06)
    assert set(fitted.fit["by_confidence"]) == {"max_softmax", "margin"}
    static = casc.fit_cascade(outputs, labels, costs, budget=2.5, max_stages=1)
    assert static.fit["calibration"]["acc1"] < 80  # 'b' alone does not fit, 'a' alone is worse
    with pytest.raises(DeployError, match="cheapest sub-network"):
        casc.fit_cascade(outputs, labels, costs, budget=0.5)


def test_a_sub_network_below_the_static_front_can_be_the_best_last_stage():
    # 'cheap' is right and sure on the easy 70 %; 'mid' is right on 90 % (easy + two thirds of the hard ones);
    # 'big' costs more than 'mid' and is right on only 85 %, but on every hard one: statically dominated by 'mid'.
    n, k = 300, 5
    labels = torch.arange(n) % k
    hard = torch.arange(n) % 10 >= 7                                   # 30 %
    mid_right = ~hard | (torch.arange(n) % 10 != 9)                    # misses a third of the hard ones
    big_right = hard | (torch.arange(n) % 20 >= 3)                     # misses 15 % of all, all easy

    def logits(right, margin):
        out = torch.zeros(n, k)
        out[torch.arange(n), torch.where(right, labels, (labels + 1) % k)] = margin
        return out

    cheap, mid, big = (8, 0.5), (12, 1.0), (16, 1.0)
    outputs = {cheap: torch.where(hard[:, None], logits(~hard, 0.3), logits(~hard, 6.0)),
               mid: logits(mid_right, 3.0), big: logits(big_right, 3.0)}
    costs = {cheap: 1.0, mid: 2.0, big: 3.0}
    assert casc.calibration_pareto(outputs, labels, costs) == [cheap, mid]
    fitted = casc.fit_cascade(outputs, labels, costs, budget=2.0)
    assert fitted.stages == [cheap, big]
    assert fitted.fit["calibration"]["acc1"] == pytest.approx(100.0)   # easy exit at 'cheap', hard go to 'big'
    front_only = casc.fit_cascade(outputs, labels, costs, budget=2.0, stage_pool="pareto")
    assert front_only.fit["calibration"]["acc1"] == pytest.approx(90.0)


def test_split_study_refits_on_every_split_and_summarizes_the_gaps():
    from supervit.deploy.cascade_study import format_split_study, split_study

    outputs, labels, costs = _synthetic_outputs()
    res = split_study(outputs, labels, costs, seeds=range(1, 6), budget_ratio=2.5 / 4.0)
    rows, sm = res["rows"], res["summary"]
    assert [r["seed"] for r in rows] == [1, 2, 3, 4, 5] and sm["splits"] == 5
    for r in rows:  # the costly stage is always right, so it is the reference and the best; the cascade reaches it
        assert r["reference"] == list(COSTLY) == r["best_on_test"] and r["stages"] == [list(CHEAP), list(COSTLY)]
        assert r["gap_to_best"] == pytest.approx(r["acc1"] - r["best_acc1"]) and r["gap_to_best"] > -2.0
        assert r["mean_gmacs"] <= 2.5 * 1.2 and r["gmacs_ratio_to_best"] == pytest.approx(r["mean_gmacs"] / 4.0)
    gaps = [r["gap_to_reference"] for r in rows]
    assert sm["gap_to_reference"]["mean"] == pytest.approx(sum(gaps) / 5) and sm["reference_gap_to_best"]["mean"] == 0
    assert sm["within_tolerance_of_best"] == sum(r["gap_to_best"] >= -0.5 and r["gmacs_ratio_to_best"] <= 0.8
                                                 for r in rows)
    assert "over 5 other stratified splits" in format_split_study(res)
    fixed = split_study(outputs, labels, costs, seeds=[1], budget=1.0)  # a fixed budget: only the cheap stage fits
    assert fixed["rows"][0]["stages"] == [list(CHEAP)] and fixed["rows"][0]["mean_gmacs"] == 1.0
    with pytest.raises(DeployError, match="no cascade fits the budget on any of the splits"):
        split_study(outputs, labels, costs, seeds=[1, 2], budget=0.5)


def test_stratified_halves_are_disjoint_balanced_and_fixed():
    labels = torch.arange(10).repeat_interleave(20)
    first, second = casc.stratified_halves(labels, seed=0)
    assert len(set(first.tolist()) | set(second.tolist())) == 200 and not set(first.tolist()) & set(second.tolist())
    assert torch.bincount(labels[first]).tolist() == [10] * 10
    again, _ = casc.stratified_halves(labels, seed=0)
    assert torch.equal(first, again)


def test_cascade_cli_on_tensors(tmp_path, capsys, tiny_checkpoint):
    torch.manual_seed(0)
    data = tmp_path / "data.pt"
    torch.save({"images": torch.randn(40, 1, 16, 16), "labels": torch.arange(4).repeat(10)}, data)
    out_json, png = tmp_path / "study.json", tmp_path / "cascade.png"
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(data), "--batch", "16",
                        "--budget-ratio", "1.0", "--time", "--save", str(out_json), "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0 and "cascade on the test half" in out and "wall time at batch 16" in out
    study = json.loads(out_json.read_text())
    assert study["halves"] == {"calibration": 20, "test": 20, "seed": 0}
    assert study["test"]["mean_gmacs"] <= study["budget"]["gmacs"] * 1.5  # fitted on the other half
    assert png.stat().st_size > 5000
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(data), "--budget-ms", "1e3",
                        "--rounds", "1", "--warmup", "0", "--profile", str(tmp_path / "p.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "cascade fitted to mean latency_ms <= 1000" in out and "mean latency_ms)" in out
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(data), "--splits", "3",
                        "--budget-ratio", "1.0", "--no-progress"])
    assert code == 0 and "over 3 other stratified splits" in capsys.readouterr().out
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(data), "--splits", "-1"])
    assert code == 2 and "--splits must be >= 0, got -1" in capsys.readouterr().err
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(data), "--budget-gmacs", "1e-9"])
    assert code == 2 and "below the cheapest sub-network (8, 0.5)" in capsys.readouterr().err
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint])
    assert code == 2 and "--tensors FILE or --data DIR" in capsys.readouterr().err
    import random

    rng = random.Random(0)
    for garbage in (b"nope", *(b"\x80\x02" + rng.randbytes(rng.randrange(1, 512)) for _ in range(40))):
        (tmp_path / "bad.pt").write_bytes(garbage)  # the unpickler fails on these in many ways (KeyError, ...)
        code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(tmp_path / "bad.pt")])
        err = capsys.readouterr().err
        assert code == 2 and "bad.pt" in err and len(err.strip().splitlines()) == 1, err


def test_cascade_cli_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    from deploy_helpers import TINY, write_tiny_checkpoint
    from supervit.models import SuperDeiT

    torch.manual_seed(0)
    ckpt = write_tiny_checkpoint(tmp_path / "rgb.pth", model=SuperDeiT(**{**TINY, "in_chans": 3}).eval())
    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(20, 20, 3) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "val" / cls / f"{i}.png")
    code = deploy_main(["cascade", "--checkpoint", ckpt, "--data", str(tmp_path / "val"), "--budget-ratio", "1",
                        "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "calibration half 6 / test half 6 images" in out
    code = deploy_main(["cascade", "--checkpoint", ckpt, "--data", str(tmp_path / "missing")])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_cascade_cli_on_a_digits_folder_uses_the_recorded_preprocessing(tmp_path, capsys):
    """A one-channel demo-style checkpoint and a folder of digit PNGs: greyscale, the recorded size and statistics."""
    from PIL import Image

    from deploy_helpers import TINY, write_tiny_checkpoint
    from supervit.deploy import images
    from supervit.models import SuperDeiT

    torch.manual_seed(0)
    model = SuperDeiT(**TINY).eval()
    path = tmp_path / "digits.pth"
    write_tiny_checkpoint(path, model=model)
    ckpt = torch.load(path, weights_only=True)
    ckpt["supervit"]["data_config"] = {"input_size": [1, 16, 16], "mean": [0.1307], "std": [0.3081],
                                       "interpolation": "bilinear", "crop_pct": 1.0}
    torch.save(ckpt, path)
    for cls in ("3", "7"):
        (tmp_path / "digits" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()  # RGB files: read as greyscale
            Image.fromarray(pixels).save(tmp_path / "digits" / cls / f"{i}.png")
    x, labels = images.load_image_folder(str(tmp_path / "digits"), model, 100, ckpt)
    assert tuple(x.shape) == (12, 1, 16, 16) and labels.tolist() == [0] * 6 + [1] * 6
    grey = Image.open(tmp_path / "digits" / "3" / "0.png").convert("L")
    expected = (torch.tensor(list(grey.getdata()), dtype=torch.float32).reshape(16, 16) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[0, 0], expected, atol=1e-5)
    code = deploy_main(["cascade", "--checkpoint", str(path), "--data", str(tmp_path / "digits"), "--budget-ratio",
                        "1", "--no-progress"])
    assert code == 0 and "calibration half 6 / test half 6 images" in capsys.readouterr().out


def test_cascade_cli_names_a_channel_mismatch_in_the_users_terms(tmp_path, capsys, tiny_checkpoint):
    data = tmp_path / "rgb.pt"
    torch.save({"images": torch.randn(8, 3, 16, 16), "labels": torch.arange(4).repeat(2)}, data)
    code = deploy_main(["cascade", "--checkpoint", tiny_checkpoint, "--tensors", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the images have 3 channel(s), but the model takes one-channel (greyscale) images" in err
    assert "x must be" not in err
