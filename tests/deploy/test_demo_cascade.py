"""The demo's cascade as `make demo` runs it (the deploy command on the held-out digits the demo writes), on a tiny
untrained digits network: printed beside the static table, files written."""
import json

import pytest
import torch

from supervit.deploy.cli import main as deploy_main
from supervit.models import SuperLVViT

from deploy_helpers import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_digits_model():
    torch.manual_seed(0)
    return SuperLVViT(img_sizes=(16, 20, 24, 28), keep_ratios=(0.5, 0.7, 1.0), prune_layers=(1,), patch_size=4,
                      in_chans=1, num_classes=10, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                      stem_dim=8).eval()


def test_demo_cascade_command_prints_the_study_and_writes_its_files(tmp_path, capsys, tiny_digits_model):
    from train import digits

    ckpt = write_tiny_checkpoint(tmp_path / "last.pth.tar", model=tiny_digits_model)
    held_out = digits.digits_datasets()[1]
    pick = torch.arange(0, 1000, 10)  # every 10th held-out digit, about 10 per class
    torch.save({"images": held_out.images[pick], "labels": held_out.targets[pick]}, tmp_path / "held_out.pt")
    study, png = tmp_path / "cascade.json", tmp_path / "cascade.png"
    code = deploy_main(["cascade", "--checkpoint", ckpt, "--tensors", str(tmp_path / "held_out.pt"),
                        "--budget-ratio", "1.0", "--batch", "32", "--time", "--splits", "20", "--save", str(study),
                        "--plot", str(png), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "cascade on the test half" in out and "wall time at batch 32" in out and "(reference)" in out
    res = json.loads(study.read_text())
    assert "over 20 other stratified splits" in out and len(res["splits"]["rows"]) == 20
    halves = res["halves"]
    assert halves["calibration"] + halves["test"] == 100 and abs(halves["calibration"] - halves["test"]) <= 10
    assert res["timing"]["conditions"]["batch"] == 32 and res["curve"]
    assert res["cascade"]["stages"] and all(len(s) == 2 for s in res["cascade"]["stages"])
    assert png.stat().st_size > 10_000


def test_make_demo_runs_a_valid_cascade_command_on_the_files_the_demo_writes():
    """The deploy command in the Makefile's demo recipe parses and passes the argument checks, on the checkpoint and
    held-out digits the trainer writes into the same folder."""
    import os
    import shlex

    from supervit.deploy.cli import build_parser, check_arguments

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "Makefile")) as handle:
        recipe = handle.read().split("\ndemo:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    (line,) = [x for x in recipe.splitlines() if "-m supervit.deploy" in x]
    argv = shlex.split(line.split("-m supervit.deploy", 1)[1])
    train = [x for x in recipe.splitlines() if "train/main_lvvit.py" in x][0]
    output = shlex.split(train)[shlex.split(train).index("--output") + 1]
    args = build_parser().parse_args(argv)
    check_arguments(args)
    assert args.command == "cascade" and args.checkpoint == f"{output}/last.pth.tar"
    assert args.tensors == f"{output}/held_out.pt"
