"""Token-label maps on disk: the TokenLabeling archive (one ``.pt`` file per image) or a label store (one
memory-mapped array per class), and the one-time converter from the first to the second.

Archive: ``DIR/<class_dir>/<image_stem>.pt``, each a half tensor [2, 5, h, w]. Reading one costs a file open and a
zip/pickle parse per image (1.28 M of them for ImageNet).

Store: ``DIR/index.json`` (format, label shape, classes), and per class ``DIR/<class_dir>.npy`` (float16
[n, 2, 5, h, w], read memory-mapped) with ``DIR/<class_dir>.txt`` (the n image stems, one a line, in row order).
Reading one label is a slice of a mapped array. Convert once with

    python -m train.label_store ARCHIVE_DIR STORE_DIR

``--token-label-data`` takes either folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

STORE_FORMAT = "supervit-token-label-store"
STORE_VERSION = 1
INDEX_FILE = "index.json"


class LabelError(ValueError):
    """A token-label file or store that is missing or malformed (names the file)."""


def _data_error():
    from .data import DataError  # the trainer's data error: one type for every data-path problem

    return DataError


def label_path(label_dir: str, image_path: str) -> str:
    """``label_dir/<class_dir>/<image_stem>.pt`` of an ImageFolder image path."""
    class_dir, stem = image_key(image_path)
    return os.path.join(label_dir, class_dir, stem + ".pt")


def image_key(image_path: str) -> tuple[str, str]:
    """(class_dir, image_stem) of ``.../<class_dir>/<image_stem>.<ext>``."""
    return os.path.basename(os.path.dirname(image_path)), os.path.splitext(os.path.basename(image_path))[0]


def read_label_map(path: str) -> torch.Tensor:
    """The [2, 5, h, w] label tensor of ``path`` (weights_only load), with a clear error naming the file."""
    error = _data_error()
    if not os.path.isfile(path):
        raise error(f"token label file {path!r} is missing (--token-label-data DIR must hold "
                    "DIR/<class_dir>/<image_stem>.pt for every training image, or be a label store)")
    try:
        label = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise error(f"cannot read token label file {path!r}: {err}") from None
    if not isinstance(label, torch.Tensor) or label.dim() != 4 or tuple(label.shape[:2]) != (2, 5):
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise error(f"token label file {path!r} must hold a [2, 5, h, w] tensor, got {shape}")
    return label


class LabelFiles:
    """The archive layout: ``read(image_path)`` loads ``label_dir/<class_dir>/<image_stem>.pt`` (half)."""

    def __init__(self, label_dir: str):
        self.label_dir = label_dir

    def read(self, image_path: str) -> torch.Tensor:
        return read_label_map(label_path(self.label_dir, image_path)).half()


class LabelStore:
    """The store layout: ``read(image_path)`` -> half [2, 5, h, w], a copy of one row of the class's mapped array.
    Arrays and stem lists are opened on first use in each process (DataLoader workers included)."""

    def __init__(self, store_dir: str):
        self.store_dir = store_dir
        index_path = os.path.join(store_dir, INDEX_FILE)
        try:
            with open(index_path) as handle:
                index = json.load(handle)
        except (OSError, ValueError) as err:
            raise _data_error()(f"cannot read label store index {index_path!r}: {err}") from None
        if index.get("format") != STORE_FORMAT or index.get("version") != STORE_VERSION:
            raise _data_error()(f"{index_path!r} is not a version-{STORE_VERSION} {STORE_FORMAT} index")
        self.shape = tuple(index["shape"])  # (2, 5, h, w)
        self.classes = set(index["classes"])
        self._arrays: dict[str, np.ndarray] = {}
        self._rows: dict[str, dict[str, int]] = {}

    def __getstate__(self):  # workers reopen the maps themselves
        state = dict(self.__dict__)
        state["_arrays"], state["_rows"] = {}, {}
        return state

    def _open(self, class_dir: str):
        if class_dir not in self.classes:
            raise _data_error()(f"label store {self.store_dir!r} has no class {class_dir!r}")
        base = os.path.join(self.store_dir, class_dir)
        try:
            array = np.load(base + ".npy", mmap_mode="r")
            with open(base + ".txt") as handle:
                stems = handle.read().splitlines()
        except (OSError, ValueError) as err:
            raise _data_error()(f"cannot read label store class {base!r}: {err}") from None
        if array.shape != (len(stems), *self.shape) or array.dtype != np.float16:
            raise _data_error()(f"label store class {base}.npy holds {array.dtype} {array.shape}, expected float16 "
                                f"{(len(stems), *self.shape)}")
        self._arrays[class_dir] = array
        self._rows[class_dir] = {stem: row for row, stem in enumerate(stems)}

    def read(self, image_path: str) -> torch.Tensor:
        class_dir, stem = image_key(image_path)
        if class_dir not in self._arrays:
            self._open(class_dir)
        row = self._rows[class_dir].get(stem)
        if row is None:
            raise _data_error()(f"label store {self.store_dir!r} has no label for {class_dir}/{stem} (image "
                                f"{image_path!r})")
        return torch.from_numpy(np.array(self._arrays[class_dir][row]))


def is_label_store(label_dir: str) -> bool:
    return os.path.isfile(os.path.join(label_dir, INDEX_FILE))


def open_labels(label_dir: str):
    """The reader of ``label_dir``: a ``LabelStore`` when it holds ``index.json``, the per-file archive otherwise."""
    return LabelStore(label_dir) if is_label_store(label_dir) else LabelFiles(label_dir)


def convert_archive(archive_dir: str, store_dir: str, progress: bool = True) -> dict:
    """Write the label store of ``archive_dir`` (``<class_dir>/<stem>.pt`` files) to ``store_dir``.

    Every file is read weights-only and checked ([2, 5, h, w], one h x w for all); each class file is written
    atomically, and ``index.json`` last, so an interrupted run leaves no store that reads as complete. A rerun keeps
    the class files already written whose stems match the archive's. Returns the index.
    """
    from tqdm import tqdm

    from supervit.files import atomic_write

    if not os.path.isdir(archive_dir):
        raise LabelError(f"label archive {archive_dir!r} is not a directory")
    classes = sorted(d.name for d in os.scandir(archive_dir) if d.is_dir())
    if not classes:
        raise LabelError(f"label archive {archive_dir!r} holds no class folders (expected <class_dir>/<stem>.pt)")
    os.makedirs(store_dir, exist_ok=True)
    shape = None
    total = 0
    for class_dir in tqdm(classes, desc="classes", disable=not progress, dynamic_ncols=True):
        folder = os.path.join(archive_dir, class_dir)
        stems = sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".pt"))
        if not stems:
            raise LabelError(f"label archive class folder {folder!r} holds no .pt files")
        base = os.path.join(store_dir, class_dir)
        if _class_done(base, stems, shape):
            shape = shape or tuple(np.load(base + ".npy", mmap_mode="r").shape[1:])
            total += len(stems)
            continue
        rows = []
        for stem in stems:
            path = os.path.join(folder, stem + ".pt")
            try:
                label = read_label_map(path)
            except ValueError as err:
                raise LabelError(str(err)) from None
            if shape is None:
                shape = tuple(label.shape)
            elif tuple(label.shape) != shape:
                raise LabelError(f"token label file {path!r} has shape {tuple(label.shape)}, the archive's first "
                                 f"file {shape}: a store holds one label-map size")
            rows.append(label.half().numpy())
        with atomic_write(base + ".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.stack(rows))
        with atomic_write(base + ".txt") as tmp:
            with open(tmp, "w") as handle:
                handle.write("\n".join(stems) + "\n")
        total += len(stems)
    index = {"format": STORE_FORMAT, "version": STORE_VERSION, "shape": list(shape), "dtype": "float16",
             "classes": classes, "images": total}
    with atomic_write(os.path.join(store_dir, INDEX_FILE)) as tmp:
        with open(tmp, "w") as handle:
            json.dump(index, handle, indent=1)
    return index


def _class_done(base: str, stems: list[str], shape) -> bool:
    if not (os.path.isfile(base + ".npy") and os.path.isfile(base + ".txt")):
        return False
    try:
        with open(base + ".txt") as handle:
            written = handle.read().splitlines()
        array = np.load(base + ".npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return written == stems and array.shape[0] == len(stems) and (shape is None or array.shape[1:] == shape)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.label_store",
        description="Convert a TokenLabeling label archive (DIR/<class_dir>/<image_stem>.pt) into a label store "
                    "(one memory-mapped array per class) that --token-label-data reads at the cost of a slice.")
    parser.add_argument("archive", help="the archive folder (e.g. label_top5_train_nfnet)")
    parser.add_argument("store", help="the store folder to write (created if missing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        index = convert_archive(args.archive, args.store, progress=not args.no_progress)
    except (LabelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{index['images']} label maps of shape {tuple(index['shape'])} in {len(index['classes'])} classes -> "
          f"{args.store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
