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
 Files are written to a temporary file in the same folder, fsync'ed, then renamed
over the target (``os.replace``), so a crash never leaves a half-written checkpoint under the final name.
``args`` is stored as an ``argparse.Namespace`` of plain values, which ``supervit.models.read_checkpoint`` allows.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile

import torch

from supervit.models import CheckpointError, extract_state_dict, read_checkpoint, state_fit

from . import faults

FORMATS = {
    "deit": {"last": "checkpoint.pth", "best": "best_checkpoint.pth"},
    "timm": {"last": "last.pth.tar", "best": "model_best.pth.tar"},
}
FORMAT_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


def _fsync_dir(directory: str):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replaced_atomically(path: str):
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (fsync'ed), else remove it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path: str):
    """torch.save to a temporary file next to ``path``, fsync, then rename over ``path``."""
    with _replaced_atomically(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        faults.inject("save", epoch=obj.get("epoch") if isinstance(obj, dict) else None)  # test-only


def atomic_copy(src: str, dst: str):
    """Copy ``src`` to ``dst`` through a temporary file and a rename."""
    with _replaced_atomically(dst) as tmp:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


def plain_value(value):
    """``value`` if it is built of str/int/float/bool/None/list/tuple/dict only, else its ``str``."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(plain_value(v) for v in value)
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
    """Delete temporary files that a killed save left behind (``<checkpoint name>.*.tmp``); returns their paths."""
    prefixes = tuple(name + "." for name in FORMATS[fmt].values())
    removed = []
    for entry in os.scandir(output_dir) if os.path.isdir(output_dir) else ():
        if entry.is_file() and entry.name.startswith(prefixes) and entry.name.endswith(".tmp"):
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


def load_model_weights(model, state: dict, path: str):
    fit = state_fit(model, state)
    if fit.wrong_shape or fit.missing or fit.unexpected:
        raise CheckpointError(f"{path!r} does not fit the model (same --model and model options as the run that "
                              f"wrote it?): shape {fit.describe_shapes(3)}, missing {fit.missing[:5]}, "
                              f"unexpected {fit.unexpected[:5]}")
    model.load_state_dict(state)


def resume(path: str, *, model, optimizer=None, scheduler=None, scaler=None, ema=None) -> dict:
    """Restore a run from a checkpoint of either format; returns {'start_epoch', 'best_metric', 'best_epoch',
    'accuracy'} (the last full evaluation it records, or None).

    The optimizer, scheduler, scaler and EMA are restored when given and present in the file.
    """
    ckpt = read_checkpoint(path)
    load_model_weights(model, extract_state_dict(ckpt, use_ema=False), path)
    if optimizer is not None and isinstance(ckpt.get("optimizer"), dict):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and isinstance(ckpt.get("lr_scheduler"), dict):
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    scaler_state = ckpt.get("scaler", ckpt.get("amp_scaler"))
    if scaler is not None and isinstance(scaler_state, dict) and scaler_state:
        scaler.load_state_dict(scaler_state)
    if ema is not None:
        ema_state = ckpt.get("model_ema", ckpt.get("state_dict_ema"))
        if isinstance(ema_state, dict):
            ema_state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ema_state.items()}
            load_model_weights(ema.module, ema_state, path)
        else:  # a checkpoint without EMA weights: start the EMA from the model
            ema.module.load_state_dict(model.state_dict())
    extra = ckpt.get("supervit") or {}
    epoch = int(ckpt.get("epoch", -1))
    return {"start_epoch": epoch + 1, "best_metric": extra.get("best_metric", ckpt.get("metric")),
            "best_epoch": extra.get("best_epoch"), "accuracy": extra.get("accuracy")}
