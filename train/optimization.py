"""What updates the weights, as the reference runs did: AdamW and its parameter groups, the learning-rate schedule
and when it is stepped, the gradient scaler, the weight EMA, and the gradient slots a resumed run restores.

Reference behaviour kept by default (each difference that remains is listed in docs/reference.md):
* the DeiT script steps the schedule after each epoch, so epoch e trains at sched(e - 1) (epochs 0 and 1 both at
  the warm-up start); the LV-ViT script steps it before, epoch e at sched(e). ``--sched-on-updates`` (ours, an
  option) steps it every optimizer update instead;
* the EMA decays from its first update (timm ``ModelEma`` / ``ModelEmaV2``); ``--model-ema-warmup`` (an option)
  uses timm's decay warm-up instead;
* a parameter never used so far has no gradient, so AdamW neither decays nor step-counts it until its first use
  (``supervit.training.zero_grad``); a resumed run gives back a (zero) gradient to every parameter the optimizer
  has state for, as the uninterrupted process holds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3


def scaled_lr(args, recipe, world_size: int) -> float:
    """The peak learning rate: DeiT's ``--lr`` is per 512 images (x global batch / 512) unless ``--unscale-lr``."""
    if recipe.scales_lr_by_batch and not args.unscale_lr:
        return args.lr * args.batch_size * world_size / 512.0
    return args.lr


def optimizer_kwargs(args, device: torch.device) -> dict:
    """Optimizer options beside lr / weight decay: --opt-eps, --opt-betas, and the implementation: fused on CUDA
    (one kernel for all parameters), foreach (multi-tensor) elsewhere, for the Adam family."""
    kwargs = {}
    if args.opt_eps is not None:
        kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    if args.opt.lower() in ("adamw", "adam"):
        kwargs["fused" if device.type == "cuda" else "foreach"] = True
    return kwargs


def build_optimizer(args, model, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer factory: weight decay on the weights, not on 1-D parameters, biases and the model's
    ``no_weight_decay()`` names (the reference's two groups)."""
    return create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                               **optimizer_kwargs(args, device))


def build_scheduler(args, recipe, optimizer, updates_per_epoch: int):
    """(timm scheduler, epochs the loop runs). The DeiT loop stops at --epochs, timm's loop (LV-ViT) adds the
    cool-down epochs."""
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        cooldown_epochs=args.cooldown_epochs, patience_epochs=args.patience_epochs, decay_rate=args.decay_rate,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)
    return scheduler, (num_epochs if recipe.cooldown_adds_epochs else args.epochs)


def start_epoch_lr(scheduler, recipe, epoch: int) -> None:
    """Set the learning rate epoch ``epoch`` trains at: sched(epoch - recipe.lr_epoch_lag), not below sched(0)
    (the DeiT script's lag of one epoch; none for LV-ViT). No-op for a schedule stepped per update."""
    scheduler.step(max(epoch - recipe.lr_epoch_lag, 0))


def build_scaler(amp_dtype: Optional[torch.dtype]):
    """A GradScaler for fp16 autocast (CUDA), None otherwise (fp32 and bf16 need none)."""
    return torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None


@dataclass
class Ema:
    """The weight EMA: timm's ModelEmaV3 updated as the reference's ModelEma/ModelEmaV2 (decaying from the first
    update), or with timm's decay warm-up (``warmup``)."""

    ema: ModelEmaV3
    warmup: bool = False

    @property
    def module(self):
        return self.ema.module

    def update(self, model, num_updates: int):
        """Fold ``model``'s weights in after optimizer update number ``num_updates`` (1-based)."""
        self.ema.update(model, step=num_updates if self.warmup else None)


def build_ema(args, model) -> Optional[Ema]:
    if not args.model_ema:
        return None
    warmup = bool(getattr(args, "model_ema_warmup", False))
    return Ema(ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=warmup,
                          device="cpu" if args.model_ema_force_cpu else None), warmup)


def restore_gradient_slots(model, optimizer) -> int:
    """After a resume: a zero gradient for every parameter the optimizer holds state for (used before the
    checkpoint), None for the others; so a parameter used earlier but not drawn in the next step still takes its
    AdamW update (a zero gradient), as it would have in the uninterrupted run. Returns how many were given one."""
    given = 0
    for param in model.parameters():
        if param.requires_grad and param.grad is None and param in optimizer.state and optimizer.state[param]:
            param.grad = torch.zeros_like(param)
            given += 1
    return given
