"""The run both scripts share: set-up, resume, the epoch loop (train, evaluate, checkpoint, log), eval-only mode."""
from __future__ import annotations

import os
import random
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from supervit.models import convert_plain_vit_state_dict, extract_state_dict, load_checkpoint, read_checkpoint

from . import checkpointing, data as data_lib, report
from .distributed import all_reduce_sum, barrier, cleanup, epoch_seed, init_distributed, seed_everything
from .engine import Amp, StepContext, evaluate, subnet_key, train_one_epoch


def log(info, *parts):
    if info.is_main:
        print(*parts, flush=True)


def resolve_amp(args, device: torch.device) -> Amp:
    """fp16 + GradScaler on CUDA when AMP is on; on CPU fp32 unless --amp-dtype bfloat16."""
    choice = (args.amp_dtype or "auto").lower()
    if choice == "auto":
        dtype = torch.float16 if (device.type == "cuda" and args.amp) else None
    else:
        dtype = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float32": None, "fp32": None}[choice]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("--amp-dtype float16 needs CUDA; on CPU use bfloat16 or float32")
    return Amp(device.type, dtype)


def finetune_from(model, path: str, info):
    """Initialise from a plain DeiT-S / LV-ViT-S (or SuperViT) checkpoint: each position table from the plain
    ``pos_embed`` (bicubic); classifier weights of another class count are dropped."""
    state = extract_state_dict(read_checkpoint(path))
    if "pos_embed" in state and "pos_embed_list.0" not in state:
        state = convert_plain_vit_state_dict(state, model)
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in dropped:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    log(info, f"finetune: loaded {path}; dropped (shape) {dropped}, missing {result.missing_keys[:8]}, "
              f"unexpected {result.unexpected_keys[:8]}")


def eval_loader(dataset, info, args):
    sampler = data_lib.eval_sampler(dataset, info, args.dist_eval)
    batch = getattr(args, "eval_batch_size", None) or int(1.5 * args.batch_size)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=args.num_workers,
                                       pin_memory=args.pin_mem and info.device.type == "cuda", drop_last=False,
                                       collate_fn=data_lib.collate_skip_none)  # unreadable images dropped


def skipped_since(info, marks, *datasets) -> list[int]:
    """Unreadable images each of ``datasets`` skipped since ``marks`` (their earlier counts), summed over ranks."""
    counts = torch.tensor([data_lib.skipped_images(d) - m for d, m in zip(datasets, marks)], dtype=torch.float64)
    return [int(c) for c in all_reduce_sum(counts.to(info.device), info).tolist()]


def log_skipped(info, counts: list[int], where: str):
    if any(counts):
        log(info, f"skipped {counts[0]} unreadable training and {counts[-1]} evaluation image(s) {where} (paths in "
                  "the warnings on stderr; --strict-data makes an unreadable image an error)")


def print_table(info, model, metrics: dict, title: str):
    rows = report.result_rows(metrics, model)
    log(info, f"\n{title}\n" + report.format_table(rows) + "\n")
    return rows


def run_eval_only(args, recipe, model, info, amp):
    """``--eval --resume CKPT``: only the val set and a checkpoint; prints and writes the 12-sub-network table."""
    if not args.resume:
        raise ValueError("--eval needs --resume CKPT (a checkpoint to evaluate)")
    ckpt = read_checkpoint(args.resume)
    has_ema = any(isinstance(ckpt.get(k), dict) for k in ("model_ema", "state_dict_ema"))
    use_ema = recipe.eval_only_prefers_ema and has_ema
    load_checkpoint(model, args.resume, use_ema=use_ema)
    eval_set = data_lib.guard_images(recipe.eval_set(model), strict=args.strict_data, drop=True)
    loader = eval_loader(eval_set, info, args)
    metrics = evaluate(model, loader, model.subnets(), amp, info, reduce=args.dist_eval and info.distributed,
                       progress=not args.no_progress)
    log_skipped(info, [0] + skipped_since(info, [0], eval_set), "in the evaluation")
    title = f"{os.path.basename(args.resume)} ({'EMA' if use_ema else 'model'} weights), " \
            f"{metrics['num_samples']} images"
    rows = print_table(info, model, metrics, title)
    if args.output_dir and info.is_main:
        report.write_results(args.output_dir, rows, {"checkpoint": os.path.abspath(args.resume), "ema": use_ema,
                                                     "epoch": ckpt.get("epoch"), "title": title,
                                                     "num_samples": metrics["num_samples"]})
    return metrics


def run(args, recipe):
    """Train (or with ``--eval`` evaluate) as ``args`` say; returns the last evaluation metrics."""
    info = init_distributed(args.device, getattr(args, "local_rank", None))
    try:
        return _run(args, recipe, info)
    finally:
        cleanup()


def _run(args, recipe, info):
    seed_everything(args.seed)  # the same initial weights on every rank (EMA copies included)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = recipe.build_model().to(info.device)
    if args.input_size and args.input_size != model.img_sizes[-1]:
        raise ValueError(f"--input-size {args.input_size} must equal the model's largest image size "
                         f"{model.img_sizes[-1]} (the data pipeline crops to it; the model resizes inside)")
    amp = resolve_amp(args, info.device)
    if args.finetune:
        finetune_from(model, args.finetune, info)
    if args.eval:
        return run_eval_only(args, recipe, model, info, amp)

    train_set, collate = recipe.train_set(model)
    train_set = data_lib.guard_images(train_set, strict=args.strict_data)  # unreadable images: skipped or error
    eval_set = data_lib.guard_images(recipe.eval_set(model), strict=args.strict_data, drop=True)
    if hasattr(train_set, "classes") and hasattr(eval_set, "classes"):
        data_lib.check_same_classes(train_set, eval_set)
    if len(getattr(train_set, "classes", [])) not in (0, model.num_classes):
        raise ValueError(f"the data set has {len(train_set.classes)} classes but the model {model.num_classes}; "
                         "pass --nb-classes/--num-classes")
    sampler = data_lib.train_sampler(train_set, info, args.repeated_aug, args.seed)
    loader = data_lib.make_loader(train_set, sampler, args.batch_size, args.num_workers,
                                  args.pin_mem and info.device.type == "cuda", True, collate)
    val_loader = eval_loader(eval_set, info, args)
    updates_per_epoch = len(loader) if not args.max_steps_per_epoch else min(len(loader), args.max_steps_per_epoch)

    lr = args.lr
    if recipe.name == "deit" and not args.unscale_lr:
        lr = args.lr * args.batch_size * info.world_size / 512.0  # DeiT: lr 5e-4 per 512 images
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **_opt_kwargs(args))
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        cooldown_epochs=args.cooldown_epochs, patience_epochs=args.patience_epochs, decay_rate=args.decay_rate,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)
    total_epochs = num_epochs if recipe.name == "lvvit" else args.epochs  # timm's loop adds the cool-down
    scaler = torch.amp.GradScaler("cuda") if amp.dtype is torch.float16 else None
    ema = None
    if args.model_ema:
        ema = ModelEmaV3(model, decay=args.model_ema_decay, device="cpu" if args.model_ema_force_cpu else None)
    start_epoch, best = args.start_epoch, (None, None)
    resume_path = args.resume or (checkpointing.find_autoresume(args.output_dir, recipe.ckpt_format)
                                  if args.autoresume else None)
    if resume_path:
        state = checkpointing.resume(resume_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler, ema=ema)
        start_epoch, best = state["start_epoch"], (state["best_metric"], state["best_epoch"])
        log(info, f"resumed from {resume_path}: continuing at epoch {start_epoch}")

    ddp_model = model
    if info.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda"
                                            else None, find_unused_parameters=True)
    ctx = StepContext(model=ddp_model, module=model, task=recipe.build_task(model), optimizer=optimizer,
                      scaler=scaler, amp=amp, info=info, teachers=recipe.teachers(), clip_grad=args.clip_grad,
                      clip_mode=args.clip_mode, ema=ema, max_nonfinite_steps=args.max_nonfinite_steps)
    key = f"{subnet_key(model.img_sizes[-1], 1.0)}_acc1"
    jsonl = report.JsonlLog(os.path.join(args.output_dir, "log.jsonl") if args.output_dir and info.is_main else None)
    n_params = sum(p.numel() for p in model.parameters())
    log(info, f"{recipe.name}: {type(model).__name__} {n_params / 1e6:.2f}M params, sub-networks "
              f"{model.img_sizes} x {model.keep_ratios}; {len(train_set)} train / {len(eval_set)} eval images; "
              f"{info.world_size} process(es) on {info.device}, batch {args.batch_size}/process, "
              f"{updates_per_epoch} steps/epoch, epochs {start_epoch}..{total_epochs - 1}, "
              f"precision {amp.dtype or torch.float32}, lr {lr:.3g}")
    metrics, run_start = {}, time.time()
    stop_epoch = min(total_epochs, start_epoch + args.epochs_this_run) if args.epochs_this_run else total_epochs
    for epoch in range(start_epoch, stop_epoch):
        seed_everything(epoch_seed(args.seed, info.rank, epoch))
        rng = random.Random(epoch_seed(args.seed, info.rank, epoch))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        scheduler.step(epoch)
        marks = (data_lib.skipped_images(train_set), data_lib.skipped_images(eval_set))
        stats = train_one_epoch(ctx, loader, epoch, rng, scheduler=scheduler, updates_per_epoch=updates_per_epoch,
                                max_steps=args.max_steps_per_epoch, progress=not args.no_progress)
        full_table = epoch == total_epochs - 1 or (args.eval_interval and (epoch + 1) % args.eval_interval == 0)
        eval_model = ema.module if (recipe.eval_uses_ema and ema is not None) else model
        subnets = model.subnets() if full_table else [(model.img_sizes[-1], 1.0)]
        metrics = evaluate(eval_model, val_loader, subnets, amp, info, reduce=args.dist_eval and info.distributed,
                           progress=not args.no_progress)
        skipped = skipped_since(info, marks, train_set, eval_set)
        log_skipped(info, skipped, f"in epoch {epoch + 1}")
        stats["skipped_images"], metrics["skipped_images"] = skipped
        is_best = best[0] is None or metrics[key] > best[0]
        if is_best:
            best = (metrics[key], epoch)
        if args.output_dir and info.is_main:
            checkpointing.save_epoch(recipe.ckpt_format, args.output_dir, is_best, model=model, optimizer=optimizer,
                                     scheduler=scheduler, scaler=scaler, ema=ema, epoch=epoch, args=args,
                                     metric=metrics[key], best=best)
        barrier(info)
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()},
                  **{f"test_{k}": v for k, v in metrics.items()}, "best_" + key: best[0],
                  "elapsed_s": time.time() - run_start}
        jsonl.write(record)
        log(info, f"epoch {epoch + 1}/{total_epochs}: loss {stats['loss_full']:.3f} (kd {stats['loss_kd_full']:.3f},"
                  f" small {stats['loss_small']:.3f}, kd {stats['loss_kd_small']:.3f}) lr {stats['lr']:.2e} | "
                  f"{key} {metrics[key]:.2f}% (best {best[0]:.2f}%) | {stats['train_time_s']:.0f}s train, "
                  f"{time.time() - run_start:.0f}s total")
        if full_table:
            rows = print_table(info, model, metrics, f"epoch {epoch + 1}: top-1 % (GMACs) of every sub-network, "
                                                     f"{metrics['num_samples']} held-out images")
            if args.output_dir and info.is_main:
                report.write_results(args.output_dir, rows, {
                    "epoch": epoch, "ema": eval_model is not model,
                    "title": f"SuperViT {recipe.name}{' demo (digits)' if args.demo else ''}: epoch {epoch + 1}",
                    "num_samples": metrics["num_samples"], "train_time_s": time.time() - run_start,
                    "best_" + key: best[0], "world_size": info.world_size})
    if args.output_dir and info.is_main and stop_epoch > start_epoch:
        last_ckpt = os.path.join(args.output_dir, checkpointing.FORMATS[recipe.ckpt_format]["last"])
        script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "train/main_*.py"
        log(info, f"done in {time.time() - run_start:.0f}s. Results: {args.output_dir}/results.json, results.csv, "
                  f"accuracy_vs_gmacs.png, log.jsonl; checkpoint {last_ckpt}\nre-evaluate with: python {script}"
                  f"{' --demo' if args.demo else ''} --eval --resume {last_ckpt}")
    if args.dump_rank_weights and args.output_dir:
        torch.save(model.state_dict(), os.path.join(args.output_dir, f"weights_rank{info.rank}.pth"))
    return metrics


def _opt_kwargs(args) -> dict:
    kwargs = {}
    if args.opt_eps is not None:
        kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    return kwargs
