"""The label store: converted from a small synthetic TokenLabeling archive, read back bit for bit, refused when
malformed, and read by the token-label data set like the archive."""
from __future__ import annotations

import os

import pytest
import torch

from train.data import DataError
from train.label_store import (LabelFiles, LabelStore, convert_archive, is_label_store, label_path, main,
                               open_labels)


def _archive(root, classes=("n01", "n02"), per_class=3, hw=(6, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    paths = {}
    for c in classes:
        os.makedirs(root / c)
        for i in range(per_class):
            label = torch.stack([torch.rand(5, *hw, generator=gen) * 9,
                                 torch.randint(0, 1000, (5, *hw), generator=gen).float()]).half()
            path = root / c / f"{c}_{i}.pt"
            torch.save(label, path)
            paths[f"{c}/{c}_{i}"] = label
    return paths


def test_convert_and_read_back_every_label(tmp_path):
    labels = _archive(tmp_path / "archive")
    index = convert_archive(str(tmp_path / "archive"), str(tmp_path / "store"), progress=False)
    assert index["images"] == 6 and index["shape"] == [2, 5, 6, 6] and index["classes"] == ["n01", "n02"]
    store = open_labels(str(tmp_path / "store"))
    files = open_labels(str(tmp_path / "archive"))
    assert isinstance(store, LabelStore) and isinstance(files, LabelFiles)
    for key, label in labels.items():
        image = f"/data/train/{key}.JPEG"
        assert torch.equal(store.read(image), label) and torch.equal(files.read(image), label)
        assert store.read(image).dtype == torch.float16
    with pytest.raises(DataError, match="no label for n01/n01_9"):
        store.read("/data/train/n01/n01_9.JPEG")
    with pytest.raises(DataError, match="no class 'n09'"):
        store.read("/data/train/n09/x.JPEG")


def test_store_survives_pickling_for_workers(tmp_path):
    import pickle

    labels = _archive(tmp_path / "archive")
    convert_archive(str(tmp_path / "archive"), str(tmp_path / "store"), progress=False)
    store = LabelStore(str(tmp_path / "store"))
    store.read("/x/n02/n02_1.JPEG")  # maps opened here are not sent to workers
    clone = pickle.loads(pickle.dumps(store))
    assert clone._arrays == {} and torch.equal(clone.read("/x/n02/n02_1.JPEG"), labels["n02/n02_1"])


def test_rerun_keeps_finished_classes_and_no_index_until_done(tmp_path, monkeypatch):
    _archive(tmp_path / "archive")
    store = tmp_path / "store"
    import train.label_store as label_store

    real = label_store.read_label_map
    calls = []

    def failing(path):
        calls.append(path)
        if "n02_1" in path:
            raise DataError(f"cannot read token label file {path!r}: boom")
        return real(path)

    monkeypatch.setattr(label_store, "read_label_map", failing)
    with pytest.raises(label_store.LabelError, match="n02_1.pt"):
        convert_archive(str(tmp_path / "archive"), str(store), progress=False)
    assert not is_label_store(str(store)) and (store / "n01.npy").is_file() and not (store / "n02.npy").exists()
    assert not [n for n in os.listdir(store) if ".partial" in n]  # no half-written file left
    monkeypatch.setattr(label_store, "read_label_map", real)
    calls.clear()
    convert_archive(str(tmp_path / "archive"), str(store), progress=False)
    assert is_label_store(str(store))


def test_malformed_archives_are_refused(tmp_path):
    _archive(tmp_path / "a", classes=("n01",), hw=(6, 6))
    torch.save(torch.zeros(2, 5, 4, 4).half(), tmp_path / "a" / "n01" / "odd.pt")
    with pytest.raises(ValueError, match=r"odd.pt.*shape \(2, 5, 4, 4\).*one label-map size"):
        convert_archive(str(tmp_path / "a"), str(tmp_path / "s"), progress=False)
    assert main([str(tmp_path / "missing"), str(tmp_path / "s2"), "--no-progress"]) == 2
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="is not a version-1"):
        LabelStore(str(tmp_path / "s3"))


def test_token_label_dataset_reads_either_layout(tmp_path):
    from PIL import Image

    from train.token_label import TokenLabelDataset, TokenLabelTransform

    labels = _archive(tmp_path / "archive", per_class=2)
    for key in labels:
        os.makedirs(tmp_path / "data" / "train" / key.split("/")[0], exist_ok=True)
        Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "data" / "train" / f"{key}.JPEG")
    convert_archive(str(tmp_path / "archive"), str(tmp_path / "store"), progress=False)
    for folder in ("archive", "store"):
        dataset = TokenLabelDataset(str(tmp_path / "data"), str(tmp_path / folder),
                                    TokenLabelTransform(16, 4, auto_augment=None, reprob=0.0))
        image, (label, box, warp, class_index) = dataset[3]
        assert torch.equal(label, labels["n02/n02_1"]) and class_index == 1 and image.shape == (3, 16, 16)
    assert label_path("L", "/d/train/n01/x.JPEG") == os.path.join("L", "n01", "x.pt")
