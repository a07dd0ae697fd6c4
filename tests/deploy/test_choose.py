"""The budget selector: Pareto sets, budgets, a fixed saved profile, the `choose` command and its errors."""
import json
import re

import pytest

from supervit.deploy import accuracy, selector
from supervit.deploy.cli import main as deploy_main
from supervit.deploy import DeployError
from supervit.deploy.profile import read_profiles

from deploy_helpers import FIXED_PROFILE_KEY, FIXED_PROFILES, FIXED_RESULTS


def _point(size, ratio, acc1, gmacs, latency=None):
    return {"img_size": size, "keep_ratio": ratio, "acc1": acc1, "acc5": None, "gmacs": gmacs,
            "latency_ms": latency, "noisy": False}


def test_pareto_front_drops_dominated_points_and_equal_accuracy_at_higher_cost():
    points = [_point(1, 0.5, 70, 1.0), _point(1, 1.0, 69, 2.0), _point(2, 0.5, 75, 2.0), _point(2, 1.0, 75, 3.0),
              _point(3, 1.0, 80, 4.0)]
    front = selector.pareto_front(points, "gmacs")
    assert [(p["img_size"], p["keep_ratio"]) for p in front] == [(1, 0.5), (2, 0.5), (3, 1.0)]


def _fixed_points():
    table = accuracy.table_from_results(FIXED_RESULTS)
    profile = read_profiles(FIXED_PROFILES)[FIXED_PROFILE_KEY]
    gmacs = {(r["img_size"], r["keep_ratio"]): r["gmacs"] for r in profile["rows"]}
    return selector.operating_points(table, gmacs, profile)


@pytest.mark.parametrize("budget, expected", [(20.0, (128, 0.7)), (31.0, (192, 0.7)), (40.0, (224, 0.7)),
                                              (60.0, (224, 1.0))])
def test_latency_choice_on_the_fixed_profile(budget, expected):
    chosen = selector.choose(_fixed_points(), latency_ms=budget)
    assert (chosen["img_size"], chosen["keep_ratio"]) == expected


def test_gmacs_and_accuracy_budgets():
    points = _fixed_points()
    by_gmacs = selector.choose(points, gmacs=2.0)  # the most accurate within 2 GMACs: (192, 0.5), 1.67 GMACs
    assert (by_gmacs["img_size"], by_gmacs["keep_ratio"]) == (192, 0.5)
    floor = selector.choose(points, min_accuracy=79.9)  # cheapest (by latency) with >= 79.9 %: (224, 0.5) 31.6 ms
    assert (floor["img_size"], floor["keep_ratio"]) == (224, 0.5)


def test_unmet_budget_and_budget_count_errors_name_the_values():
    points = _fixed_points()
    with pytest.raises(DeployError, match=r"latency <= 10 ms.*\(128, 0.5\) at 18.3"):
        selector.choose(points, latency_ms=10)
    with pytest.raises(DeployError, match=r"80.62"):
        selector.choose(points, min_accuracy=90)
    with pytest.raises(DeployError, match="exactly one budget"):
        selector.choose(points, latency_ms=10, gmacs=1)
    with pytest.raises(DeployError, match="positive"):
        selector.choose(points, gmacs=-1)


def test_choose_cli_picks_the_most_accurate_within_budget_on_the_printed_numbers(capsys, tmp_path):
    plot = tmp_path / "choice.png"
    code = deploy_main(["choose", "--model", "super_deit_s", "--results", FIXED_RESULTS, "--profile", FIXED_PROFILES,
                        "--profile-key", FIXED_PROFILE_KEY, "--budget-ms", "31", "--table", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0
    printed = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\d+", cells[0]):
            printed.append((int(cells[0]), float(cells[1]), float(cells[2]), float(cells[5].split()[0]),
                            cells[7] == "<= chosen"))
    assert len(printed) == 12
    within = [p for p in printed if p[3] <= 31]
    best = max(within, key=lambda p: p[2])
    assert [p for p in printed if p[4]] == [best]
    assert "img_size 192, keep_ratio 0.7" in out
    assert plot.stat().st_size > 10_000


def _run_cli(argv, capsys):
    code = deploy_main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_errors_are_one_line_with_exit_2(capsys, tmp_path, tiny_checkpoint):
    base = ["choose", "--model", "super_deit_s", "--results", FIXED_RESULTS, "--profile", FIXED_PROFILES,
            "--profile-key", FIXED_PROFILE_KEY]
    code, err = _run_cli(base + ["--budget-ms", "5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "5 ms" in err and "(128, 0.5)" in err
    code, err = _run_cli(base[:-2] + ["--profile-key", "nope", "--budget-ms", "20"], capsys)
    assert code == 2 and "nope" in err
    code, err = _run_cli(["choose", "--model", "no_such_model", "--budget-gmacs", "1", "--no-latency"], capsys)
    assert code == 2 and "super_deit_s" in err
    from deploy_helpers import write_tiny_checkpoint
    bare = write_tiny_checkpoint(tmp_path / "bare.pth", with_table=False)
    code, err = _run_cli(["choose", "--checkpoint", bare, "--budget-gmacs", "1", "--no-latency"], capsys)
    assert code == 2 and "--results" in err and len(err.strip().splitlines()) == 1
    anonymous = write_tiny_checkpoint(tmp_path / "anon.pth", with_config=False)
    code, err = _run_cli(["choose", "--checkpoint", anonymous, "--budget-gmacs", "1", "--no-latency"], capsys)
    assert code == 2 and "model config" in err
    (tmp_path / "bad.json").write_text(json.dumps({"subnets": [{"img_size": 8}]}))
    code, err = _run_cli(["choose", "--checkpoint", tiny_checkpoint, "--results", str(tmp_path / "bad.json"),
                          "--budget-gmacs", "1", "--no-latency"], capsys)
    assert code == 2 and "acc1" in err


def test_choose_on_a_tiny_checkpoint_measures_and_saves_a_profile(capsys, tmp_path, tiny_checkpoint):
    store = tmp_path / "profiles.json"
    argv = ["choose", "--checkpoint", tiny_checkpoint, "--min-accuracy", "75", "--profile", str(store),
            "--rounds", "2", "--warmup", "1", "--no-progress"]
    assert deploy_main(argv) == 0
    assert "measured now" in capsys.readouterr().out
    profiles = read_profiles(str(store))
    (key, profile), = profiles.items()
    assert key.startswith("super_deit_s-") and "|cpu-" in key and len(profile["rows"]) == 6
    assert deploy_main(argv) == 0  # second time: read back under the same key
    assert "saved profile" in capsys.readouterr().out


def test_released_checkpoint_without_a_table_falls_back_to_the_published_one(tmp_path, capsys):
    import timm
    import torch

    released = tmp_path / "released.pth.tar"  # timm-saver layout: arch + state_dict, no evaluation table
    torch.save({"arch": "super_deit_s", "epoch": 299, "state_dict": timm.create_model("super_deit_s").state_dict()},
               released)
    code = deploy_main(["choose", "--checkpoint", str(released), "--budget-gmacs", "2", "--no-latency"])
    out = capsys.readouterr().out
    assert code == 0 and "published ImageNet-1k top-1 of super_deit_s (not measured here)" in out
    assert "img_size 192, keep_ratio 0.5 (top-1 78.91%" in out


def test_table_labels_count_epochs_as_the_training_log_does(tmp_path):
    """Checkpoints store the 0-based index of their last epoch; the label says 'after epoch N' (1-based)."""
    rows = [{"img_size": 16, "keep_ratio": 1.0, "acc1": 50.0}]
    table = accuracy.table_from_checkpoint({"supervit": {"accuracy": {"epoch": 7, "rows": rows}}}, "last.pth.tar")
    assert "after epoch 8" in table["label"] and table["epoch"] == 7
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"epoch": None, "subnets": rows}))
    assert "epoch unknown" in accuracy.table_from_results(str(path))["label"]
