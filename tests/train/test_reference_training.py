"""Our training against a hand-written statement of what the reference scripts do (SuperViT's main_deit.py +
deit/engine.py and main_lvvit.py, on torch 1.10 and the timm 0.4.5 they ship), not against our code calling itself:

* the learning rate of every epoch of both recipes (warm-up, cosine, LV-ViT's cool-down, a resume in the middle):
  timm 0.4.5's CosineLRScheduler written out, stepped where each reference loop steps it;
* the first 3 optimizer steps of a fresh run and the first step after a resume on a tiny model: losses, gradients,
  parameters, AdamW state (incl. the step counts of position tables not drawn yet) and the EMA, against the
  reference loop written out: torch 1.10's ``zero_grad()`` (existing gradients zeroed, missing ones left None),
  4 forwards with backward each, torch 1.10's AdamW (parameters without gradient skipped), timm's ``ModelEma``.

The resumed step is compared with the uninterrupted reference run (the run that produced the published numbers);
the reference script's own resume drops the gradient slots (see docs/reference.md).
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from supervit.models import SuperDeiT
from train import checkpointing, main_deit, main_lvvit, optimization
from train.distributed import DistInfo
from train.engine import Amp, StepContext, train_step
from train.recipes import DeiTRecipe, LVViTRecipe

from trainer_helpers import CLASSES, TINY_IMAGENET_MODEL, as_json, write_image_folder

# --------------------------------------------------------------------------------------------------------------
# the reference schedule, written out
# --------------------------------------------------------------------------------------------------------------


def reference_cosine(t, base, warmup_lr, warmup, t_initial, min_lr):
    """timm 0.4.5 CosineLRScheduler._get_lr (t_mul 1, decay_rate 1, cycle_limit 1, warmup_prefix False)."""
    if t < warmup:
        return warmup_lr + t * (base - warmup_lr) / warmup
    if t // t_initial < 1:
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (t % t_initial) / t_initial))
    return min_lr


def reference_deit_lrs(epochs, start_epoch=0, **sched):
    """main_deit.py: the constructor sets the warm-up start; ``lr_scheduler.step(epoch)`` runs AFTER each epoch; a
    resume restores the optimizer's lr (the value stepped after the checkpoint's epoch)."""
    lr = sched["warmup_lr"] if sched["warmup"] else sched["base"]
    if start_epoch:
        lr = reference_cosine(start_epoch - 1, **sched)
    lrs = {}
    for epoch in range(start_epoch, epochs):
        lrs[epoch] = lr
        lr = reference_cosine(epoch, **sched)
    return lrs


def reference_lvvit_lrs(epochs, start_epoch=0, **sched):
    """main_lvvit.py: the constructor sets the warm-up start; a resume calls ``lr_scheduler.step(start_epoch)``;
    ``lr_scheduler.step(epoch + 1)`` runs after each epoch (``step_update`` is a no-op for an epoch schedule)."""
    lr = sched["warmup_lr"] if sched["warmup"] else sched["base"]
    if start_epoch:
        lr = reference_cosine(start_epoch, **sched)
    lrs = {}
    for epoch in range(start_epoch, epochs):
        lrs[epoch] = lr
        lr = reference_cosine(epoch + 1, **sched)
    return lrs


def _our_lrs(args, recipe, epochs, start_epoch=0, state=None):
    """The lr our trainer sets for each epoch (optimization's builders and epoch rule, as the runner uses them)."""
    model = torch.nn.Linear(4, 4)
    optimizer = optimization.build_optimizer(args, model, optimization.scaled_lr(args, recipe, 4), torch.device("cpu"))
    scheduler, total = optimization.build_scheduler(args, recipe, optimizer, updates_per_epoch=100)
    if state is not None:  # a resume: the saved optimizer and scheduler
        optimizer.load_state_dict(state[0])
        scheduler.load_state_dict(state[1])
    lrs = {}
    for epoch in range(start_epoch, epochs):
        optimization.start_epoch_lr(scheduler, recipe, epoch)
        lrs[epoch] = optimizer.param_groups[0]["lr"]
        if epoch == 150 and state is None:
            saved = (copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict()))
    return lrs, total, saved if state is None else None


@pytest.mark.parametrize("recipe_name", ["deit", "lvvit"])
def test_lr_of_every_epoch_equals_the_reference(tmp_path, recipe_name):
    if recipe_name == "deit":  # the paper's run: 4 GPUs x 256 images, lr 5e-4 per 512 images
        args = main_deit.parse_args(["--data-path", str(tmp_path), "--batch-size", "256"])
        recipe, reference, base = DeiTRecipe(args), reference_deit_lrs, 5e-4 * 1024 / 512
        epochs = 300
    else:
        args = main_lvvit.parse_args([str(tmp_path), "-b", "256"])
        recipe, reference, base = LVViTRecipe(args), reference_lvvit_lrs, 1.6e-3
        epochs = 310  # 300 cosine + 10 cool-down
    sched = dict(base=base, warmup_lr=1e-6, warmup=5, t_initial=300, min_lr=1e-5)
    ours, total, saved = _our_lrs(args, recipe, epochs)
    assert total == epochs
    expected = reference(epochs, **sched)
    assert list(ours) == list(expected)
    for epoch in expected:
        assert ours[epoch] == pytest.approx(expected[epoch], rel=1e-12, abs=1e-15), epoch
    if recipe_name == "deit":
        assert ours[0] == ours[1] == 1e-6 and ours[6] == pytest.approx(reference_cosine(5, **sched))
    else:
        assert ours[0] == 1e-6 and ours[305] == 1e-5  # cool-down at the floor
    resumed, _, _ = _our_lrs(args, recipe, epochs, start_epoch=151, state=saved)
    expected_resumed = reference(epochs, start_epoch=151, **sched)
    assert list(resumed) == list(expected_resumed)
    for epoch in expected_resumed:
        assert resumed[epoch] == pytest.approx(expected_resumed[epoch], rel=1e-12), epoch


def test_lr_recorded_by_a_run_and_its_resume_follow_the_reference(tmp_path):
    data = write_image_folder(tmp_path / "imagenet", per_class=1)
    argv = ["--data-path", data, "--nb-classes", str(len(CLASSES)), "--model-kwargs", as_json(TINY_IMAGENET_MODEL),
            "--batch-size", "2", "--epochs", "5", "--warmup-epochs", "2", "--lr", "1e-3", "--unscale-lr",
            "--max-steps-per-epoch", "1", "--num_workers", "0", "--no-progress", "--device", "cpu",
            "--eval-interval", "0", "--threads", "1", "--subnets", "80:1,80:0.5,32:1,32:0.5",
            "--output", str(tmp_path / "run")]
    main_deit.main(argv + ["--epochs-this-run", "3"])
    main_deit.main(argv + ["--autoresume"])
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    expected = reference_deit_lrs(5, base=1e-3, warmup_lr=1e-6, warmup=2, t_initial=5, min_lr=1e-5)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["train_lr"] for r in records] == pytest.approx([expected[e] for e in range(5)], rel=1e-12)


# --------------------------------------------------------------------------------------------------------------
# the reference step, written out
# --------------------------------------------------------------------------------------------------------------

TINY = dict(img_sizes=(16, 20, 24, 28), patch_size=4, in_chans=1, embed_dim=16, depth=4, num_heads=2,
            num_classes=10, prune_layers=(1, 2, 3), drop_path_rate=0.0)
# per step: [(L, 1), (L, r1), (s, 1), (s, r2)]; size 24 is never drawn; size 20 is drawn in step 2 only
STEPS = [[(28, 1.0), (28, 0.5), (16, 1.0), (16, 0.7)],
         [(28, 1.0), (28, 0.7), (20, 1.0), (20, 0.5)],
         [(28, 1.0), (28, 0.5), (16, 1.0), (16, 0.5)],
         [(28, 1.0), (28, 0.7), (16, 1.0), (16, 0.7)]]  # the step after the resume
LR, EMA_DECAY, SMOOTHING, BETAS, EPS, WD, CLIP = 2e-3, 0.9, 0.1, (0.9, 0.999), 1e-8, 0.05, 0.05


class ReferenceRun:
    """The reference loop on a copy of the model, written out with torch 1.10 / timm 0.4.5 semantics."""

    def __init__(self, model, teacher_rule: str, clip: str):
        self.model = model
        self.teacher_rule, self.clip = teacher_rule, clip
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        skip = {"pos_embed_list", "cls_token"}  # the reference model's no_weight_decay(); names match exactly
        self.decay = {n: not (p.dim() == 1 or n.endswith(".bias") or n in skip) for n, p in model.named_parameters()}
        self.state = {}  # name -> {"step", "exp_avg", "exp_avg_sq"}

    def smoothed_ce(self, logits, target):  # timm LabelSmoothingCrossEntropy(0.1)
        logprobs = F.log_softmax(logits, dim=-1)
        nll = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
        return ((1 - SMOOTHING) * nll + SMOOTHING * -logprobs.mean(dim=-1)).mean()

    def clip_grad_norm(self):  # torch.nn.utils.clip_grad_norm_(params, CLIP), norm 2
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = torch.norm(torch.stack([torch.norm(g, 2) for g in grads]), 2)
        coef = CLIP / (total + 1e-6)
        if coef < 1:
            for g in grads:
                g.mul_(coef)

    def step(self, images, labels, subnets):
        for p in self.model.parameters():  # torch 1.10 optimizer.zero_grad(): set_to_none=False
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()
        losses = []
        for index, (size, ratio) in enumerate(subnets):
            out = self.model(images, img_size=size, keep_ratio=ratio)
            if index in (0, 2):  # full keep: the supervised loss; it teaches the next one
                loss = self.smoothed_ce(out, labels)
                if index == 0 or self.teacher_rule == "group":
                    teacher = F.softmax(out.detach(), dim=1)
            else:
                loss = F.kl_div(F.log_softmax(out, dim=1), teacher, reduction="batchmean")
            loss.backward()
            if self.clip == "each":
                self.clip_grad_norm()
            losses.append(loss.item())
        if self.clip == "once":
            self.clip_grad_norm()
        with torch.no_grad():
            for name, p in self.model.named_parameters():  # torch 1.10 AdamW, parameters without grad skipped
                if p.grad is None:
                    continue
                st = self.state.setdefault(name, {"step": 0, "exp_avg": torch.zeros_like(p),
                                                  "exp_avg_sq": torch.zeros_like(p)})
                st["step"] += 1
                p.mul_(1 - LR * (WD if self.decay[name] else 0.0))
                st["exp_avg"].mul_(BETAS[0]).add_(p.grad, alpha=1 - BETAS[0])
                st["exp_avg_sq"].mul_(BETAS[1]).addcmul_(p.grad, p.grad, value=1 - BETAS[1])
                denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - BETAS[1] ** st["step"])).add_(EPS)
                p.addcdiv_(st["exp_avg"], denom, value=-LR / (1 - BETAS[0] ** st["step"]))
            for k, v in self.model.state_dict().items():  # timm ModelEma.update
                self.ema[k].copy_(self.ema[k] * EMA_DECAY + (1.0 - EMA_DECAY) * v)
        return losses


def _our_parts(tmp_path, teacher_rule, clip):
    argv = ["--data-path", str(tmp_path), "--lr", str(LR), "--unscale-lr", "--warmup-epochs", "0", "--mixup", "0",
            "--cutmix", "0", "--smoothing", str(SMOOTHING), "--model-ema", "--model-ema-decay", str(EMA_DECAY),
            "--kd-teacher", teacher_rule, "--weight-decay", str(WD), "--epochs", "300"]
    if clip != "none":
        argv += ["--clip-grad", str(CLIP)] + (["--clip-each-backward"] if clip == "each" else [])
    args = main_deit.parse_args(argv)
    return args, DeiTRecipe(args)


def _our_context(args, recipe, model):
    optimizer = optimization.build_optimizer(args, model, LR, torch.device("cpu"))
    scheduler, _ = optimization.build_scheduler(args, recipe, optimizer, updates_per_epoch=10)
    optimization.start_epoch_lr(scheduler, recipe, 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR)
    ema = optimization.build_ema(args, model)
    ctx = StepContext(model=model, module=model, task=recipe.build_task(model), optimizer=optimizer, scaler=None,
                      amp=Amp("cpu", None), info=DistInfo(), teachers=recipe.teachers(), clip_grad=args.clip_grad,
                      clip_mode=args.clip_mode, clip_each_backward=args.clip_each_backward, ema=ema)
    return ctx, scheduler


def _batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)


# fp32; our AdamW runs foreach kernels, the reference one tensor at a time, so the two round differently (about
# 1e-8 after one step). Adam turns a gradient at rounding level (the key bias's gradient is zero in exact arithmetic)
# into a step of about lr, so the parameters compare within lr / 2000: far below what each difference from the
# reference made (an AdamW bias correction of a skipped step: 0.26 lr; a copied first EMA: the whole update).
CLOSE = dict(rtol=1e-5, atol=1e-7)
PARAMS_CLOSE = dict(rtol=1e-5, atol=LR / 2000)


def _assert_same(ctx, ref: ReferenceRun, losses, ref_losses):
    assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-7)
    params = dict(ctx.module.named_parameters())
    for name, p in ref.model.named_parameters():
        ours = params[name]
        assert (ours.grad is None) == (p.grad is None), f"gradient of {name}: ours {ours.grad is None}"
        if p.grad is not None:
            torch.testing.assert_close(ours.grad, p.grad, **CLOSE, msg=f"gradient of {name}")
        torch.testing.assert_close(ours.detach(), p.detach(), **PARAMS_CLOSE, msg=f"parameter {name}")
        state = ctx.optimizer.state.get(ours, {})
        if name not in ref.state:
            assert not state, f"AdamW state for {name}, never used"
            continue
        assert int(state["step"]) == ref.state[name]["step"], f"AdamW step count of {name}"
        torch.testing.assert_close(state["exp_avg"], ref.state[name]["exp_avg"], **CLOSE, msg=f"exp_avg {name}")
        torch.testing.assert_close(state["exp_avg_sq"], ref.state[name]["exp_avg_sq"], rtol=1e-5, atol=1e-12,
                                   msg=f"exp_avg_sq {name}")
    ema = ctx.ema.module.state_dict()
    for key, value in ref.ema.items():
        torch.testing.assert_close(ema[key], value, **PARAMS_CLOSE, msg=f"EMA {key}")


@pytest.mark.parametrize("teacher_rule,clip", [("group", "none"), ("full", "none"), ("group", "once"),
                                               ("group", "each")])
def test_first_steps_and_the_step_after_a_resume_equal_the_reference(tmp_path, teacher_rule, clip):
    args, recipe = _our_parts(tmp_path, teacher_rule, clip)
    torch.manual_seed(0)
    model = SuperDeiT(**TINY)
    initial = copy.deepcopy(model.state_dict())
    ref = ReferenceRun(copy.deepcopy(model), teacher_rule, "none" if clip == "none" else clip)
    ctx, scheduler = _our_context(args, recipe, model)
    for step, subnets in enumerate(STEPS[:3]):
        images, labels = _batch(step)
        out = train_step(ctx, images, labels, subnets, step + 1)
        assert out["stepped"]
        _assert_same(ctx, ref, out["losses"], ref.step(images, labels, subnets))
    # what distinguishes the reference: the table of size 24 was never used (no gradient, no state, unchanged)...
    tables = {size: ctx.module.pos_embed_list[i] for i, size in enumerate(TINY["img_sizes"])}
    assert tables[24].grad is None and not ctx.optimizer.state.get(tables[24])
    assert torch.equal(tables[24].detach(), initial["pos_embed_list.2"])
    # ... and the one of size 20, used in step 2 only, was updated in step 3 with a zero gradient
    assert int(ctx.optimizer.state[tables[20]]["step"]) == 2 and not tables[20].grad.any()

    # resume: checkpoint after step 3, a new process (other initial weights), then step 4
    path = tmp_path / "checkpoint.pth"
    checkpointing.atomic_save(checkpointing.build_checkpoint(
        "deit", model=ctx.module, optimizer=ctx.optimizer, scheduler=scheduler, scaler=None, ema=ctx.ema, epoch=0,
        args=args, metric=0.0, best=(0.0, 0)), str(path))
    torch.manual_seed(123)
    fresh = SuperDeiT(**TINY)
    ctx2, scheduler2 = _our_context(args, recipe, fresh)
    checkpointing.resume(str(path), model=fresh, optimizer=ctx2.optimizer, scheduler=scheduler2, ema=ctx2.ema)
    optimization.restore_gradient_slots(fresh, ctx2.optimizer)
    images, labels = _batch(3)
    out = train_step(ctx2, images, labels, STEPS[3], 4)
    _assert_same(ctx2, ref, out["losses"], ref.step(images, labels, STEPS[3]))
    resumed_tables = {size: fresh.pos_embed_list[i] for i, size in enumerate(TINY["img_sizes"])}
    assert int(ctx2.optimizer.state[resumed_tables[20]]["step"]) == 3  # not drawn in step 4, still updated
    assert not ctx2.optimizer.state.get(resumed_tables[24])
