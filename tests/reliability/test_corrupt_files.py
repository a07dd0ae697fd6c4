"""Corrupt, truncated and malicious files: checkpoints through the trainer's --resume / --eval / --finetune /
--autoresume paths, token-label files, and unreadable images in the data set."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from supervit.models import CheckpointError
from train import main_deit, main_lvvit
from train.data import DataError
from train.token_label import read_label_map

from reliability_helpers import TINY_RUN
from trainer_helpers import CLASSES, TINY_IMAGENET_MODEL, as_json, write_image_folder

RUN_ONE_EPOCH = [a if a != "2" or TINY_RUN[i - 1] != "--epochs" else "1" for i, a in enumerate(TINY_RUN)]


class Exploit:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    main_deit.main(RUN_ONE_EPOCH + ["--output", str(out)])
    return out / "checkpoint.pth"


def _truncated(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 3])
    return dst


def _garbage(dst):
    open(dst, "wb").write(os.urandom(4096))
    return dst


def test_random_bytes_are_a_checkpoint_error_never_another_exception(tmp_path, good_checkpoint):
    """Garbage reaches the weights-only unpickler and can fail there in many ways (KeyError, IndexError, ...): every
    one is a CheckpointError naming the file. 300 seeded files: plain bytes, a pickle header, a zip's first bytes."""
    import random

    from supervit.models import read_checkpoint

    rng = random.Random(0)
    head = open(good_checkpoint, "rb").read(64)  # a real zip header, then garbage
    path = tmp_path / "noise.pth"
    for i in range(300):
        prefix = (b"", b"\x80\x02", b"\x80\x05", head)[i % 4]
        path.write_bytes(prefix + rng.randbytes(rng.randrange(1, 2048)))
        with pytest.raises(CheckpointError, match="noise.pth"):
            read_checkpoint(path)


@pytest.mark.parametrize("how,kind", [("--resume", "truncated"), ("--resume", "garbage"), ("--eval", "truncated"),
                                      ("--finetune", "missing")])
def test_bad_checkpoint_through_the_cli_names_the_file(tmp_path, good_checkpoint, kind, how):
    path = tmp_path / f"bad_{kind}.pth"
    if kind == "truncated":
        _truncated(good_checkpoint, path)
    elif kind == "garbage":
        _garbage(path)
    out = tmp_path / "out"
    argv = RUN_ONE_EPOCH + ["--output", str(out)]
    argv += ["--eval", "--resume", str(path)] if how == "--eval" else [how, str(path)]
    with pytest.raises(CheckpointError, match=f"bad_{kind}.pth"):
        main_deit.main(argv)
    assert not (out / "checkpoint.pth").exists(), "a run with an unreadable checkpoint must not train and save"


def test_corrupt_autoresume_checkpoint_is_an_error_and_kept(tmp_path, good_checkpoint):
    out = tmp_path / "out"
    os.makedirs(out)
    last = _truncated(good_checkpoint, out / "checkpoint.pth")
    before = open(last, "rb").read()
    with pytest.raises(CheckpointError, match="checkpoint.pth"):
        main_deit.main(RUN_ONE_EPOCH + ["--output", str(out), "--autoresume"])
    assert open(last, "rb").read() == before, "the damaged checkpoint was overwritten (the evidence is lost)"


@pytest.mark.parametrize("how", ["--eval", "--finetune", "--autoresume"])  # --resume: as --autoresume
def test_malicious_checkpoint_is_refused_not_executed(tmp_path, good_checkpoint, how):
    marker = tmp_path / "pwned"
    ckpt = torch.load(good_checkpoint, weights_only=False)
    ckpt["args"] = Exploit(marker)
    out = tmp_path / "out"
    os.makedirs(out)
    path = out / "checkpoint.pth" if how == "--autoresume" else tmp_path / "evil.pth"
    torch.save(ckpt, path)
    argv = RUN_ONE_EPOCH + ["--output", str(out)]
    argv += {"--eval": ["--eval", "--resume", str(path)], "--autoresume": ["--autoresume"]}.get(how, [how, str(path)])
    with pytest.raises(CheckpointError, match=rf"refusing to load .*{path.name}.*allow-list"):
        main_deit.main(argv)
    assert not marker.exists(), "the pickle's payload ran"


def test_malicious_token_label_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "labels" / "apple" / "img_0.pt"
    os.makedirs(path.parent)
    torch.save(Exploit(marker), path)
    with pytest.raises(DataError, match="img_0.pt"):
        read_label_map(str(path))
    assert not marker.exists()
    _truncated(path, path)
    with pytest.raises(DataError, match="cannot read token label file .*img_0.pt"):
        read_label_map(str(path))


# ---------------------------------------------------------------------------------------------------------------
# unreadable images
# ---------------------------------------------------------------------------------------------------------------
def _data_with_bad_images(root):
    """2 good images per class and split, plus in train/ a truncated JPEG (apple) and a non-image (cat), and in
    val/ a dangling link (boat)."""
    data = write_image_folder(root, per_class=2)
    good = os.path.join(data, "train", CLASSES[0], "img_0.JPEG")
    bad = [os.path.join(data, "train", CLASSES[0], "bad_truncated.JPEG"),
           os.path.join(data, "train", CLASSES[2], "bad_text.JPEG"),
           os.path.join(data, "val", CLASSES[1], "bad_link.JPEG")]
    open(bad[0], "wb").write(open(good, "rb").read()[:400])
    open(bad[1], "w").write("not an image\n")
    os.symlink(os.path.join(data, "missing.JPEG"), bad[2])
    return data, bad


def _argv(data, out, *extra):
    return ["--data-path", data, "--nb-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_IMAGENET_MODEL),
            "--batch-size", "4", "--epochs", "1", "--num_workers", "0", "--output", str(out), "--no-progress",
            "--device", "cpu", "--eval-interval", "0", "--threads", "1", "--no-model-ema", "--no-repeated-aug", *extra]


def test_unreadable_images_are_skipped_and_counted(tmp_path, capfd):
    data, bad = _data_with_bad_images(tmp_path / "imagenet")
    out = tmp_path / "out"
    metrics = main_deit.main(_argv(data, out))  # 8 train items = 2 steps of 4: every item is read once
    captured = capfd.readouterr()
    assert "skipped 2 unreadable training and 1 evaluation image(s) in epoch 1" in captured.out
    for path in bad:
        assert path in captured.err, f"no warning names {path}"
    assert metrics["num_samples"] == 6  # the unreadable val image is not counted
    assert (out / "checkpoint.pth").is_file(), "training did not go on"
    record = __import__("json").loads(open(out / "log.jsonl").read().splitlines()[-1])
    assert record["train_skipped_images"] == 2 and record["test_skipped_images"] == 1


def test_unreadable_images_with_worker_processes(tmp_path, capfd):
    """The count crosses DataLoader worker processes."""
    data, _ = _data_with_bad_images(tmp_path / "imagenet")
    argv = _argv(data, tmp_path / "out")
    argv[argv.index("--num_workers") + 1] = "2"
    main_deit.main(argv)
    assert "skipped 2 unreadable training and 1 evaluation image(s)" in capfd.readouterr().out


def test_strict_data_is_an_error_naming_the_file(tmp_path):
    data, bad = _data_with_bad_images(tmp_path / "imagenet")
    shutil.rmtree(os.path.join(data, "val"))
    shutil.copytree(os.path.join(data, "train"), os.path.join(data, "val"))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"cannot read image .*bad_(truncated|text)\.JPEG.*--strict-data"):
        main_deit.main(_argv(data, out, "--strict-data"))
    assert not (out / "checkpoint.pth").exists()
    lvvit = [data, "--num-classes", "3", "--model-kwargs", as_json({**TINY_IMAGENET_MODEL, "stem_dim": 8}), "-b",
             "4", "--epochs", "1", "-j", "0", "--no-progress", "--device", "cpu", "--cooldown-epochs", "0",
             "--strict-data", "--output", str(out)]
    with pytest.raises(DataError, match=r"cannot read image .*bad_(truncated|text)\.JPEG"):
        main_lvvit.main(lvvit)
    assert not (out / "last.pth.tar").exists()


def test_token_label_data_skips_unreadable_images(tmp_path):
    """The LV-ViT token-label data set reads its images through the same guard."""
    from train.data import SkipBadImages, guard_images, skipped_images
    from train.token_label import TokenLabelDataset, TokenLabelTransform
    from trainer_helpers import write_token_labels

    data, bad = _data_with_bad_images(tmp_path / "imagenet")
    labels = write_token_labels(data, tmp_path / "labels", hw=4)
    dataset = TokenLabelDataset(data, labels, TokenLabelTransform(80, 5, auto_augment=None, reprob=0.0))
    guarded = guard_images(dataset)
    assert isinstance(guarded, SkipBadImages) and guarded.classes == list(CLASSES)
    first = [s[0] for s in dataset.folder.samples].index(bad[0])
    image, (label, _, _, class_index) = guarded[first]  # the next readable image instead
    assert image.shape == (3, 80, 80) and class_index == 0 and skipped_images(guarded) == 1
    strict = guard_images(TokenLabelDataset(data, labels, TokenLabelTransform(80, 5)), strict=True)
    with pytest.raises(DataError, match="bad_truncated.JPEG"):
        strict[first]
