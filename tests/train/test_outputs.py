"""What a training run leaves for the tools after it: checkpoints readable by the team (the umask's permissions),
the preprocessing of the model recorded in every checkpoint, the demo's held-out digits for the deploy cascade; the
scripts parse --subnets with the one parser and leave no import deferral to their child processes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from supervit.models import read_checkpoint
from train import checkpointing, cli, digits, main_deit, main_lvvit

from trainer_helpers import TINY_DEMO_MODEL, as_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ["--model-kwargs", as_json(TINY_DEMO_MODEL), "--batch-size", "16", "--max-steps-per-epoch", "1",
         "--epochs", "1", "--no-progress", "--device", "cpu", "--threads", "1", "--subnets", "28:1,28:0.5"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    old = os.umask(0o022)
    try:
        main_lvvit.main(["--demo", "--output", str(out)] + QUICK)
    finally:
        os.umask(old)
    return out


def test_checkpoints_get_the_umask_permissions(demo_run):
    for name in ("last.pth.tar", "model_best.pth.tar", "held_out.pt"):
        assert os.stat(demo_run / name).st_mode & 0o777 == 0o644, name  # 0666 less umask 022, not mkstemp's 0600


def test_checkpoint_records_the_preprocessing(demo_run, tmp_path):
    config = read_checkpoint(demo_run / "last.pth.tar")["supervit"]["data_config"]
    assert config == {"input_size": [1, 28, 28], "mean": [digits.DIGITS_MEAN], "std": [digits.DIGITS_STD],
                      "interpolation": "bilinear", "crop_pct": 1.0}
    args = main_deit.parse_args(["--data-path", str(tmp_path)])
    from train.recipes import DeiTRecipe, LVViTRecipe

    class Model:
        img_sizes, in_chans = (128, 160, 192, 224), 3

    deit = DeiTRecipe(args).data_config(Model())
    assert deit["input_size"] == [3, 224, 224] and deit["crop_pct"] == 0.875 and deit["interpolation"] == "bicubic"
    assert deit["mean"] == pytest.approx([0.485, 0.456, 0.406]) and deit["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert LVViTRecipe(main_lvvit.parse_args([str(tmp_path)])).data_config(Model())["crop_pct"] == 0.9


def test_demo_writes_its_held_out_digits(demo_run):
    held = torch.load(demo_run / "held_out.pt", weights_only=True)
    expected = digits.digits_datasets()[1]
    assert held["images"].shape == (1000, 1, 28, 28) and held["images"].dtype == torch.float32
    assert held["labels"].dtype == torch.int64 and torch.equal(held["labels"], expected.targets)
    assert torch.equal(held["images"], expected.images)  # normalised exactly as the model evaluates them
    assert abs(held["images"].mean().item()) < 0.2 and abs(held["images"].std().item() - 1.0) < 0.2


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    stale = tmp_path / ".checkpoint.pth.abc123.partial.pth"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".results.json.abc.partial.json"
    other.write_bytes(b"{")
    removed = checkpointing.remove_stale_temporaries(str(tmp_path), "deit")
    assert removed == [str(stale)] and not stale.exists() and other.exists()


def test_subnets_flag_uses_the_one_parser():
    assert cli.parse_subnets("224:1, 160:0.5") == [(224, 1.0), (160, 0.5)]
    assert str(cli.parse_subnets("224:0.7")[0]) == "224:0.7"  # a Subnet
    done = subprocess.run([sys.executable, "train/main_deit.py", "--subnets", "28:1,28:1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "main_deit.py: error: argument --subnets: sub-network 28:1 is listed twice in '28:1,28:1'"]


def test_scripts_defer_torch_only_until_the_arguments_parse():
    code = ("import os, runpy, sys\nsys.argv = ['main_deit.py', '--demo', '--epochs', '0']\n"
            "try:\n    runpy.run_path('train/main_deit.py', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print('exit', e.code)\nprint('torch' in sys.modules, os.environ.get('SUPERVIT_DEFER_IMPORTS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "SUPERVIT_DEFER_IMPORTS"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.split() == ["exit", "2", "False", "None"], done.stdout + done.stderr
