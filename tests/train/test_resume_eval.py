"""Resume gives the uninterrupted run's weights; --eval reads checkpoints of both reference formats."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch

import supervit  # noqa: F401 - registers the models
from train import digits, main_deit, main_lvvit
from train.checkpointing import atomic_save
from train.engine import Amp, evaluate
from train.distributed import DistInfo

from shared_helpers import assert_same_state
from trainer_helpers import (CLASSES, TINY_DEMO_MODEL, TINY_IMAGENET_MODEL, TINY_LVVIT_MODEL, as_json,
                             write_image_folder)

DEMO_ARGS = ["--demo", "--model-kwargs", as_json(TINY_DEMO_MODEL), "--batch-size", "16", "--max-steps-per-epoch",
             "3", "--no-progress", "--device", "cpu", "--eval-interval", "0", "--model-ema",
             "--model-ema-decay", "0.9", "--threads", "1"]


def weights(path, key="model"):
    return torch.load(path, weights_only=False)[key]


@pytest.mark.parametrize("how", ["resume", "autoresume"])
def test_resume_matches_uninterrupted(tmp_path, how):
    straight, split = tmp_path / "straight", tmp_path / "split"
    main_deit.main(DEMO_ARGS + ["--epochs", "2", "--output", str(straight)])
    main_deit.main(DEMO_ARGS + ["--epochs", "2", "--epochs-this-run", "1", "--output", str(split)])
    assert torch.load(split / "checkpoint.pth", weights_only=False)["epoch"] == 0
    # the schedule of the 2-epoch run: --epochs 2 again; start from the epoch-1 checkpoint
    extra = ["--resume", str(split / "checkpoint.pth")] if how == "resume" else ["--autoresume"]
    main_deit.main(DEMO_ARGS + ["--epochs", "2", "--output", str(split)] + extra)
    a, b = torch.load(straight / "checkpoint.pth", weights_only=False), torch.load(split / "checkpoint.pth",
                                                                                   weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["model_ema"], b["model_ema"])


def _tiny_imagenet_deit():
    torch.manual_seed(1)
    return timm.create_model("super_deit_s", num_classes=len(CLASSES),
                             **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_IMAGENET_MODEL.items()})


def _direct_eval(model, data_root, crop_pct):
    from train import data as data_lib

    dataset = data_lib.image_folder(data_root, "val", data_lib.eval_transform(model.img_sizes[-1], crop_pct))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    return evaluate(model, loader, model.subnets(), Amp("cpu", None), DistInfo(), reduce=False, progress=False)


def test_eval_reference_deit_format(tmp_path):
    """A checkpoint as the DeiT script writes it; only val/ exists (no train/ split needed)."""
    data = write_image_folder(tmp_path / "imagenet", splits=("val",), per_class=3)
    model = _tiny_imagenet_deit()
    ema = _tiny_imagenet_deit()
    ckpt = {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
            "epoch": 299, "model_ema": ema.state_dict(), "scaler": {"scale": 1024.0},
            "args": argparse.Namespace(model="super_deit_s", batch_size=256, lr=5e-4)}
    path = tmp_path / "deit_checkpoint.pth"
    torch.save(ckpt, path)
    out = tmp_path / "eval"
    metrics = main_deit.main(["--eval", "--resume", str(path), "--data-path", data, "--nb-classes",
                              str(len(CLASSES)), "--model-kwargs", as_json(TINY_IMAGENET_MODEL), "--num_workers", "0",
                              "--output", str(out), "--no-progress", "--device", "cpu"])
    expected = _direct_eval(model, data, 0.875)  # DeiT evaluates the raw weights
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert len([k for k in metrics if k.endswith("_acc1")]) == 12 and metrics["num_samples"] == 9
    assert (out / "results.csv").is_file() and (out / "accuracy_vs_gmacs.png").is_file()


def test_eval_timm_saver_format(tmp_path):
    """A checkpoint as timm's saver writes it (LV-ViT script), with a 'module.' prefix; EMA weights are evaluated;
    the class count is taken from the file's head."""
    data = write_image_folder(tmp_path / "imagenet", splits=("val",), per_class=3)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_LVVIT_MODEL.items()}
    torch.manual_seed(2)
    model, ema = (timm.create_model("super_lvvit_s", num_classes=len(CLASSES), **config) for _ in range(2))
    ckpt = {"epoch": 309, "arch": "super_lvvit_s",
            "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []}, "version": 2,
            "args": argparse.Namespace(model="super_lvvit_s", lr=1.6e-3), "amp_scaler": {"scale": 65536.0},
            "state_dict_ema": {"module." + k: v for k, v in ema.state_dict().items()}, "metric": 83.1}
    path = tmp_path / "model_best.pth.tar"
    atomic_save(ckpt, str(path))
    # a released-style file records no model config: the class count comes from its head, the model from 'arch'
    metrics = main_lvvit.main([data, "--eval", "--resume", str(path), "--model-kwargs", as_json(TINY_LVVIT_MODEL),
                               "-j", "0", "--no-progress", "--device", "cpu"])
    expected = _direct_eval(ema, data, 0.9)  # LV-ViT evaluates the EMA weights, Resize(248/224) crop
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def test_eval_of_demo_checkpoint_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    trained = main_deit.main(DEMO_ARGS + ["--epochs", "1", "--output", str(out)])
    again = main_deit.main(["--eval", "--resume", str(out / "checkpoint.pth"), "--model-kwargs",
                            as_json(TINY_DEMO_MODEL), "--no-progress", "--threads", "1"])
    assert again["28_1_acc1"] == pytest.approx(trained["28_1_acc1"])
    assert len([k for k in again if k.endswith("_acc1")]) == 12
    printed = capsys.readouterr().out
    assert "| 7x7 (28 px) |" in printed and "keep 0.5" in printed


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "checkpoint.pth"
    atomic_save({"a": torch.ones(2)}, str(path))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted while writing")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary left behind


def test_demo_split_is_stratified_and_fixed():
    images, labels = digits.load_digits()
    train_idx, eval_idx = digits.split_digits(labels)
    assert len(eval_idx) == 1000 and len(train_idx) == 4000 and not set(train_idx) & set(eval_idx)
    assert torch.bincount(labels[eval_idx], minlength=10).tolist() == [100] * 10
    assert digits.split_digits(labels) == (train_idx, eval_idx)
