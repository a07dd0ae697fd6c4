"""Accuracy tables of the sub-networks: from a checkpoint, a results.json, or the published ImageNet numbers.

A table is a dict::

    {"source": "checkpoint" | "results.json" | "published", "label": str (where the numbers come from),
     "epoch", "ema", "num_images", "dataset": (None when unknown),
     "rows": [{"img_size": int, "keep_ratio": float, "acc1": float, "acc5": float | None}, ...]}
"""
from __future__ import annotations

import json
import math
import os

from . import DeployError


def _row(raw: dict, where: str) -> dict:
    try:
        row = {"img_size": int(raw["img_size"]), "keep_ratio": float(raw["keep_ratio"]),
               "acc1": float(raw["acc1"]) if raw.get("acc1") is not None else None,
               "acc5": float(raw["acc5"]) if raw.get("acc5") is not None else None}
    except (KeyError, TypeError, ValueError) as err:
        raise DeployError(f"{where}: an accuracy row needs img_size, keep_ratio and acc1, got {raw!r:.200} "
                          f"({err})") from None
    if row["acc1"] is None or math.isnan(row["acc1"]):
        raise DeployError(f"{where}: sub-network ({row['img_size']}, {row['keep_ratio']:g}) has no top-1 accuracy")
    return row


def _after_epoch(epoch) -> str:
    """'after epoch N' as the trainer's log counts (1-based) from a checkpoint's 0-based ``epoch`` index."""
    return f"after epoch {int(epoch) + 1}" if isinstance(epoch, int) else "epoch unknown"


def make_table(rows, source: str, label: str, **meta) -> dict:
    """A validated accuracy table (see the module docstring) from rows with img_size, keep_ratio, acc1[, acc5]."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise DeployError(f"{label}: the accuracy table has no rows")
    table = {"source": source, "label": label, "epoch": meta.get("epoch"), "ema": meta.get("ema"),
             "num_images": meta.get("num_images"), "dataset": meta.get("dataset"),
             "rows": [_row(r, label) for r in rows]}
    return table


def table_from_checkpoint(checkpoint: dict, path: str = "checkpoint") -> dict | None:
    """The 12-sub-network table the trainer stored in ``checkpoint["supervit"]["accuracy"]``; None if absent."""
    info = checkpoint.get("supervit") if isinstance(checkpoint, dict) else None
    accuracy = info.get("accuracy") if isinstance(info, dict) else None
    if not isinstance(accuracy, dict) or not accuracy.get("rows"):
        return None
    label = (f"{os.path.basename(path)}: {_after_epoch(accuracy.get('epoch'))}, "
             f"{'EMA' if accuracy.get('ema') else 'model'} weights, {accuracy.get('num_images')} images"
             + (f" of {accuracy['dataset']}" if accuracy.get("dataset") else ""))
    return make_table(accuracy["rows"], "checkpoint", label, epoch=accuracy.get("epoch"), ema=accuracy.get("ema"),
                      num_images=accuracy.get("num_images"), dataset=accuracy.get("dataset"))


def table_from_results(path: str) -> dict:
    """The table of a trainer's ``results.json`` (top-level meta and ``"subnets"`` rows)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as err:
        raise DeployError(f"--results {path!r} cannot be read: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise DeployError(f"--results {path!r} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("subnets"), list):
        raise DeployError(f"--results {path!r} must be a results.json with a 'subnets' list of rows")
    num = data.get("num_images", data.get("num_samples"))
    label = f"{os.path.basename(path)}: {_after_epoch(data.get('epoch'))}, {num} images"
    return make_table(data["subnets"], "results.json", label, epoch=data.get("epoch"), ema=data.get("ema"),
                      num_images=num, dataset=data.get("dataset"))


def published_table(arch: str) -> dict:
    """The published ImageNet-1k top-1 of ``arch``, labelled as such (the fallback for released checkpoints)."""
    from supervit import models

    try:
        published = models.published_accuracy(arch)  # {(img_size, keep_ratio): top-1}
    except ValueError:
        raise DeployError(f"no published accuracy table for model {arch!r}; pass --results results.json or a "
                          "checkpoint that carries its evaluation") from None
    rows = [{"img_size": size, "keep_ratio": ratio, "acc1": acc} for (size, ratio), acc in published.items()]
    return make_table(rows, "published", f"published ImageNet-1k top-1 of {arch} (not measured here)",
                      dataset="ImageNet-1k val")
