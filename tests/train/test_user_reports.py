"""What new users hit in the trainer, each fixed: a head wider than the data set's classes, evaluating a checkpoint
on a data set with other class counts, a run that writes nothing, loader workers beyond the machine's cores, an
--autoresume of a finished run, a batch-scaled lr below --min-lr."""
from __future__ import annotations

import os

import pytest

from train import cli, main_deit, main_lvvit

from trainer_helpers import CLASSES, TINY_DEMO_MODEL, TINY_IMAGENET_MODEL, as_json, write_image_folder


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "imagenet", per_class=1)


def _deit(data, *extra):
    return ["--data-path", data, "--model-kwargs", as_json(TINY_IMAGENET_MODEL), "--batch-size", "2", "--epochs", "1",
            "--num_workers", "0", "--no-progress", "--device", "cpu", "--threads", "1", "--eval-interval", "0",
            "--subnets", "80:1,80:0.5", *extra]


def test_wider_head_than_class_folders_trains_and_evaluates_with_a_note(tmp_path, imagenet, capsys):
    out = tmp_path / "wide"
    main_deit.main(_deit(imagenet, "--nb-classes", "5", "--output", str(out)))
    printed = capsys.readouterr().out
    assert "the model has 5 classes, the train set 3 class folders" in printed
    metrics = main_deit.main(["--eval", "--resume", str(out / "checkpoint.pth"), "--data-path", imagenet,
                              "--num_workers", "0", "--no-progress", "--device", "cpu", "--subnets", "80:1"])
    assert "80_1_acc1" in metrics
    assert "the model has 5 classes, the evaluation set 3 class folders" in capsys.readouterr().out


def test_narrower_head_than_class_folders_is_an_error(tmp_path, imagenet):
    with pytest.raises(cli.UsageError, match=r"the train set has 3 class folders but the model 2 outputs: labels "
                                             r"2\.\.2 cannot be scored; pass --nb-classes/--num-classes 3"):
        main_deit.main(_deit(imagenet, "--nb-classes", "2", "--output", str(tmp_path / "narrow")))
    assert not os.path.exists(tmp_path / "narrow" / "checkpoint.pth")


def test_a_run_without_output_says_it_writes_nothing(capsys):
    main_lvvit.main(["--demo", "--model-kwargs", as_json(TINY_DEMO_MODEL), "--batch-size", "16",
                     "--max-steps-per-epoch", "1", "--epochs", "1", "--no-progress", "--device", "cpu",
                     "--threads", "1", "--subnets", "28:1,28:0.5"])
    assert "no --output DIR: this run writes nothing" in capsys.readouterr().out


def test_autoresume_of_a_finished_run_says_so(tmp_path, imagenet, capsys):
    out = tmp_path / "done"
    main_deit.main(_deit(imagenet, "--nb-classes", str(len(CLASSES)), "--output", str(out)))
    before = os.stat(out / "checkpoint.pth").st_mtime_ns
    capsys.readouterr()
    assert main_deit.main(_deit(imagenet, "--nb-classes", str(len(CLASSES)), "--output", str(out),
                                "--autoresume")) == {}
    printed = capsys.readouterr().out
    assert "nothing to train:" in printed and "holds epoch 1 of 1" in printed and "(the run is finished)" in printed
    assert "--eval --resume" in printed and "epochs 2..1" not in printed
    assert os.stat(out / "checkpoint.pth").st_mtime_ns == before


def test_batch_scaled_lr_below_min_lr_is_warned_about(tmp_path, imagenet, capsys):
    main_deit.main(_deit(imagenet, "--nb-classes", str(len(CLASSES)), "--lr", "5e-4", "--max-steps-per-epoch", "1"))
    printed = capsys.readouterr().out
    assert ("warning: the learning rate 1.95e-06 (--lr 0.0005 x global batch 2 / 512) is below --min-lr 1e-05"
            in printed)


def test_loader_workers_default_to_at_most_the_cores(monkeypatch, imagenet):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert main_deit.parse_args(["--data-path", imagenet]).num_workers == 10
    assert main_lvvit.parse_args([imagenet]).num_workers == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert main_deit.parse_args(["--data-path", imagenet]).num_workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share the node's cores
    assert main_deit.parse_args(["--data-path", imagenet]).num_workers == 1
    assert main_deit.parse_args(["--data-path", imagenet, "-j", "6"]).num_workers == 6  # explicit wins
