"""The SuperViT training step as a library, for any training loop (timm's ``train.py``, Lightning, your own).

    from supervit.training import ClassificationTask, sample_subnets, supervit_step, zero_grad

    subnets = sample_subnets(rng, model.img_sizes, model.keep_ratios)   # [(224, 1), (224, r1), (s, 1), (s, r2)]
    zero_grad(optimizer)
    result = supervit_step(model, images, targets, subnets, task, teachers="group")
    optimizer.step()

``sample_subnets`` draws the 4 sub-networks of a step, ``kd_loss`` is the loss of a reduced-keep sub-network towards
its teacher, ``supervit_step`` runs the 4 forwards with their losses and backward passes (summed gradients; DDP's
``no_sync`` for all but the last; optional autocast and GradScaler), ``zero_grad`` zeroes gradients as the reference
scripts did. The optimizer step, clipping, EMA and the handling of non-finite losses stay in the loop.
"""
from .losses import ClassificationTask, Task, kd_loss
from .sampling import TEACHERS, sample_subnets, teacher_rule
from .step import StepResult, supervit_step, zero_grad

__all__ = ["ClassificationTask", "StepResult", "TEACHERS", "Task", "kd_loss", "sample_subnets", "supervit_step",
           "teacher_rule", "zero_grad"]
