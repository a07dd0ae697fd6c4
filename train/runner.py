"""The run both scripts share: set-up, resume, the epoch loop (train, evaluate, checkpoint, log), eval-only mode."""
from __future__ import annotations

import os
import random
import shlex
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from supervit.models import format_subnets, largest_full, load_weights, model_config, pick_weights

from . import checkpointing, compiling, data as data_lib, digits, model_source, optimization, report
from .cli import UsageError
from .distributed import all_reduce_sum, barrier, cleanup, epoch_seed, init_distributed, seed_everything
from .accounting import StepProfiler, format_summary
from .engine import LOSS_NAMES, Amp, StepContext, evaluate, train_one_epoch


def log(info, *parts):
    if info.is_main:
        print(*parts, flush=True)


def resolve_amp(args, device: torch.device) -> Amp:
    """On CUDA with AMP on: bf16 autocast where the GPU has it (no scaler), else fp16 + GradScaler (the reference);
    on CPU fp32 unless --amp-dtype bfloat16."""
    choice = (args.amp_dtype or "auto").lower()
    if choice == "auto":
        dtype = None
        if device.type == "cuda" and args.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float32": None, "fp32": None}[choice]
    if dtype is torch.float16 and device.type != "cuda":
        raise UsageError("--amp-dtype float16 needs CUDA; on CPU use bfloat16 or float32")
    return Amp(device.type, dtype)


def finetune_from(model, path: str, info, allow_partial: bool = False, target: str = "the model"):
    """Initialise from a plain DeiT-S / LV-ViT-S (or SuperViT) checkpoint: each position table from the plain
    ``pos_embed`` (bicubic); classifier weights of another class count are dropped. A file whose trunk does not
    fit is refused (UsageError naming the tensors) unless ``allow_partial``."""
    state, found = model_source.finetune_state(model, path, target, allow_partial)
    result = model.load_state_dict(state, strict=False)
    log(info, f"finetune: loaded {len(state)} tensors of {path} (written for {found['source']}); replaced: "
              f"{len(found['dropped'])} of another shape ({', '.join(found['dropped'][:4]) or 'none'}), "
              f"{len(result.missing_keys)} not in the file, {len(result.unexpected_keys)} unused")
    if found["trunk_not_loaded"]:
        log(info, f"warning: --finetune-partial: {len(found['trunk_not_loaded'])} trunk tensor(s) keep their random "
                  f"initialisation: {', '.join(found['trunk_not_loaded'][:8])}")


def check_class_counts(info, model, dataset, split: str):
    """The data set's class folders against the model's classes: more folders than outputs is an error (labels the
    head cannot score); fewer is allowed (e.g. a 1000-way head on an ImageNet subset) and said."""
    classes = len(getattr(dataset, "classes", []) or [])
    if not classes or classes == model.num_classes:
        return
    if classes > model.num_classes:
        raise UsageError(f"the {split} set has {classes} class folders but the model {model.num_classes} outputs: "
                         f"labels {model.num_classes}..{classes - 1} cannot be scored; pass --nb-classes/--num-classes "
                         f"{classes} (or more)")
    log(info, f"note: the model has {model.num_classes} classes, the {split} set {classes} class folders: folder i "
              f"(sorted by name) is class i of the model, the other {model.num_classes - classes} outputs "
              + ("are never the target" if split == "train" else
                 "compete in top-1/top-5; make sure the checkpoint's classes 0.." f"{classes - 1} are these folders"))


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


HELD_OUT_FILE = "held_out.pt"


def write_held_out(output_dir: str) -> str:
    """``held_out.pt``: the demo's 1,000 held-out digits as the deploy tools read them (``--tensors``):
    {'images': [N, 1, 28, 28] float32 normalised as the model expects, 'labels': [N] int64}, weights-only loadable."""
    held_out = digits.digits_datasets()[1]
    path = os.path.join(output_dir, HELD_OUT_FILE)
    checkpointing.atomic_save({"images": held_out.images.contiguous(), "labels": held_out.targets.long()}, path)
    return path


def epoch_line(epoch: int, total_epochs: int, stats: dict, key: str, top1: float, best: float, elapsed: float) -> str:
    """The epoch's line: the 4 losses by name and their total (log.jsonl: train_loss_full, train_loss_kd_full,
    train_loss_small, train_loss_kd_small, train_loss), lr, the tracked top-1, throughput and time."""
    losses = ", ".join(f"{label} {stats[name]:.3f}" for name, label in zip(
        LOSS_NAMES, ("full", "kd(full)", "small", "kd(small)")))
    return (f"epoch {epoch + 1}/{total_epochs}: losses {losses}; total {stats['loss']:.3f} | lr {stats['lr']:.2e} | "
            f"{key} {top1:.2f}% (best {best:.2f}%) | {format_summary(stats)} | {stats['train_time_s']:.0f}s train, "
            f"{elapsed:.0f}s total")


def print_table(info, model, metrics: dict, title: str):
    rows = report.result_rows(metrics, model)
    log(info, f"\n{title}\n" + report.format_table(rows) + "\n")
    return rows


def accuracy_record(rows: list[dict], epoch, ema: bool, num_images: int, dataset: str) -> dict:
    """The latest full evaluation as checkpoints carry it (plain values; deploy tools read it)."""
    keep = ("img_size", "keep_ratio", "acc1", "acc5", "gmacs")
    return {"epoch": epoch, "ema": bool(ema), "num_images": int(num_images), "dataset": dataset,
            "rows": [{k: r[k] for k in keep} for r in rows if r["acc1"] is not None]}


def dataset_label(args, split: str = "val") -> str:
    if args.demo:
        return "digits demo (1,000 held-out MNIST digits)"
    return os.path.abspath(os.path.join(args.data_path, split))


def run_eval_only(args, recipe, model, info, amp, ckpt):
    """``--eval --resume CKPT``: only the val set and a checkpoint; prints and writes the sub-network table."""
    weights = pick_weights(ckpt)  # the weights the run evaluated (EMA or raw), by the one policy
    load_weights(model, weights, source=repr(args.resume))
    use_ema = weights.ema
    eval_set = data_lib.guard_images(recipe.eval_set(model), strict=args.strict_data, drop=True)
    check_class_counts(info, model, eval_set, "evaluation")
    loader = eval_loader(eval_set, info, args)
    metrics = evaluate(compiling.compile_module(model, args), loader,
                       model_source.chosen_subnets(args, model, training=False), amp, info,
                       reduce=args.dist_eval and info.distributed, progress=not args.no_progress)
    log_skipped(info, [0] + skipped_since(info, [0], eval_set), "in the evaluation")
    title = f"{os.path.basename(args.resume)} ({'EMA' if use_ema else 'model'} weights), " \
            f"{metrics['num_samples']} images"
    rows = print_table(info, model, metrics, title)
    if args.output_dir and info.is_main:
        report.write_results(args.output_dir, rows, {
            "checkpoint": os.path.abspath(args.resume), "ema": use_ema, "epoch": ckpt.get("epoch"), "title": title,
            "num_samples": metrics["num_samples"], "num_images": metrics["num_samples"],
            "dataset": dataset_label(args), "model_config": model_config(model)})
    return metrics


def python_command() -> str:
    """This Python as a command line names it: relative to the working folder when inside it, else absolute."""
    python = os.path.relpath(sys.executable)
    return sys.executable if python.startswith("..") else python


def reeval_command(args, recipe, checkpoint: str) -> str:
    """The command that evaluates ``checkpoint`` again (model and class count come from the file)."""
    python = python_command()
    script = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), recipe.script_name))
    argv = [python, script]
    if args.demo:
        argv.append("--demo")
    elif recipe.data_arg_name.startswith("--"):
        argv += [recipe.data_arg_name, args.data_path]
    else:
        argv.append(args.data_path)
    argv += ["--eval", "--resume", checkpoint]
    if args.subnets:
        argv += ["--subnets", format_subnets(args.subnets)]
    return shlex.join(argv)


def run(args, recipe):
    """Train (or with ``--eval`` evaluate) as ``args`` say; returns the last evaluation metrics."""
    if args.eval and not args.resume:
        raise UsageError("--eval needs --resume CKPT (a checkpoint to evaluate)")
    info = init_distributed(args.device, getattr(args, "local_rank", None))
    try:
        return _run(args, recipe, info)
    finally:
        cleanup()


def _run(args, recipe, info):
    seed_everything(args.seed)  # the same initial weights on every rank (EMA copies included)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt, model = model_source.resolve_model_source(args, recipe, lambda text: log(info, text))
    model = (model if model is not None else recipe.build_model()).to(info.device)
    if args.input_size and args.input_size != model.img_sizes[-1]:
        raise UsageError(f"--input-size {args.input_size} must equal the model's largest image size "
                         f"{model.img_sizes[-1]} (the data pipeline crops to it; the model resizes inside)")
    subnets = model_source.chosen_subnets(args, model, training=not args.eval)
    amp = resolve_amp(args, info.device)
    if args.finetune:
        finetune_from(model, args.finetune, info, allow_partial=args.finetune_partial,
                      target=f"{model_config(model)['arch']}{' (demo)' if args.demo else ''}")
    if args.eval:
        return run_eval_only(args, recipe, model, info, amp, ckpt)

    train_set, collate, batch_transform = recipe.train_set(model)
    train_set = data_lib.guard_images(train_set, strict=args.strict_data)  # unreadable images: skipped or error
    eval_set = data_lib.guard_images(recipe.eval_set(model), strict=args.strict_data, drop=True)
    if hasattr(train_set, "classes") and hasattr(eval_set, "classes"):
        data_lib.check_same_classes(train_set, eval_set)
    check_class_counts(info, model, train_set, "train")
    sampler = data_lib.train_sampler(train_set, info, args.repeated_aug, args.seed)
    loader = data_lib.make_loader(train_set, sampler, args.batch_size, args.num_workers,
                                  args.pin_mem and info.device.type == "cuda", True, collate)
    val_loader = eval_loader(eval_set, info, args)
    updates_per_epoch = len(loader) if not args.max_steps_per_epoch else min(len(loader), args.max_steps_per_epoch)

    lr = optimization.scaled_lr(args, recipe, info.world_size)
    if lr < args.min_lr:
        scaled = recipe.scales_lr_by_batch and not args.unscale_lr
        what = (f"the learning rate {lr:.3g} (--lr {args.lr:g} x global batch {args.batch_size * info.world_size} "
                "/ 512)" if scaled else f"--lr {lr:g}")
        log(info, f"warning: {what} is below --min-lr {args.min_lr:g}: the schedule rises towards --min-lr instead "
                  "of decaying; lower --min-lr or raise --lr" + (" (or --unscale-lr)" if scaled else ""))
    if not args.output_dir:
        log(info, "note: no --output DIR: this run writes nothing (no checkpoint, results or log); add --output DIR "
                  "to keep them")
    optimizer = optimization.build_optimizer(args, model, lr, info.device)
    scheduler, total_epochs = optimization.build_scheduler(args, recipe, optimizer, updates_per_epoch)
    scaler = optimization.build_scaler(amp.dtype)
    ema = optimization.build_ema(args, model)
    start_epoch, best, accuracy = args.start_epoch, (None, None), None
    resume_path = args.resume or (checkpointing.find_autoresume(args.output_dir, recipe.ckpt_format)
                                  if args.autoresume else None)
    if resume_path:
        state = checkpointing.resume(resume_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler, ema=ema)
        start_epoch, best = state["start_epoch"], (state["best_metric"], state["best_epoch"])
        accuracy = state["accuracy"]
        optimization.restore_gradient_slots(model, optimizer)
        log(info, f"resumed from {resume_path}: continuing at epoch {start_epoch}")
        if start_epoch >= total_epochs:
            log(info, f"nothing to train: {resume_path} holds epoch {start_epoch} of {total_epochs}, the end of this "
                      f"schedule (the run is finished). Evaluate it with: {reeval_command(args, recipe, resume_path)}"
                      f" ; to train longer, start a new run with a larger --epochs (the schedule changes with it)")
            return {}

    step_model = compiling.compile_module(model, args)  # shares the parameters of ``model``
    eval_models = {id(model): step_model}
    ddp_model = step_model
    if info.distributed:
        ddp_model = DistributedDataParallel(step_model, device_ids=[info.device.index] if info.device.type == "cuda"
                                            else None, find_unused_parameters=True)
    ctx = StepContext(model=ddp_model, module=model, task=recipe.build_task(model), optimizer=optimizer,
                      scaler=scaler, amp=amp, info=info, teachers=recipe.teachers(), clip_grad=args.clip_grad,
                      clip_mode=args.clip_mode, clip_each_backward=args.clip_each_backward, ema=ema,
                      max_nonfinite_steps=args.max_nonfinite_steps)
    allowed = set(subnets) if args.subnets else None
    key = f"{largest_full(subnets).key}_acc1"
    config = model_config(model)
    jsonl = report.JsonlLog(os.path.join(args.output_dir, "log.jsonl") if args.output_dir and info.is_main else None)
    n_params = sum(p.numel() for p in model.parameters())
    log(info, f"{recipe.name}: {type(model).__name__} {n_params / 1e6:.2f}M params, {model.num_classes} classes, "
              f"{len(subnets)} sub-networks ({format_subnets(subnets)}); {len(train_set)} train "
              f"/ {len(eval_set)} eval images; {info.world_size} process(es) on {info.device}, batch "
              f"{args.batch_size}/process, {updates_per_epoch} steps/epoch, precision {amp.dtype or torch.float32}")
    log(info, f"schedule: {total_epochs} epoch(s) ({args.epochs} {args.sched} + {total_epochs - args.epochs} cool-down"
              f"), warm-up {args.warmup_epochs:g} epoch(s) from {args.warmup_lr:g}, lr {lr:.3g} -> {args.min_lr:g}"
              f"; this run: epochs {start_epoch + 1}..{total_epochs}")
    if args.warmup_epochs >= args.epochs:
        log(info, f"warning: the warm-up ({args.warmup_epochs:g} epochs) is not shorter than the run ({args.epochs} "
                  "epochs): the lr never reaches --lr; lower --warmup-epochs")
    if args.demo and args.output_dir and info.is_main:
        write_held_out(args.output_dir)
    metrics, run_start = {}, time.time()
    profiler = StepProfiler(args.profile_steps, os.path.join(args.output_dir or ".", f"profile_rank{info.rank}.json"),
                            info.device)
    profile_logged = False
    stop_epoch = min(total_epochs, start_epoch + args.epochs_this_run) if args.epochs_this_run else total_epochs
    for epoch in range(start_epoch, stop_epoch):
        seed_everything(epoch_seed(args.seed, info.rank, epoch))
        rng = random.Random(epoch_seed(args.seed, info.rank, epoch))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        optimization.start_epoch_lr(scheduler, recipe, epoch)
        marks = (data_lib.skipped_images(train_set), data_lib.skipped_images(eval_set))
        stats = train_one_epoch(ctx, loader, epoch, rng, scheduler=scheduler, updates_per_epoch=updates_per_epoch,
                                max_steps=args.max_steps_per_epoch, progress=not args.no_progress, allowed=allowed,
                                batch_transform=batch_transform, profiler=profiler)
        if profiler.written and not profile_logged:
            profile_logged = True
            log(info, f"profiler trace of {args.profile_steps} step(s): {profiler.written} (chrome://tracing, "
                      "https://ui.perfetto.dev)")
        full_table = epoch == total_epochs - 1 or (args.eval_interval and (epoch + 1) % args.eval_interval == 0)
        eval_model = ema.module if (recipe.eval_uses_ema and ema is not None) else model
        if id(eval_model) not in eval_models:
            eval_models[id(eval_model)] = compiling.compile_module(eval_model, args)
        metrics = evaluate(eval_models[id(eval_model)], val_loader, subnets if full_table else [largest_full(subnets)],
                           amp, info, reduce=args.dist_eval and info.distributed, progress=not args.no_progress)
        skipped = skipped_since(info, marks, train_set, eval_set)
        log_skipped(info, skipped, f"in epoch {epoch + 1}")
        stats["skipped_images"], metrics["skipped_images"] = skipped
        is_best = best[0] is None or metrics[key] > best[0]
        if is_best:
            best = (metrics[key], epoch)
        rows = report.result_rows(metrics, model) if full_table else None
        if rows:
            accuracy = accuracy_record(rows, epoch, eval_model is not model, metrics["num_samples"],
                                       dataset_label(args))
        if args.output_dir and info.is_main:
            checkpointing.save_epoch(recipe.ckpt_format, args.output_dir, is_best, model=model, optimizer=optimizer,
                                     scheduler=scheduler, scaler=scaler, ema=ema, epoch=epoch, args=args,
                                     metric=metrics[key], best=best,
                                     run_info={"model_config": config, "accuracy": accuracy,
                                               "data_config": recipe.data_config(model)})
        barrier(info)
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()},
                  **{f"test_{k}": v for k, v in metrics.items()}, "best_" + key: best[0],
                  "elapsed_s": time.time() - run_start}
        jsonl.write(record)
        log(info, epoch_line(epoch, total_epochs, stats, key, metrics[key], best[0], time.time() - run_start))
        if full_table:
            print_table(info, model, metrics, f"epoch {epoch + 1}: top-1 % (GMACs) of every sub-network, "
                                              f"{metrics['num_samples']} held-out images")
            if args.output_dir and info.is_main:
                report.write_results(args.output_dir, rows, {
                    "epoch": epoch, "ema": eval_model is not model,
                    "title": f"SuperViT {recipe.name}{' demo (digits)' if args.demo else ''}: epoch {epoch + 1}",
                    "num_samples": metrics["num_samples"], "num_images": metrics["num_samples"],
                    "dataset": dataset_label(args), "train_time_s": time.time() - run_start,
                    "best_" + key: best[0], "world_size": info.world_size, "model_config": config})
    if args.output_dir and info.is_main and stop_epoch > start_epoch:
        last_ckpt = os.path.join(args.output_dir, checkpointing.FORMATS[recipe.ckpt_format]["last"])
        log(info, f"done in {time.time() - run_start:.0f}s. Results: {args.output_dir}/results.json, results.csv, "
                  f"accuracy_vs_gmacs.png, log.jsonl; checkpoint {last_ckpt}\nre-evaluate with: "
                  f"{reeval_command(args, recipe, last_ckpt)}")
        if args.demo:
            held_out = os.path.join(args.output_dir, HELD_OUT_FILE)
            cascade = [python_command(), "-m", "supervit.deploy", "cascade", "--checkpoint", last_ckpt, "--tensors",
                       held_out]
            log(info, f"confidence cascade on the held-out digits: {shlex.join(cascade)}")
    if args.dump_rank_weights and args.output_dir:
        torch.save(model.state_dict(), os.path.join(args.output_dir, f"weights_rank{info.rank}.pth"))
    return metrics
