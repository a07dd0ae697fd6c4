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


def extract_state_dict(checkpoint: dict, use_ema: bool = False) -> dict:
    """The model weights of a released checkpoint dict, without a leading ``module.`` prefix.

    Args:
        checkpoint: DeiT-script dict (``model``, ``model_ema``) or timm-saver dict (``state_dict``,
            ``state_dict_ema``), or a bare state dict.
        use_ema: take the EMA weights (``model_ema`` / ``state_dict_ema``).
    """
    key = weights_key(checkpoint, use_ema)
    state = checkpoint if key is None else checkpoint[key]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


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
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
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


def load_checkpoint(model, path, use_ema: bool = False, strict: bool = True,
                    checkpoint: dict | None = None) -> LoadedCheckpoint:
    """Load a released (or our own) checkpoint into ``model``; returns a ``LoadedCheckpoint`` summary.

    A plain ViT checkpoint (single ``pos_embed``) is converted with ``convert_plain_vit_state_dict``. Use
    ``read_checkpoint`` for the other entries of the file (optimizer, args, ...); a caller that has read it
    already passes that dict as ``checkpoint`` so the file is not read twice.
    Raises ``CheckpointError`` naming the file on unreadable files, and on missing/unexpected/ill-shaped tensors
    when ``strict``.
    """
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    key = weights_key(checkpoint, use_ema)
    state = extract_state_dict(checkpoint, use_ema=use_ema)
    plain = "pos_embed" in state and "pos_embed_list.0" not in state
    if plain:
        state = convert_plain_vit_state_dict(state, model)
    fit = state_fit(model, state)
    if fit.wrong_shape:
        raise CheckpointError(f"{os.fspath(path)!r} does not fit the model: " + "; ".join(fit.describe_shapes()))
    if strict and (fit.missing or fit.unexpected):
        raise CheckpointError(f"{os.fspath(path)!r} does not fit the model: missing {fit.missing[:5]}, "
                              f"unexpected {fit.unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    epoch = checkpoint.get("epoch") if key is not None else None
    return LoadedCheckpoint(os.fspath(path), _FORMATS[key], key, key in _STATE_KEYS_EMA, plain, fit.missing,
                            fit.unexpected, epoch if isinstance(epoch, int) else None)
