"""One SuperViT step: the 4 sub-networks' forwards and losses, their backward passes summed into the gradients.

What follows a step (unscale, clipping, the optimizer step, the scaler update, an EMA update) belongs to the
training loop that calls it, as in any PyTorch loop.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from supervit.models.subnet import Subnet

from .losses import kd_loss
from .sampling import teacher_rule


class StepResult(NamedTuple):
    """``losses``: [4] float32, detached, one per sub-network (0 for a slot not trained); ``subnets``: the 4."""

    losses: torch.Tensor
    subnets: list


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """Zero the gradients before a step as the reference scripts did (torch 1.10's ``zero_grad()``): a gradient
    that exists is zeroed in place and kept, one never allocated stays None.

    So a parameter not used yet (the position table of a grid not drawn so far) has no gradient and AdamW skips
    it (no decay, no step count) until its first use; from then on it takes an update every step, with a zero
    gradient in the steps that do not draw it. ``optimizer.zero_grad()``'s default (``set_to_none=True``) would skip
    every parameter a step does not use instead.
    """
    optimizer.zero_grad(set_to_none=False)


def _no_sync(model: nn.Module, skip_sync: bool):
    """DDP's ``no_sync`` for every backward pass but the step's last: gradients add up locally and are all-reduced
    once, with the last backward."""
    if skip_sync and hasattr(model, "no_sync") and dist.is_available() and dist.is_initialized():
        return model.no_sync()
    return contextlib.nullcontext()


def _autocast(device_type: str, dtype: Optional[torch.dtype]):
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def supervit_step(model: nn.Module, images: torch.Tensor, targets, subnets: Sequence[Optional[Subnet]], task, *,
                  teachers="group", amp_dtype: Optional[torch.dtype] = None,
                  scaler: Optional[torch.amp.GradScaler] = None,
                  on_backward: Optional[Callable[[dict], None]] = None,
                  backward: Optional[Callable[[torch.Tensor], None]] = None) -> StepResult:
    """Forward, loss and backward of each of the 4 sub-networks on one batch; the gradients add up (weight 1).

    Each sub-network's backward runs right after its forward, so its activations are freed before the next one.
    The gradients are not zeroed here (call ``zero_grad`` before) and no optimizer step is taken.

    Args:
        model: the super-network, or its DDP / torch.compile wrapper (under DDP every backward but the last runs in
            ``no_sync``: one all-reduce per step).
        images: [B, C, H, W] at the largest image size; the model resizes for the smaller ones.
        targets: the batch's targets as ``task.prepare`` takes them.
        subnets: ``[(L, 1), (L, r1), (s, 1), (s, r2)]`` (``sample_subnets``); a None slot is skipped (loss 0).
        task: the supervised loss (``ClassificationTask`` or any object with ``prepare``, ``logits`` and
            ``supervised_loss``).
        teachers: 'group' (each reduced keep learns from its size's full keep), 'full' (both from (L, 1)) or a
            4-tuple of teacher indices (None = supervised).
        amp_dtype: autocast dtype of the forwards and losses (None: no autocast).
        scaler: a GradScaler: the losses are scaled before their backward (unscale and step are the caller's).
        on_backward: called after each backward with {'index', 'subnet', 'teacher', 'loss', 'logits',
            'teacher_logits'} (e.g. to clip the partial sum, or to inspect).
        backward: runs the backward of a (scaled) loss instead of ``loss.backward()`` (Lightning's
            ``manual_backward``, for example).
    Returns the 4 losses (unscaled, detached) and the sub-networks.
    """
    teachers = teacher_rule(teachers)
    images, loss_targets, forward_kwargs = task.prepare(images, targets)
    trained = [i for i, subnet in enumerate(subnets) if subnet is not None]
    if not trained:
        raise ValueError("a step needs at least one sub-network, got none")
    largest = max(int(subnets[i][0]) for i in trained)
    kept_logits: dict[int, torch.Tensor] = {}
    losses = torch.zeros(len(subnets), dtype=torch.float32, device=images.device)
    for i in trained:
        size, ratio = subnets[i]
        teacher = teachers[i]
        with _no_sync(model, i != trained[-1]):
            with _autocast(images.device.type, amp_dtype):
                output = model(images, img_size=size, keep_ratio=ratio, **forward_kwargs)
                logits = task.logits(output)
                if teacher is None:
                    loss = task.supervised_loss(output, loss_targets, largest=int(size) == largest)
                else:
                    if teacher not in kept_logits:
                        raise ValueError(f"sub-network {i} learns from sub-network {teacher}, which was not trained "
                                         "in this step")
                    loss = kd_loss(logits, kept_logits[teacher])
            if i in teachers:
                kept_logits[i] = logits.detach()
            scaled = scaler.scale(loss) if scaler is not None else loss
            scaled.backward() if backward is None else backward(scaled)
        losses[i] = loss.detach().float()
        if on_backward is not None:
            on_backward(dict(index=i, subnet=Subnet(int(size), float(ratio)), teacher=teacher, loss=loss.detach(),
                             logits=logits.detach(),
                             teacher_logits=None if teacher is None else kept_logits[teacher]))
        del output, logits, loss
    return StepResult(losses, list(subnets))
