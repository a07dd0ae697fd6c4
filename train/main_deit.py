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

from train import cli  # noqa: E402  (argparse only: --help answers without importing torch)

if __name__ == "__main__":  # `import supervit` loads torch on first use only, after the arguments parsed
    cli.defer_heavy_imports()

DEMO_OVERRIDES = {"lr": 1e-3}  # the DeiT demo model (linear patch embedding) was unstable at 3e-3: keep 1e-3


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.make_parser("SuperViT(DeiT-S) training and evaluation (the DeiT reference command line).",
                        DEMO_OVERRIDES)
    p.add_argument("-b", "--batch-size", default=64, type=int, help="training images per process and step")
    p.add_argument("--epochs", default=300, type=int, help="training epochs")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="super_deit_s", type=str,
                   help="super_deit_s or super_lvvit_s; with --eval the checkpoint's own model unless given")
    g.add_argument("--input-size", default=None, type=int,
                   help="crop size of the data pipeline; must equal the model's largest image size (224)")
    g.add_argument("--drop", type=float, default=0.0, help="accepted; the super-network has no dropout")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the last block")
    g.add_argument("--model-ema", action="store_true", default=True,
                   help="keep an EMA of the weights (saved in the checkpoint; DeiT evaluates the raw weights)")
    g.add_argument("--no-model-ema", action="store_false", dest="model_ema", help="no weight EMA")
    g.add_argument("--model-ema-decay", type=float, default=0.99996, help="EMA decay per optimizer step")
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False, help="keep the EMA on the CPU")
    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="adamw", type=str, help="optimizer name (timm create_optimizer_v2)")
    g.add_argument("--opt-eps", default=1e-8, type=float, help="optimizer epsilon")
    g.add_argument("--opt-betas", default=None, type=float, nargs="+", help="optimizer betas (default: its own)")
    g.add_argument("--clip-grad", type=float, default=None, help="clip gradients at this norm/value (off by default)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (momentum optimizers only)")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="weight decay (not on biases, norms and cls_token)")
    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="cosine", type=str, help="schedule name (timm create_scheduler_v2)")
    g.add_argument("--lr", type=float, default=5e-4, help="per 512 images (scaled by global batch / 512)")
    g.add_argument("--unscale-lr", action="store_true", help="use --lr as is (no batch scaling)")
    g.add_argument("--warmup-lr", type=float, default=1e-6, help="lr at the start of the warm-up")
    g.add_argument("--min-lr", type=float, default=1e-5, help="lr floor of the schedule")
    g.add_argument("--decay-epochs", type=float, default=30, help="epochs between decays (step schedules)")
    g.add_argument("--warmup-epochs", type=float, default=5, help="linear warm-up epochs")
    g.add_argument("--cooldown-epochs", type=int, default=10,
                   help="epochs at --min-lr after the cosine (the DeiT loop still stops after --epochs)")
    g.add_argument("--patience-epochs", type=int, default=10, help="plateau schedule patience")
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1, help="lr decay factor (step schedules)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--color-jitter", type=float, default=0.4, help="colour jitter strength")
    g.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="RandAugment policy ('none': off)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--train-interpolation", type=str, default="bicubic", help="resize interpolation in training")
    g.add_argument("--repeated-aug", action="store_true", default=True, help="repeated augmentation (3 repeats)")
    g.add_argument("--no-repeated-aug", action="store_false", dest="repeated_aug", help="no repeated augmentation")
    g.add_argument("--reprob", type=float, default=0.25, help="RandomErasing probability")
    g.add_argument("--remode", type=str, default="pixel", help="RandomErasing mode")
    g.add_argument("--recount", type=int, default=1, help="RandomErasing count")
    g.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0: off)")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None, help="CutMix min/max box ratio")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of Mixup or CutMix per batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of CutMix instead of Mixup")
    g.add_argument("--mixup-mode", type=str, default="batch", help="batch, pair or elem")
    g = p.add_argument_group("fine-tuning, data, run")
    g.add_argument("--finetune", default="",
                   help="initialise from a plain DeiT-S (or SuperViT) checkpoint; refuses a file whose trunk does "
                        "not fit unless --finetune-partial")
    g.add_argument("--data-path", default=None, type=str,
                   help="folder with train/<class>/*.JPEG and val/<class>/*.JPEG (none: the digits demo)")
    g.add_argument("--data-set", default="IMNET", choices=["IMNET"], type=str, help="accepted (ImageFolder)")
    g.add_argument("--nb-classes", default=None, type=int,
                   help="classes of the model (default: the number of class folders in train/; with --eval the "
                        "checkpoint's)")
    g.add_argument("--output_dir", "--output-dir", "--output", dest="output_dir", default="",
                   help="folder of checkpoints, results and log (none: nothing is written)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--seed", default=0, type=int, help="random seed (each rank adds its rank)")
    g.add_argument("--resume", default="", help="checkpoint to resume from (or to evaluate with --eval)")
    g.add_argument("--start_epoch", "--start-epoch", default=0, type=int,
                   help="first epoch (a --resume checkpoint sets it)")
    g.add_argument("--eval", action="store_true", help="evaluate the --resume checkpoint only")
    g.add_argument("--dist-eval", action="store_true", default=False, help="shard evaluation over the processes")
    g.add_argument("--num_workers", "--num-workers", "--workers", "-j", dest="num_workers", default=None, type=int,
                   help="DataLoader worker processes (default: 10, at most the CPU cores of each process)")
    g.add_argument("--pin-mem", action="store_true", default=True, help="pinned host memory for CUDA copies")
    g.add_argument("--no-pin-mem", action="store_false", dest="pin_mem", help="no pinned memory")
    g.add_argument("--amp", action="store_true", default=True, help="mixed precision (fp16 on CUDA)")
    g.add_argument("--no-amp", action="store_false", dest="amp", help="no mixed precision")
    g.add_argument("--world_size", default=1, type=int, help="accepted; torchrun's WORLD_SIZE is used")
    g.add_argument("--dist_url", default="env://", help="accepted; torchrun's rendezvous is used")
    cli.add_common_arguments(p)
    return p


def _data_given(argv):
    return any(a == "--data-path" or a.startswith("--data-path=") for a in argv)


def parse_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = cli.parse(parser, argv, cli.wants_demo(argv, _data_given), demo_overrides=DEMO_OVERRIDES)
    if args.kd_teacher is None:
        args.kd_teacher = "group"
    args.model_ema_decay = float(args.model_ema_decay)
    if args.num_workers is None:
        args.num_workers = cli.default_workers(10)
    cli.check_args(args, parser)
    return args


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), then train or evaluate; returns the last evaluation metrics."""
    args = parse_args(argv)
    from train.recipes import DeiTRecipe  # torch/timm load only after the arguments parsed
    from train.runner import run

    return run(args, DeiTRecipe(args))


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
