"""The model and accuracy table a deploy command works on: a checkpoint (ours or a released one) or a model name.

Our checkpoints carry ``ckpt["supervit"]["model_config"]`` (rebuilt with ``supervit.models.create_from_config``,
so any configuration, the demo's included, loads without the training code) and ``ckpt["supervit"]["accuracy"]``.
Released checkpoints name their architecture in ``arch`` (timm saver) or ``args.model`` (DeiT script); their
accuracy falls back to the published ImageNet table, labelled as such.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from . import accuracy
from .errors import DeployError


@dataclass
class Source:
    """A model ready for inference (eval mode, on CPU) with its accuracy table and a short identifier."""

    model: nn.Module
    table: dict | None
    name: str           # what profiles are keyed by: the arch, or the checkpoint file name for custom configs
    checkpoint: dict | None


def _build(checkpoint: dict, path: str) -> tuple[nn.Module, bool]:
    """(model, built from a stored config) for ``checkpoint``."""
    import timm

    from supervit import models

    config = models.recorded_model_config(checkpoint)
    if config is not None:
        try:
            return models.create_from_config(config, drop_path_rate=0.0), True
        except ValueError as err:
            raise DeployError(f"--checkpoint {path!r}: its model config cannot be rebuilt: {err}") from None
    arch = models.recorded_arch(checkpoint)
    known = timm.list_models("super_*")
    if arch not in known:
        raise DeployError(f"--checkpoint {path!r} carries no model config and names no known architecture "
                          f"(got {arch!r}); expected one of {known}")
    return timm.create_model(arch), False


def _prefers_ema(checkpoint: dict, table: dict | None) -> bool:
    from supervit.models import has_ema_weights

    has_ema = has_ema_weights(checkpoint)
    if table is not None and table.get("ema") is not None:
        return bool(table["ema"]) and has_ema
    return has_ema and "state_dict_ema" in checkpoint  # the LV-ViT recipe evaluates its EMA weights


def load_source(checkpoint: str | None = None, model_name: str | None = None,
                results: str | None = None) -> Source:
    """The model (weights loaded, eval mode) and accuracy table for a deploy command.

    Args:
        checkpoint: path of our or a released checkpoint (read with ``weights_only=True``).
        model_name: a registered name (``super_deit_s``) when there is no checkpoint; random weights, published
            accuracy.
        results: a trainer ``results.json`` whose table replaces the checkpoint's.
    Raises ``DeployError`` naming the argument when nothing usable is given.
    """
    import timm

    from supervit import models

    if checkpoint is None:
        if model_name is None:
            raise DeployError("give --checkpoint CKPT or --model NAME (one of "
                              f"{timm.list_models('super_*')})")
        if model_name not in timm.list_models("super_*"):
            raise DeployError(f"--model must be one of {timm.list_models('super_*')}, got {model_name!r}")
        table = accuracy.table_from_results(results) if results else _published_or_none(model_name)
        return Source(timm.create_model(model_name).eval(), table, model_name, None)
    try:
        ckpt = models.read_checkpoint(checkpoint)
    except models.CheckpointError as err:
        raise DeployError(f"--checkpoint: {err}") from None
    if not isinstance(ckpt, dict):
        raise DeployError(f"--checkpoint {checkpoint!r} holds a {type(ckpt).__name__}, not a checkpoint dict")
    model, custom = _build(ckpt, checkpoint)
    table = accuracy.table_from_results(results) if results else accuracy.table_from_checkpoint(ckpt, checkpoint)
    arch = models.recorded_arch(ckpt) or model_name
    if table is None and not custom and arch:
        table = _published_or_none(arch)
    try:
        state = models.extract_state_dict(ckpt, use_ema=_prefers_ema(ckpt, table))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (models.CheckpointError, RuntimeError) as err:
        raise DeployError(f"--checkpoint {checkpoint!r} does not fit its model: {str(err).splitlines()[0]}") from None
    if missing or unexpected:
        raise DeployError(f"--checkpoint {checkpoint!r} does not fit its model: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    name = arch if (arch and not custom) else os.path.basename(checkpoint)
    return Source(model.eval(), table, name, ckpt)


def _published_or_none(arch: str) -> dict | None:
    try:
        return accuracy.published_table(arch)
    except DeployError:
        return None


def require_table(source: Source, what: str) -> dict:
    """The source's accuracy table, or a DeployError saying what would provide one."""
    if source.table is None:
        raise DeployError(f"{what} needs accuracy numbers, but the checkpoint carries no evaluation table and "
                          f"{source.name!r} has no published table; pass --results results.json (written by the "
                          "trainer's evaluation) or a checkpoint saved by the trainer")
    return source.table


@torch.no_grad()
def example_input(model: nn.Module, batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """A random batch [B, in_chans, S, S] at the model's largest side S (the model resizes inside)."""
    side = model.img_sizes[-1]
    return torch.randn(batch, model.in_chans, side, side, device=device, dtype=dtype)
