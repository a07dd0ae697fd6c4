"""The model and accuracy table a deploy command works on: a checkpoint (ours, a released one, or a bare state dict),
a registered model name, or both.

The checkpoint is read in the three steps of ``supervit.models`` (read weights-only, pick the weights the run
evaluated, load with a fit check) into the model it belongs to (``model_for_checkpoint``: our files record their
configuration, released files their architecture, a bare state dict needs ``model_name``; a recorded model and
``model_name`` must agree). Accuracy comes from the table the trainer stored in the checkpoint, a ``results.json``,
or, for a model built as registered, the published ImageNet table, labelled as such.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from . import DeployError, accuracy


@dataclass
class Source:
    """A model ready for inference (eval mode, on CPU) with its accuracy table.

    Attributes:
        model: the super-network, weights loaded.
        table: the accuracy table (``accuracy`` module docstring), or None.
        name: the model's identity (``supervit.models.model_identity``: the registered name, or the name with a
            digest of its configuration); latency profiles are keyed by it, so two files of one architecture share
            a profile and two architectures never do.
        checkpoint: the checkpoint dict, or None for a model name alone.
        label: how messages and plot titles name the source (the file name, or the model name).
    """

    model: nn.Module
    table: dict | None
    name: str
    checkpoint: dict | None
    label: str = ""


def load_source(checkpoint: str | None = None, model_name: str | None = None, results: str | None = None,
                ema: bool | None = None) -> Source:
    """The model (weights loaded, eval mode) and accuracy table for a deploy command.

    Args:
        checkpoint: path of our or a released checkpoint, or a bare state dict (``{'model': sd}`` or ``sd``);
            read with ``weights_only=True``.
        model_name: a registered name (``super_deit_s``): the model of a checkpoint that records none, checked
            against the one a checkpoint records; alone, random weights and the published accuracy.
        results: a trainer ``results.json`` whose table replaces the checkpoint's.
        ema: True / False: the EMA / raw weights; None: the weights the run evaluated (``pick_weights``).
    Raises ``DeployError`` naming the argument when nothing usable is given.
    """
    from supervit import models

    if checkpoint is None:
        if model_name is None:
            raise DeployError(f"give --checkpoint CKPT or --model NAME (one of {_known_models()})")
        model = _model(lambda: models.model_for_checkpoint({}, model_name, source="--model"))
        table = accuracy.table_from_results(results) if results else _published_or_none(model_name)
        return Source(model.eval(), table, models.model_identity(model), None, model_name)
    where = f"--checkpoint {checkpoint!r}"
    try:
        ckpt = models.read_checkpoint(checkpoint)
    except models.CheckpointError as err:
        raise DeployError(f"--checkpoint: {err}") from None
    if not isinstance(ckpt, dict):
        raise DeployError(f"{where} holds a {type(ckpt).__name__}, not a checkpoint or state dict")
    model = _model(lambda: models.model_for_checkpoint(ckpt, model_name, source=where, drop_path_rate=0.0))
    table = accuracy.table_from_results(results) if results else accuracy.table_from_checkpoint(ckpt, checkpoint)
    identity = models.model_identity(model)
    if (table is None and models.recorded_model_config(ckpt) is None and identity in _known_models()
            and model.num_classes == 1000):
        table = _published_or_none(identity)  # a registered architecture without an evaluation of its own
    if ema is None and results and isinstance(table.get("ema"), bool) and models.has_ema_weights(ckpt):
        ema = table["ema"]  # the weights the given results were measured on
    try:
        models.load_weights(model, models.pick_weights(ckpt, ema), strict=True, source=where)
    except models.CheckpointError as err:
        raise DeployError(str(err)) from None
    return Source(model.eval(), table, identity, ckpt, os.path.basename(checkpoint))


def _model(build) -> nn.Module:
    try:
        return build()
    except ValueError as err:  # CheckpointError is a RuntimeError; model_for_checkpoint raises ValueError
        raise DeployError(str(err)) from None


def _known_models() -> list[str]:
    import timm

    from supervit import models  # noqa: F401 - registers the models with timm

    return timm.list_models("super_*")


def _published_or_none(arch: str) -> dict | None:
    try:
        return accuracy.published_table(arch)
    except DeployError:
        return None


def require_table(source: Source, what: str) -> dict:
    """The source's accuracy table, or a DeployError saying what would provide one."""
    if source.table is None:
        raise DeployError(f"{what} needs accuracy numbers, but the checkpoint carries no evaluation table and "
                          f"{source.label or source.name!r} has no published table; pass --results results.json "
                          "(written by the trainer's evaluation) or a checkpoint saved by the trainer")
    return source.table


def model_gmacs(model: nn.Module, subnets=None) -> dict:
    """{Subnet: GMACs per image} of ``subnets`` (default: every sub-network of ``model``)."""
    from supervit.models import Subnet, flops

    return {Subnet(*sub): flops(model, *sub) for sub in (model.subnets() if subnets is None else subnets)}


@torch.no_grad()
def example_input(model: nn.Module, batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """A random batch [B, in_chans, S, S] at the model's largest side S (the model resizes inside)."""
    side = model.img_sizes[-1]
    return torch.randn(batch, model.in_chans, side, side, device=device, dtype=dtype)
