"""The losses of a SuperViT step: the KD loss of a reduced-keep sub-network, and the supervised task of the
full-keep ones (any object with ``prepare``, ``logits`` and ``supervised_loss``; ``ClassificationTask`` for plain
classification with optional Mixup/CutMix)."""
from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KLDiv(batchmean)(log_softmax(student), softmax(teacher.detach()))``, temperature 1, computed in fp32.

    Args:
        student_logits, teacher_logits: [B, classes].
    """
    return F.kl_div(F.log_softmax(student_logits.float(), dim=-1), F.softmax(teacher_logits.detach().float(), dim=-1),
                    reduction="batchmean")


class Task(Protocol):
    """What a step needs from a recipe's supervised loss."""

    def prepare(self, images, targets):
        """(images, loss targets, extra forward kwargs) of one batch; all four sub-networks see the same."""

    def logits(self, output) -> torch.Tensor:
        """The class logits [B, classes] of a model output (teachers and students compare these)."""

    def supervised_loss(self, output, targets, largest: bool) -> torch.Tensor:
        """The loss of a full-keep sub-network; ``largest``: it is (L, 1), else (s, 1)."""


class ClassificationTask:
    """Classification: ``criterion(logits, targets)`` at both full-keep sub-networks, after an optional batch
    mixing function (timm's ``Mixup``, which also turns the targets into soft targets).

    Args:
        criterion: e.g. ``timm.loss.SoftTargetCrossEntropy()`` with Mixup/CutMix, else label-smoothing CE.
        mixup_fn: ``(images, targets) -> (images, targets)`` or None.
    """

    def __init__(self, criterion: Callable, mixup_fn: Optional[Callable] = None):
        self.criterion, self.mixup_fn = criterion, mixup_fn

    def prepare(self, images, targets):
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        return images, targets, {}

    def logits(self, output):
        return output

    def supervised_loss(self, output, targets, largest: bool):
        return self.criterion(output.float(), targets)
