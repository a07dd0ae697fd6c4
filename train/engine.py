"""The trainer's engine: the optimizer step around the SuperViT step, the epoch loop and the 12-sub-network
evaluation.

The SuperViT step itself (the 4 sub-networks' forwards, losses and summed backward passes) is
``supervit.training.supervit_step``; here follow what a training loop adds to it: unscale once, clip, the optimizer
step, the scaler and EMA updates, and the handling of non-finite losses (a step with a NaN/inf loss is skipped on
every rank; too many in a row stop the run).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.utils import dispatch_clip_grad
from tqdm import tqdm

from supervit.models.subnet import Subnet
from supervit.training import TEACHERS, ClassificationTask, kd_loss, sample_subnets, supervit_step, zero_grad

from . import faults
from .accounting import Throughput, format_summary
from .distributed import DistInfo, all_reduce_sum

__all__ = ["Amp", "ClassificationTask", "LOSS_NAMES", "NonFiniteLossError", "STEP_HOOKS", "StepContext", "Subnet",
           "TEACHERS", "evaluate", "kd_loss", "sample_subnets", "train_one_epoch", "train_step"]

# Inspection seam: callables run after every sub-network's backward with a dict (see ``train_step``).
STEP_HOOKS: list[Callable[[dict], None]] = []


@dataclass
class Amp:
    """Autocast settings of a run (``runner.resolve_amp``): the device type and the autocast dtype (None: fp32)."""

    device_type: str = "cpu"
    dtype: Optional[torch.dtype] = None  # None: fp32

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass
class StepContext:
    """Everything one optimizer step needs beside the batch."""

    model: nn.Module                 # what runs forward (the DDP wrapper when distributed)
    module: nn.Module                # the bare super-network (EMA, hooks)
    task: object
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    amp: Amp
    info: DistInfo
    teachers: tuple = TEACHERS["group"]
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    clip_each_backward: bool = False  # the reference: clip the partial sum after each backward (else once)
    ema: Optional[object] = None    # train.optimization.Ema
    max_nonfinite_steps: int = 20
    clock: Optional[object] = None    # train.accounting.StepClock: phase boundaries of each step (or None)
    nonfinite_streak: int = 0
    skipped_steps: int = 0


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for too many consecutive steps."""


def train_step(ctx: StepContext, images, targets, subnets: list[Subnet | None], num_updates: int) -> dict:
    """One optimizer step over the 4 sub-networks (None entries skipped, loss 0); returns {'losses': [4 floats],
    'stepped': bool}."""
    zero_grad(ctx.optimizer)  # the reference's: a never-used parameter keeps no gradient (AdamW skips it)

    def after_backward(event):
        if ctx.clip_each_backward and ctx.clip_grad:
            # on scaled gradients the threshold scales too: the same clip as on the unscaled ones (norm, value)
            scale = ctx.scaler.get_scale() if ctx.scaler is not None else 1.0
            dispatch_clip_grad(ctx.module.parameters(), ctx.clip_grad * scale, mode=ctx.clip_mode)
        for hook in STEP_HOOKS:
            hook({**event, "module": ctx.module})

    hooked = STEP_HOOKS or (ctx.clip_each_backward and ctx.clip_grad)
    result = supervit_step(ctx.model, images, targets, subnets, ctx.task, teachers=ctx.teachers,
                           amp_dtype=ctx.amp.dtype, scaler=ctx.scaler, on_backward=after_backward if hooked else None)
    losses_t = result.losses  # [4]
    finite = torch.isfinite(losses_t).all().to(torch.int32).reshape(1)
    if ctx.info.distributed:  # every rank takes the same skip decision
        finite = finite.to(ctx.info.device)
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    finite = bool(finite.item())
    _mark(ctx, "forward_backward")
    stepped = _optimizer_step(ctx, finite, num_updates)
    values = losses_t.tolist()
    if not finite:
        ctx.nonfinite_streak += 1
        if ctx.nonfinite_streak >= ctx.max_nonfinite_steps:
            bad = [f"(img_size={s[0]}, keep_ratio={s[1]:g}) loss {v}" for s, v in zip(subnets, values)
                   if s is not None and not math.isfinite(v)]
            raise NonFiniteLossError(f"non-finite loss for {ctx.nonfinite_streak} consecutive steps (limit "
                                     f"--max-nonfinite-steps {ctx.max_nonfinite_steps}); last at sub-network(s) "
                                     f"{', '.join(bad) or 'on another rank'}; the weights were not updated by "
                                     f"these steps and no checkpoint was written for this epoch")
    else:
        ctx.nonfinite_streak = 0
    return {"losses": values, "stepped": stepped}


def _optimizer_step(ctx: StepContext, finite: bool, num_updates: int) -> bool:
    """Unscale once (after the 4 backward passes), clip, step, update the scaler and the EMA."""
    clip_now = ctx.clip_grad and not ctx.clip_each_backward
    if ctx.scaler is not None:
        if clip_now:
            ctx.scaler.unscale_(ctx.optimizer)
            dispatch_clip_grad(ctx.module.parameters(), ctx.clip_grad, mode=ctx.clip_mode)
        scale_before = ctx.scaler.get_scale()
        ctx.scaler.step(ctx.optimizer)  # skipped by the scaler when gradients hold inf/NaN
        ctx.scaler.update()
        stepped = ctx.scaler.get_scale() >= scale_before
    elif finite:
        if clip_now:
            dispatch_clip_grad(ctx.module.parameters(), ctx.clip_grad, mode=ctx.clip_mode)
        ctx.optimizer.step()
        stepped = True
    else:
        stepped = False
    _mark(ctx, "optimizer")
    if not stepped:
        ctx.skipped_steps += 1
        ctx.optimizer.zero_grad(set_to_none=False)
    elif ctx.ema is not None:
        ctx.ema.update(ctx.module, num_updates)
    _mark(ctx, "ema")
    return stepped


def _mark(ctx: StepContext, phase: str):
    if ctx.clock is not None:
        ctx.clock.mark(phase)


LOSS_NAMES = ("loss_full", "loss_kd_full", "loss_small", "loss_kd_small")


def train_one_epoch(ctx: StepContext, loader, epoch: int, rng: random.Random, scheduler=None,
                    updates_per_epoch: int = 0, max_steps: int = 0, progress: bool = True, allowed=None,
                    batch_transform=None, profiler=None) -> dict:
    """One pass over ``loader``; returns the mean of each of the 4 losses, their total, the lr, step counts, time
    and the throughput accounting (``train.accounting``).

    ``allowed``: the sub-networks training may draw (``--subnets``); None = all of the model's.
    ``batch_transform``: None or ``(images, targets) -> (images, targets)``, applied on the device right after the
    host-to-device copy (a device-side data path); its time counts as data time.
    ``profiler``: a ``train.accounting.StepProfiler`` (``--profile-steps``) or None.
    """
    ctx.model.train()
    sums = torch.zeros(4, dtype=torch.float64)
    steps = 0
    total = len(loader) if not max_steps else min(len(loader), max_steps)
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}", disable=not (progress and ctx.info.is_main), leave=True,
               dynamic_ncols=True, mininterval=1.0)
    meter = Throughput(ctx.module, ctx.info.device, ctx.amp.dtype, ctx.info.world_size)
    ctx.clock = meter.clock
    start = time.time()
    batches = iter(loader)
    for i in range(total):
        meter.clock.start()
        try:
            images, targets = next(batches)
        except StopIteration:
            break
        faults.inject("step", epoch=epoch, step=i, rank=ctx.info.rank)  # test-only; inert unless configured
        num_updates = epoch * updates_per_epoch + i
        if scheduler is not None:
            scheduler.step_update(num_updates)
        images = images.to(ctx.info.device, non_blocking=True)
        targets = _to_device(targets, ctx.info.device)
        if batch_transform is not None:
            images, targets = batch_transform(images, targets)
        meter.clock.mark("data")
        if profiler is not None:
            profiler.before_step(i)
        subnets = sample_subnets(rng, ctx.module.img_sizes, ctx.module.keep_ratios, allowed)
        out = train_step(ctx, images, targets, subnets, num_updates + 1)
        meter.clock.end_step()
        meter.count(subnets, images.shape[0])
        if profiler is not None:
            profiler.after_step()
        sums += torch.tensor(out["losses"], dtype=torch.float64).nan_to_num(0.0)
        steps += 1
        bar.update(1)
        if steps % 10 == 0 or steps == total:
            bar.set_postfix_str(f"total loss {sums.sum().item() / steps:.3f}, lr "
                                f"{ctx.optimizer.param_groups[0]['lr']:.2e} | {format_summary(meter.summary())}",
                                refresh=False)
    if profiler is not None:
        profiler.finish()
    ctx.clock = None
    accounting = meter.summary()
    bar.set_postfix_str(f"total loss {sums.sum().item() / max(steps, 1):.3f} | {format_summary(accounting)}")
    bar.close()
    means = (sums / max(steps, 1)).tolist()
    result = dict(zip(LOSS_NAMES, means))
    result.update(loss=sum(means), lr=ctx.optimizer.param_groups[0]["lr"], steps=steps,
                  skipped_steps=ctx.skipped_steps, train_time_s=time.time() - start, **accounting)
    return result


def _to_device(targets, device):
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    if isinstance(targets, (tuple, list)):
        return type(targets)(_to_device(t, device) for t in targets)
    if isinstance(targets, dict):
        return {k: _to_device(v, device) for k, v in targets.items()}
    return targets


@torch.no_grad()
def evaluate(model: nn.Module, loader, subnets: list[Subnet], amp: Amp, info: DistInfo, reduce: bool,
             progress: bool = True) -> dict:
    """Top-1/top-5 (%) of every sub-network on the whole loader, each batch through all of them.

    Keys ``{s}_{r}_acc1`` / ``{s}_{r}_acc5`` (e.g. ``224_1_acc1``), ``loss`` (cross-entropy of the largest full
    sub-network) and ``num_samples``. ``reduce``: sum the counts over ranks (each rank saw a shard).
    """
    model.eval()
    device = info.device
    correct = torch.zeros(len(subnets), 2, dtype=torch.float64, device=device)  # [subnets, (top1, top5)]
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    count = torch.zeros(1, dtype=torch.float64, device=device)
    full_index = subnets.index((model.img_sizes[-1], 1.0)) if (model.img_sizes[-1], 1.0) in subnets else 0
    bar = tqdm(loader, desc="eval", disable=not (progress and info.is_main), leave=False, dynamic_ncols=True)
    for batch in bar:
        if batch is None:  # every image of the batch was unreadable (and skipped)
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        for j, (size, ratio) in enumerate(subnets):
            with amp.autocast():
                logits = model(images, img_size=size, keep_ratio=ratio)
            logits = logits.float()
            topk = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # [B, 5]
            hits = topk.eq(targets.unsqueeze(1))
            correct[j, 0] += hits[:, 0].sum()
            correct[j, 1] += hits.any(dim=1).sum()
            if j == full_index:
                loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        count += targets.shape[0]
    if reduce:
        all_reduce_sum(correct, info)
        all_reduce_sum(loss_sum, info)
        all_reduce_sum(count, info)
    n = max(count.item(), 1.0)
    metrics = {}
    for j, (size, ratio) in enumerate(subnets):
        key = Subnet(int(size), float(ratio)).key
        metrics[f"{key}_acc1"] = 100.0 * correct[j, 0].item() / n
        metrics[f"{key}_acc5"] = 100.0 * correct[j, 1].item() / n
    metrics["loss"] = loss_sum.item() / n
    metrics["num_samples"] = int(count.item())
    return metrics
