"""Loading released SuperViT checkpoints (without unpickling arbitrary objects) and converting plain ViTs."""
from __future__ import annotations

import argparse
import os
import pickle
from typing import NamedTuple

import torch
import torch.nn.functional as F

# What the released training scripts pickle besides tensors: the argparse.Namespace of their arguments, and
# NumPy scalars in timm's saver metrics. Nothing else is unpickled.
SAFE_GLOBALS: list = [argparse.Namespace]
try:
    import numpy as np

    SAFE_GLOBALS += [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    SAFE_GLOBALS += [np._core.multiarray.scalar] if hasattr(np, "_core") else []
except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
    pass

_STATE_KEYS_RAW = ("model", "state_dict")
_STATE_KEYS_EMA = ("model_ema", "state_dict_ema")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""


class LoadedCheckpoint(NamedTuple):
    """What ``load_checkpoint`` loaded.

    Attributes:
        path: the file.
        source_format: "deit-script" (``model`` / ``model_ema``), "timm-saver" (``state_dict`` /
            ``state_dict_ema``) or "state-dict" (a bare tensor dict).
        weights_key: the dict key the weights came from (None for a bare state dict).
        ema: the EMA weights were loaded.
        converted_plain_vit: a plain ViT's single ``pos_embed`` was resized into every position table.
        missing_keys, unexpected_keys: tensor names the model has but the file lacks, and the reverse (empty when
            ``strict``).
        epoch: the ``epoch`` the file records, if any.
    """

    path: str
    source_format: str
    weights_key: str | None
    ema: bool
    converted_plain_vit: bool
    missing_keys: list
    unexpected_keys: list
    epoch: int | None


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The object stored in ``path``, loaded with ``weights_only=True`` and the allow-list ``SAFE_GLOBALS``.

    Raises ``CheckpointError`` naming the file when it is missing, truncated, corrupt, or holds anything outside
    the allow-list (such a file is refused, never executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing to load {path!r}: it holds objects outside the allow-list "
                              f"({str(err).splitlines()[0]})") from None
    except Exception as err:  # noqa: BLE001 - weights_only parsing runs no code: any failure means a bad file
        raise CheckpointError(f"cannot read checkpoint {path!r} (truncated or corrupt?): "
                              f"{load_failure(err)}") from None


def load_failure(err: BaseException) -> str:
    """One line naming why a weights-only ``torch.load`` failed: the exception's type and its first line.

    Garbage bytes reach the weights-only unpickler and fail there in many ways (KeyError, IndexError, ...), some
    with an empty or multi-line message.
    """
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def strip_wrapper_prefixes(state: dict) -> dict:
    """``state`` with the prefixes that wrappers add to tensor names (``module.`` of DDP, ``_orig_mod.`` of
    torch.compile, in any order and number) removed."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def extract_state_dict(checkpoint: dict, use_ema: bool = False) -> dict:
    """The model weights of a released checkpoint dict, without wrapper prefixes (``module.``, ``_orig_mod.``).

    Args:
        checkpoint: DeiT-script dict (``model``, ``model_ema``) or timm-saver dict (``state_dict``,
            ``state_dict_ema``), or a bare state dict.
        use_ema: take the EMA weights (``model_ema`` / ``state_dict_ema``).
    """
    key = weights_key(checkpoint, use_ema)
    return strip_wrapper_prefixes(checkpoint if key is None else checkpoint[key])


def weights_key(checkpoint: dict, use_ema: bool = False) -> str | None:
    """The key of ``checkpoint`` holding the (EMA) weights; None for a bare state dict. See ``extract_state_dict``."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    keys = _STATE_KEYS_EMA if use_ema else _STATE_KEYS_RAW
    found = [k for k in keys if isinstance(checkpoint.get(k), dict)]
    if found:
        return found[0]
    if use_ema:
        raise CheckpointError(f"use_ema=True but the checkpoint has none of {list(_STATE_KEYS_EMA)}; "
                              f"its keys are {sorted(checkpoint)[:10]}")
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return None
    raise CheckpointError(f"no model weights among the checkpoint keys {sorted(checkpoint)[:10]}; "
                          f"expected one of {list(_STATE_KEYS_RAW + _STATE_KEYS_EMA)}")


def resize_pos_embed(pos_embed: torch.Tensor, grid: int, num_prefix: int = 1) -> torch.Tensor:
    """Bicubic resize of a (1, prefix + g0*g0, C) position table to (1, prefix + grid*grid, C)."""
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = int(round(patch.shape[1] ** 0.5))
    if side * side != patch.shape[1]:
        raise CheckpointError(f"pos_embed patch part of {patch.shape[1]} tokens is not a square grid")
    if side != grid:
        patch = patch.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # [1, C, g0, g0]
        patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([prefix, patch], dim=1)


def convert_plain_vit_state_dict(state_dict: dict, model) -> dict:
    """Map a plain DeiT-S / LV-ViT-S state dict (one ``pos_embed``) onto the super-network.

    Every ``pos_embed_list.i`` is the bicubic resize of ``pos_embed`` to grid i; the other tensors are kept.
    """
    state = strip_wrapper_prefixes(state_dict)
    if "pos_embed" not in state:
        raise CheckpointError("a plain ViT state dict needs a 'pos_embed' tensor; found none")
    pos_embed = state.pop("pos_embed")
    for i, size in enumerate(model.img_sizes):
        state[f"pos_embed_list.{i}"] = resize_pos_embed(pos_embed, size // model.patch_size)
    return state


_FORMATS = {"model": "deit-script", "model_ema": "deit-script", "state_dict": "timm-saver",
            "state_dict_ema": "timm-saver", None: "state-dict"}


def has_ema_weights(checkpoint) -> bool:
    """Whether a checkpoint dict holds EMA weights (the DeiT script's ``model_ema``, timm's ``state_dict_ema``)."""
    return isinstance(checkpoint, dict) and any(isinstance(checkpoint.get(k), dict) for k in _STATE_KEYS_EMA)


def is_plain_vit_state(state: dict) -> bool:
    """A plain ViT's weights (one ``pos_embed``) rather than a super-network's (``pos_embed_list.i``)."""
    return "pos_embed" in state and "pos_embed_list.0" not in state


def evaluated_ema(checkpoint: dict) -> bool:
    """Whether the run that wrote ``checkpoint`` evaluated its EMA weights (the policy of ``pick_weights``).

    The evaluation our trainer records says so (``supervit.accuracy.ema``); otherwise the file's format names the
    recipe: the timm saver (LV-ViT script) evaluates the EMA weights when it kept them, the DeiT script the raw ones.
    """
    if not has_ema_weights(checkpoint):
        return False
    info = checkpoint.get("supervit")
    accuracy = info.get("accuracy") if isinstance(info, dict) else None
    if isinstance(accuracy, dict) and isinstance(accuracy.get("ema"), bool):
        return accuracy["ema"]
    return isinstance(checkpoint.get("state_dict_ema"), dict)


class Weights(NamedTuple):
    """The weights ``pick_weights`` took from a checkpoint: ``state`` (names without wrapper prefixes), the dict
    ``key`` they came from (None for a bare state dict), whether they are the ``ema``, the file's
    ``source_format`` ("deit-script", "timm-saver", "state-dict") and the ``epoch`` it records (or None)."""

    state: dict
    key: str | None
    ema: bool
    source_format: str
    epoch: int | None


def pick_weights(checkpoint: dict, ema: bool | None = None) -> Weights:
    """The model weights of a checkpoint dict (ours, a released file, or a bare state dict).

    Args:
        ema: True: the EMA weights (CheckpointError when the file has none); False: the raw weights; None: the
            weights the run evaluated (``evaluated_ema``).
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    use_ema = evaluated_ema(checkpoint) if ema is None else bool(ema)
    key = weights_key(checkpoint, use_ema)
    epoch = checkpoint.get("epoch") if key is not None else None
    return Weights(extract_state_dict(checkpoint, use_ema), key, key in _STATE_KEYS_EMA, _FORMATS[key],
                   epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None)


class StateFit(NamedTuple):
    """How a state dict fits a model: ``wrong_shape`` {name: (file shape, model shape)} of the tensors both hold,
    ``missing`` (the model's names the file lacks) and ``unexpected`` (the reverse)."""

    wrong_shape: dict
    missing: list
    unexpected: list

    def describe_shapes(self, limit: int = 5) -> list[str]:
        """'name: file (...) vs model (...)' for the first ``limit`` ill-shaped tensors."""
        return [f"{k}: file {a} vs model {b}" for k, (a, b) in list(self.wrong_shape.items())[:limit]]


def state_fit(model, state: dict) -> StateFit:
    """How ``state`` fits ``model.state_dict()`` (names and shapes; nothing is loaded)."""
    own = model.state_dict()
    return StateFit({k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                     if k in own and own[k].shape != v.shape},
                    [k for k in own if k not in state], [k for k in state if k not in own])


def load_weights(model, weights: Weights | dict, strict: bool = True, source: str = "checkpoint") -> StateFit:
    """Load ``weights`` (a ``pick_weights`` result or a state dict) into ``model``; returns how they fit.

    A plain ViT's single ``pos_embed`` is resized into every position table (``convert_plain_vit_state_dict``).
    Raises ``CheckpointError`` naming ``source`` on ill-shaped tensors, and on missing/unexpected ones when
    ``strict``; nothing is loaded then.
    """
    state = weights.state if isinstance(weights, Weights) else strip_wrapper_prefixes(weights)
    if is_plain_vit_state(state):
        state = convert_plain_vit_state_dict(state, model)
    fit = state_fit(model, state)
    if fit.wrong_shape:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(fit.describe_shapes()))
    if strict and (fit.missing or fit.unexpected):
        raise CheckpointError(f"{source} does not fit the model: missing {fit.missing[:5]}, "
                              f"unexpected {fit.unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    return fit


def load_checkpoint(model, path, use_ema: bool | None = False, strict: bool = True,
                    checkpoint: dict | None = None) -> LoadedCheckpoint:
    """Load a released (or our own) checkpoint into ``model``; returns a ``LoadedCheckpoint`` summary.

    The three steps in one call: ``read_checkpoint`` (weights-only), ``pick_weights`` (``use_ema``: True, False, or
    None for the weights the run evaluated) and ``load_weights`` (a plain ViT's single ``pos_embed`` converted). A
    caller that has read the file already passes that dict as ``checkpoint`` so it is not read twice.
    Raises ``CheckpointError`` naming the file on unreadable files, and on missing/unexpected/ill-shaped tensors
    when ``strict``.
    """
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    weights = pick_weights(checkpoint, use_ema)
    fit = load_weights(model, weights, strict, source=repr(os.fspath(path)))
    return LoadedCheckpoint(os.fspath(path), weights.source_format, weights.key, weights.ema,
                            is_plain_vit_state(weights.state), fit.missing, fit.unexpected, weights.epoch)
