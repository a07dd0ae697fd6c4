"""Bad input gives a ValueError naming the argument and what it accepts, and writes nothing: the public ops (the
cases tests/kernels/test_reference_ops.py does not already cover), the models, and both command lines."""
from __future__ import annotations

import os

import pytest
import torch

import supervit  # noqa: F401 - registers the models
from supervit import kernels
from supervit.models import SuperDeiT, SuperLVViT
from train import main_deit, main_lvvit

from shared_helpers import TINY_DEIT
from trainer_helpers import CLASSES, TINY_IMAGENET_MODEL, TINY_LVVIT_MODEL, as_json, write_image_folder

META = torch.empty(1, 2, 5, 4, device="meta")


def _q(n=5, **kw):
    return torch.randn(1, 2, n, 4, **kw)


OP_CASES = [
    # attention: devices, rank of k/v, scale, N for the CLS score
    (lambda: kernels.attention(_q(), _q(), META), "one device"),
    (lambda: kernels.attention(_q(), torch.randn(2, 5, 4), _q()), r"k must have 4 dimensions \[B, H, N, D\]"),
    (lambda: kernels.attention(_q(), _q(), _q(), scale=float("nan")), r"scale must be a finite number > 0"),
    (lambda: kernels.attention(_q(), _q(), _q(), scale=-1.0), r"scale must be a finite number > 0"),
    (lambda: kernels.attention(_q(), _q(), _q(), scale="big"), r"scale must be a finite number > 0"),
    (lambda: kernels.attention(_q(1), _q(1), _q(1), return_cls_score=True), r"N >= 2"),
    # keep_topk: k of the wrong type, score dtype
    (lambda: kernels.keep_topk(torch.rand(2, 8), 2.0), r"k must be an int in \[1, 8\]"),
    (lambda: kernels.keep_topk(torch.rand(2, 8), True), r"k must be an int in \[1, 8\]"),
    (lambda: kernels.keep_topk(torch.rand(2, 8), torch.tensor(2)), r"k must be an int in \[1, 8\]"),
    (lambda: kernels.keep_topk(torch.ones(2, 8, dtype=torch.int64), 2), r"score dtype must be one of"),
    # gather_tokens: ranks, devices, k out of range
    (lambda: kernels.gather_tokens(torch.rand(9, 4), torch.zeros(2, 1, dtype=torch.long)), r"x must have 3"),
    (lambda: kernels.gather_tokens(torch.rand(2, 9, 4), torch.zeros(2, dtype=torch.long)), r"idx must have 2"),
    (lambda: kernels.gather_tokens(torch.rand(2, 9, 4), torch.zeros(2, 1, dtype=torch.long, device="meta")),
     "one device"),
    (lambda: kernels.gather_tokens(torch.rand(2, 3, 4), torch.tensor([[0, 1, 0]] * 2)), r"k must be in \[1, 2\]"),
    # prune_tokens: ranks, devices, dtypes, N, keep_ratio type
    (lambda: kernels.prune_tokens(torch.rand(2, 9), torch.rand(2, 8), 0.5), r"x must have 3"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8, device="meta"), 0.5), "one device"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.ones(2, 8, dtype=torch.int32), 0.5),
     "score dtype must be one of"),
    (lambda: kernels.prune_tokens(torch.rand(2, 1, 4), torch.rand(2, 0), 0.5), r"N >= 2"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8), "half"), r"keep_ratio must be a number"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8), float("inf")), r"keep_ratio must be in"),
    (lambda: kernels.prune_tokens(torch.rand(2, 9, 4), torch.rand(2, 8), None), r"keep_ratio must be a number"),
]


@pytest.mark.parametrize("call,match", OP_CASES, ids=[f"op{i}" for i in range(len(OP_CASES))])
def test_op_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_op_error_leaves_inputs_untouched():
    x, score = torch.rand(2, 9, 4), torch.rand(2, 8)
    x0, s0 = x.clone(), score.clone()
    with pytest.raises(ValueError):
        kernels.prune_tokens(x, score, float("nan"))
    assert torch.equal(x, x0) and torch.equal(score, s0)


def test_non_tensor_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match="score must be a torch.Tensor, got list"):
        kernels.keep_topk([[0.1, 0.2]], 1)


def test_numpy_int_k_is_accepted():
    np = pytest.importorskip("numpy")
    assert kernels.keep_topk(torch.tensor([[0.1, 0.9, 0.5]]), np.int64(2)).tolist() == [[1, 2]]


TINY = {**TINY_DEIT, "num_classes": 3}

MODEL_CASES = [
    (dict(keep_ratios=(0.0, 1.0)), r"keep_ratios must be numbers in \(0, 1\]"),
    (dict(keep_ratios=(0.5, float("nan"))), r"keep_ratios must be numbers in \(0, 1\]"),
    (dict(keep_ratios=()), r"keep_ratios must be a non-empty list"),
    (dict(img_sizes=()), r"img_sizes must be a non-empty list"),
    (dict(img_sizes=(16, 20)), r"multiple of patch_size 8"),
    (dict(img_sizes=(32, 16)), r"img_sizes must be strictly ascending"),
    (dict(in_chans=0), r"in_chans must be an int >= 1"),
    (dict(patch_size=0), r"patch_size must be an int >= 1"),
    (dict(num_classes=-1), r"num_classes must be an int >= 0"),
    (dict(prune_layers=(1, 4)), r"prune_layers must be block indices in \[0, 3\]"),
    (dict(embed_dim=15), r"dim \(15\) must be divisible by num_heads \(2\)"),
]


@pytest.mark.parametrize("kwargs,match", MODEL_CASES, ids=[f"model{i}" for i in range(len(MODEL_CASES))])
def test_model_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SuperDeiT(**{**TINY, **kwargs})


def test_model_bad_forward_arguments():
    model = SuperDeiT(**TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"img_size must be one of \[16, 32\]"):
        model(x, img_size=24)
    with pytest.raises(ValueError, match=r"x must be an image batch \[B, 3, H, W\]"):
        model(torch.randn(1, 1, 32, 32))  # wrong channels
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        model(x, keep_ratio=float("nan"))
    lvvit = SuperLVViT(**{**TINY, "stem_dim": 4}).train()
    with pytest.raises(ValueError, match=r"mix_box must be \(h1, w1, h2, w2\) ints on the 4x4 grid"):
        lvvit(x, mix_box=(0, 0, 5, 2))


# ---------------------------------------------------------------------------------------------------------------
# command lines: a clear error, and no checkpoint in the output folder afterwards
# ---------------------------------------------------------------------------------------------------------------
def _no_checkpoint(out):
    written = [f for f in os.listdir(out) if f.endswith((".pth", ".tar", ".tmp"))] if os.path.isdir(out) else []
    assert not written, f"files written despite the error: {written}"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "imagenet", per_class=2)


def _deit(data, out, *extra):
    return ["--data-path", data, "--nb-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_IMAGENET_MODEL),
            "--batch-size", "2", "--epochs", "1", "--num_workers", "0", "--output", str(out), "--no-progress",
            "--device", "cpu", *extra]


def test_cli_missing_data_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--data-path .*nowhere.* is not a directory"):
        main_deit.main(_deit(str(tmp_path / "nowhere"), out))
    with pytest.raises(ValueError, match=r"data_dir .*nowhere.* is not a directory"):
        main_lvvit.main([str(tmp_path / "nowhere"), "--output", str(out), "--device", "cpu", "-j", "0"])
    _no_checkpoint(out)


def test_cli_empty_class_dirs(tmp_path):
    data = write_image_folder(tmp_path / "imagenet", per_class=1)
    for name in os.listdir(os.path.join(data, "train", CLASSES[1])):
        os.unlink(os.path.join(data, "train", CLASSES[1], name))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"--data-path.*no valid file for the classes {CLASSES[1]}"):
        main_deit.main(_deit(data, out))
    empty = tmp_path / "empty"
    os.makedirs(empty / "train")
    with pytest.raises(ValueError, match=r"holds no class folders"):
        main_deit.main(_deit(str(empty), out))
    _no_checkpoint(out)


def test_cli_unknown_model(tmp_path, imagenet):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--model must be one of \['super_deit_s', 'super_lvvit_s'\], got 'vit_h'"):
        main_deit.main(_deit(imagenet, out, "--model", "vit_h"))
    _no_checkpoint(out)


@pytest.mark.parametrize("argv,match", [
    (["--token-label"], "--token-label needs --token-label-data DIR"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--clip-grad", "-1"], "--clip-grad must be > 0"),
    (["--max-nonfinite-steps", "0"], "--max-nonfinite-steps must be >= 1"),
    (["--pretrained"], "--pretrained is not supported"),
    (["--amp-dtype", "int8"], "argument --amp-dtype: invalid choice"),
])
def test_cli_incompatible_flags_lvvit(tmp_path, imagenet, capsys, argv, match):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main_lvvit.main([imagenet, "--output", str(out), "--device", "cpu", "-j", "0", *argv])
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err
    _no_checkpoint(out)


@pytest.mark.parametrize("argv,match", [
    (["--token-label-data", "LABELS"], "--token-label-data is given but --token-label is not"),
    (["--mixup", "0.8"], "the LV-ViT recipe trains with MixToken; --mixup/--cutmix must be 0"),
    (["--token-label", "--token-label-data", "LABELS", "--token-label-size", "7"],
     "--token-label-size must equal the largest token grid 5"),
    (["--img-size", "224"], "--input-size 224 must equal the model's largest image size 80"),
    (["--eval"], "--eval needs --resume CKPT"),
    (["--amp-dtype", "float16"], "--amp-dtype float16 needs CUDA"),
])
def test_cli_incompatible_values_lvvit(tmp_path, imagenet, argv, match):
    from trainer_helpers import write_token_labels

    labels = write_token_labels(imagenet, tmp_path / "labels", hw=4)
    argv = [labels if a == "LABELS" else a for a in argv]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        main_lvvit.main([imagenet, "--num-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_LVVIT_MODEL),
                         "-b", "2", "--epochs", "1", "-j", "0", "--output", str(out), "--no-progress",
                         "--device", "cpu", *argv])
    _no_checkpoint(out)


def test_cli_train_val_class_mismatch(tmp_path):
    data = write_image_folder(tmp_path / "imagenet", per_class=1)
    os.rename(os.path.join(data, "val", CLASSES[0]), os.path.join(data, "val", "zebra"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train/ and val/ must hold the same class folders"):
        main_deit.main(_deit(data, out))
    _no_checkpoint(out)
