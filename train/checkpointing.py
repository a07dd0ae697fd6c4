"""Checkpoints in the reference formats, written atomically; resume and auto-resume.

* DeiT script (``main_deit.py``): ``{model, optimizer, lr_scheduler, epoch, model_ema, scaler, args}`` in
  ``checkpoint.pth`` (every epoch) and ``best_checkpoint.pth`` (best ``{L}_1_acc1``).
* timm saver (``main_lvvit.py``): ``{epoch, arch, state_dict, optimizer, version, args, amp_scaler,
  state_dict_ema, metric}`` in ``last.pth.tar`` and ``model_best.pth.tar``.

Both add ``lr_scheduler`` (timm's saver lacks it) and a ``supervit`` dict; reference tools ignore extra keys:

    {"best_metric", "best_epoch", "format_version",
     "model_config": {"arch", "kwargs"} (rebuilds the model without the training code),
     "accuracy": {"epoch", "ema", "num_images", "dataset",
                  "rows": [{"img_size", "keep_ratio", "acc1", "acc5", "gmacs"}, ...]}  (latest full evaluation)}

Files are written through ``supervit.files.atomic_write`` (a temporary file in the same folder, fsync'ed, given the
permissions of a plainly created file, renamed over the target), so a crash never leaves a half-written checkpoint
under the final name.
``args`` is stored as an ``argparse.Namespace`` of plain values, which ``supervit.models.read_checkpoint`` allows.
"""
from __future__ import annotations

import argparse
import os
import shutil

import torch

from supervit.files import atomic_write, is_partial_write
from supervit.models import has_ema_weights, load_weights, pick_weights, read_checkpoint

from . import faults

FORMATS = {
    "deit": {"last": "checkpoint.pth", "best": "best_checkpoint.pth"},
    "timm": {"last": "last.pth.tar", "best": "model_best.pth.tar"},
}
FORMAT_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


def atomic_save(obj, path: str):
    """torch.save ``obj`` to ``path`` through ``supervit.files.atomic_write`` (a temporary file beside it, fsync,
    the permissions of a plainly created file, rename): a crash never leaves a half-written file under ``path``."""
    with atomic_write(path, make_folder=True) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        faults.inject("save", epoch=obj.get("epoch") if isinstance(obj, dict) else None)  # test-only


def atomic_copy(src: str, dst: str):
    """Copy ``src`` to ``dst`` through ``atomic_write``."""
    with atomic_write(dst, make_folder=True) as tmp:
        shutil.copyfile(src, tmp)


def plain_value(value):
    """``value`` if it is built of str/int/float/bool/None/list/tuple/dict only, else its ``str``."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple):  # named tuples (e.g. Subnet) too: a plain tuple loads weights-only
        return tuple(plain_value(v) for v in value)
    if isinstance(value, list):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    return str(value)


def plain_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` that loads under ``weights_only=True`` (plain values only)."""
    return argparse.Namespace(**{k: plain_value(v) for k, v in vars(args).items()})


def build_checkpoint(fmt: str, *, model, optimizer, scheduler, scaler, ema, epoch: int, args, metric, best,
                     run_info: dict | None = None) -> dict:
    """The checkpoint dict of format ``fmt`` ('deit' or 'timm'); ``run_info`` (plain values: model_config,
    accuracy) goes into the ``supervit`` dict."""
    ema_state = ema.module.state_dict() if ema is not None else None
    scaler_state = scaler.state_dict() if scaler is not None else None
    extra = {"best_metric": best[0], "best_epoch": best[1], "format_version": FORMAT_VERSION,
             **plain_value(dict(run_info or {}))}
    if fmt == "deit":
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict() if scheduler is not None else None, "epoch": epoch,
                "model_ema": ema_state, "scaler": scaler_state, "args": plain_namespace(args), "supervit": extra}
    if fmt == "timm":
        ckpt = {"epoch": epoch, "arch": args.model, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "version": 2, "args": plain_namespace(args)}
        if scaler_state is not None:
            ckpt["amp_scaler"] = scaler_state
        if ema_state is not None:
            ckpt["state_dict_ema"] = ema_state
        ckpt["metric"] = metric
        ckpt["lr_scheduler"] = scheduler.state_dict() if scheduler is not None else None
        ckpt["supervit"] = extra
        return ckpt
    raise ValueError(f"checkpoint format must be one of {list(FORMATS)}, got {fmt!r}")


class NonFiniteWeightsError(RuntimeError):
    """Weights holding NaN/inf: never written over a checkpoint."""


def check_finite_weights(**modules) -> None:
    """Raise ``NonFiniteWeightsError`` naming the first tensor of ``modules`` (name=module) holding NaN/inf."""
    for owner, module in modules.items():
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteWeightsError(f"{owner} tensor {name!r} holds NaN/inf; refusing to overwrite the "
                                            "checkpoint with it (the last good checkpoint stays in place)")


def remove_stale_temporaries(output_dir: str, fmt: str) -> list[str]:
    """Delete the temporary files that a killed save left behind for this format's checkpoints
    (``supervit.files.is_partial_write``); returns their paths."""
    targets = FORMATS[fmt].values()
    removed = []
    for entry in os.scandir(output_dir) if os.path.isdir(output_dir) else ():
        if entry.is_file() and any(is_partial_write(entry.name, target) for target in targets):
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:
                pass
    return removed


def save_epoch(fmt: str, output_dir: str, is_best: bool, **parts) -> str:
    """Write the last checkpoint (and the best one when ``is_best``); returns the last checkpoint's path.

    Refuses (``NonFiniteWeightsError``) weights holding NaN/inf, so a good checkpoint is never replaced by a
    diverged one; removes temporary files left by an earlier killed save.
    """
    names = FORMATS[fmt]
    check_finite_weights(model=parts.get("model"), ema=getattr(parts.get("ema"), "module", None))
    remove_stale_temporaries(output_dir, fmt)
    last = os.path.join(output_dir, names["last"])
    atomic_save(build_checkpoint(fmt, **parts), last)
    if is_best:
        atomic_copy(last, os.path.join(output_dir, names["best"]))
    return last


def find_autoresume(output_dir: str | None, fmt: str) -> str | None:
    """The last checkpoint in ``output_dir`` if there is one."""
    if not output_dir:
        return None
    path = os.path.join(output_dir, FORMATS[fmt]["last"])
    return path if os.path.isfile(path) else None


def resume(path: str, *, model, optimizer=None, scheduler=None, scaler=None, ema=None) -> dict:
    """Restore a run from a checkpoint of either format; returns {'start_epoch', 'best_metric', 'best_epoch',
    'accuracy'} (the last full evaluation it records, or None).

    The optimizer, scheduler, scaler and EMA are restored when given and present in the file.
    """
    ckpt = read_checkpoint(path)
    load_weights(model, pick_weights(ckpt, ema=False), source=repr(path))
    if optimizer is not None and isinstance(ckpt.get("optimizer"), dict):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and isinstance(ckpt.get("lr_scheduler"), dict):
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    scaler_state = ckpt.get("scaler", ckpt.get("amp_scaler"))
    if scaler is not None and isinstance(scaler_state, dict) and scaler_state:
        scaler.load_state_dict(scaler_state)
    if ema is not None:
        if has_ema_weights(ckpt):
            load_weights(ema.module, pick_weights(ckpt, ema=True), source=f"{path!r} (EMA weights)")
        else:  # a checkpoint without EMA weights: start the EMA from the model
            ema.module.load_state_dict(model.state_dict())
    extra = ckpt.get("supervit") or {}
    epoch = int(ckpt.get("epoch", -1))
    return {"start_epoch": epoch + 1, "best_metric": extra.get("best_metric", ckpt.get("metric")),
            "best_epoch": extra.get("best_epoch"), "accuracy": extra.get("accuracy")}
