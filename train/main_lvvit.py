"""SuperViT(LV-ViT-S) training and evaluation, with the reference (timm train.py style) command line.

    torchrun --nproc_per_node=4 train/main_lvvit.py IMAGENET --model super_lvvit_s -b 256 --native-amp \
        --drop-path 0.1 --token-label --token-label-data LABELS --token-label-size 14 --model-ema \
        --output LOG [--eval --resume CKPT]

``--demo`` (or no data folder) trains the demo LV-ViT on the embedded digits (class labels, MixToken).
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
from train.recipes import LVViTRecipe  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SuperViT LV-ViT training and evaluation script")
    p.add_argument("data_path", metavar="DIR", nargs="?", default=None, help="IMAGENET folder with train/ and val/")
    p.add_argument("--model", default="super_lvvit_s", type=str)
    p.add_argument("--pretrained", action="store_true", help="not supported (nothing is downloaded)")
    p.add_argument("--initial-checkpoint", "--finetune", dest="finetune", default="",
                   help="initialise from a plain LV-ViT-S (or SuperViT) checkpoint")
    p.add_argument("--resume", default="", type=str, help="checkpoint to resume from (or to evaluate with --eval)")
    p.add_argument("--no-resume-opt", action="store_true", help="accepted; the optimizer state is always restored")
    p.add_argument("--num-classes", dest="nb_classes", type=int, default=None)
    p.add_argument("--img-size", dest="input_size", type=int, default=None,
                   help="must equal the model's largest image size")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="per process")
    p.add_argument("-vb", "--validation-batch-size", dest="eval_batch_size", type=int, default=None)
    # optimizer
    p.add_argument("--opt", default="adamw", type=str)
    p.add_argument("--opt-eps", default=None, type=float)
    p.add_argument("--opt-betas", default=None, type=float, nargs="+")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--clip-grad", type=float, default=None)
    # schedule
    p.add_argument("--sched", default="cosine", type=str)
    p.add_argument("--lr", type=float, default=1.6e-3, help="not batch-scaled")
    p.add_argument("--warmup-lr", type=float, default=1e-6)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--start-epoch", dest="start_epoch", type=int, default=0)
    p.add_argument("--decay-epochs", type=float, default=30)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--cooldown-epochs", type=int, default=10)
    p.add_argument("--patience-epochs", type=int, default=10)
    p.add_argument("--decay-rate", "--dr", type=float, default=0.1)
    # augmentation
    p.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0])
    p.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0])
    p.add_argument("--hflip", type=float, default=0.5)
    p.add_argument("--color-jitter", type=float, default=0.4)
    p.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--remode", type=str, default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--cutmix", type=float, default=0.0)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--train-interpolation", type=str, default="random")
    p.add_argument("--repeated-aug", action="store_true", default=False)
    p.add_argument("--drop", type=float, default=0.0, help="accepted; the super-network has no dropout")
    p.add_argument("--drop-path", type=float, default=0.1)
    # token labelling
    p.add_argument("--token-label", action="store_true", help="train with token labels")
    p.add_argument("--token-label-data", default="", help="DIR/<class_dir>/<image_stem>.pt label files")
    p.add_argument("--token-label-size", type=int, default=14, help="token grid of the dense targets")
    p.add_argument("--dense-weight", type=float, default=1.0)
    p.add_argument("--cls-weight", type=float, default=1.0)
    p.add_argument("--no-mix-token", action="store_true", help="turn MixToken off")
    # EMA, precision, run
    p.add_argument("--model-ema", action="store_true", default=False)
    p.add_argument("--model-ema-force-cpu", action="store_true", default=False)
    p.add_argument("--model-ema-decay", type=float, default=0.99992)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("-j", "--workers", dest="num_workers", type=int, default=4)
    p.add_argument("--amp", "--native-amp", "--apex-amp", dest="amp", action="store_true", default=False,
                   help="mixed precision (fp16 + GradScaler on CUDA)")
    p.add_argument("--pin-mem", action="store_true", default=False)
    p.add_argument("--output", "--output_dir", "--output-dir", dest="output_dir", default="")
    p.add_argument("--eval", action="store_true", help="evaluate the --resume checkpoint only")
    p.add_argument("--dist-eval", action="store_true", default=False, help="shard evaluation over the processes")
    p.add_argument("--eval-metric", default="top1", help="accepted; the best checkpoint is chosen by {L}_1_acc1")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    cli.add_common_arguments(p)
    return p


def _data_given(argv):
    parser = get_args_parser()
    known, _ = parser.parse_known_args(argv)
    return known.data_path is not None


def parse_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = cli.parse(parser, argv, cli.wants_demo(argv, _data_given))
    if args.pretrained:
        parser.error("--pretrained is not supported (nothing is downloaded); use --finetune PATH")
    if args.kd_teacher is None:
        args.kd_teacher = "full"
    args.unscale_lr = True
    if args.token_label and not args.token_label_data and not args.eval:
        parser.error("--token-label needs --token-label-data DIR")
    cli.check_args(args, parser)
    return args


def main(argv=None):
    from train.runner import run

    args = parse_args(argv)
    return run(args, LVViTRecipe(args))


if __name__ == "__main__":
    main()
