"""SuperViT(DeiT-S) training and evaluation, with the reference command line.

    torchrun --nproc_per_node=4 train/main_deit.py --model super_deit_s --batch-size 256 --data-path IMAGENET \
        --dist-eval --output LOG [--eval --resume CKPT]

Without ``--data-path`` (or with ``--demo``) it trains the embedded handwritten-digits demo.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# OpenMP threads that sleep instead of spinning while they wait: on a CPU shared with other jobs, spinning threads
# made the CPU step 2-3x slower in our measurements. Set before torch loads its OpenMP runtime; yours wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from train import cli  # noqa: E402
from train.recipes import DeiTRecipe  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SuperViT DeiT training and evaluation script", add_help=True)
    p.add_argument("--batch-size", default=64, type=int, help="per process")
    p.add_argument("--epochs", default=300, type=int)
    # model
    p.add_argument("--model", default="super_deit_s", type=str)
    p.add_argument("--input-size", default=None, type=int, help="must equal the model's largest image size")
    p.add_argument("--drop", type=float, default=0.0, help="accepted; the super-network has no dropout")
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--model-ema", action="store_true", default=True)
    p.add_argument("--no-model-ema", action="store_false", dest="model_ema")
    p.add_argument("--model-ema-decay", type=float, default=0.99996)
    p.add_argument("--model-ema-force-cpu", action="store_true", default=False)
    # optimizer
    p.add_argument("--opt", default="adamw", type=str)
    p.add_argument("--opt-eps", default=1e-8, type=float)
    p.add_argument("--opt-betas", default=None, type=float, nargs="+")
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.05)
    # schedule
    p.add_argument("--sched", default="cosine", type=str)
    p.add_argument("--lr", type=float, default=5e-4, help="per 512 images (scaled by global batch / 512)")
    p.add_argument("--unscale-lr", action="store_true", help="use --lr as is")
    p.add_argument("--warmup-lr", type=float, default=1e-6)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--decay-epochs", type=float, default=30)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--cooldown-epochs", type=int, default=10)
    p.add_argument("--patience-epochs", type=int, default=10)
    p.add_argument("--decay-rate", "--dr", type=float, default=0.1)
    # augmentation
    p.add_argument("--color-jitter", type=float, default=0.4)
    p.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1")
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--train-interpolation", type=str, default="bicubic")
    p.add_argument("--repeated-aug", action="store_true", default=True)
    p.add_argument("--no-repeated-aug", action="store_false", dest="repeated_aug")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--remode", type=str, default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--cutmix-minmax", type=float, nargs="+", default=None)
    p.add_argument("--mixup-prob", type=float, default=1.0)
    p.add_argument("--mixup-switch-prob", type=float, default=0.5)
    p.add_argument("--mixup-mode", type=str, default="batch")
    # fine-tuning, data, run
    p.add_argument("--finetune", default="", help="initialise from a plain DeiT-S (or SuperViT) checkpoint")
    p.add_argument("--data-path", default=None, type=str, help="IMAGENET folder with train/ and val/")
    p.add_argument("--data-set", default="IMNET", choices=["IMNET"], type=str)
    p.add_argument("--nb-classes", default=None, type=int, help="classes of the model (default: the model's)")
    p.add_argument("--output_dir", "--output-dir", "--output", dest="output_dir", default="")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --eval)")
    p.add_argument("--start_epoch", "--start-epoch", default=0, type=int)
    p.add_argument("--eval", action="store_true", help="evaluate the --resume checkpoint only")
    p.add_argument("--dist-eval", action="store_true", default=False, help="shard evaluation over the processes")
    p.add_argument("--num_workers", "--num-workers", "-j", default=10, type=int)
    p.add_argument("--pin-mem", action="store_true", default=True)
    p.add_argument("--no-pin-mem", action="store_false", dest="pin_mem")
    p.add_argument("--amp", action="store_true", default=True, help="mixed precision (fp16 on CUDA; default on)")
    p.add_argument("--no-amp", action="store_false", dest="amp")
    p.add_argument("--world_size", default=1, type=int, help="accepted; torchrun's WORLD_SIZE is used")
    p.add_argument("--dist_url", default="env://", help="accepted; torchrun's rendezvous is used")
    cli.add_common_arguments(p)
    return p


def _data_given(argv):
    return any(a == "--data-path" or a.startswith("--data-path=") for a in argv)


def parse_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    # the DeiT demo model (linear patch embedding) was unstable at 3e-3 and slow either way: keep 1e-3
    args = cli.parse(parser, argv, cli.wants_demo(argv, _data_given), demo_overrides={"lr": 1e-3})
    if args.kd_teacher is None:
        args.kd_teacher = "group"
    args.model_ema_decay = float(args.model_ema_decay)
    cli.check_args(args, parser)
    return args


def main(argv=None):
    from train.runner import run

    args = parse_args(argv)
    return run(args, DeiTRecipe(args))


if __name__ == "__main__":
    main()
