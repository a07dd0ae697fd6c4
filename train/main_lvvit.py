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

from train import cli  # noqa: E402  (argparse only: --help answers without importing torch)

if __name__ == "__main__":  # `import supervit` loads torch on first use only, after the arguments parsed
    cli.defer_heavy_imports()


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.make_parser("SuperViT(LV-ViT-S) training and evaluation (the LV-ViT / timm train.py command line).")
    p.add_argument("data_path", metavar="DIR", nargs="?", default=None,
                   help="folder with train/<class>/*.JPEG and val/<class>/*.JPEG (none: the digits demo)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="super_lvvit_s", type=str,
                   help="super_lvvit_s or super_deit_s; with --eval the checkpoint's own model unless given")
    g.add_argument("--pretrained", action="store_true", help="not supported (nothing is downloaded)")
    g.add_argument("--initial-checkpoint", "--finetune", dest="finetune", default="",
                   help="initialise from a plain LV-ViT-S (or SuperViT) checkpoint; refuses a file whose trunk "
                        "does not fit unless --finetune-partial")
    g.add_argument("--resume", default="", type=str, help="checkpoint to resume from (or to evaluate with --eval)")
    g.add_argument("--no-resume-opt", action="store_true", help="accepted; the optimizer state is always restored")
    g.add_argument("--num-classes", "--nb-classes", dest="nb_classes", type=int, default=None,
                   help="classes of the model (default: the number of class folders in train/; with --eval the "
                        "checkpoint's)")
    g.add_argument("--img-size", "--input-size", dest="input_size", type=int, default=None,
                   help="crop size of the data pipeline; must equal the model's largest image size (224)")
    g.add_argument("-b", "--batch-size", type=int, default=64, help="training images per process and step")
    g.add_argument("--drop", type=float, default=0.0, help="accepted; the super-network has no dropout")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the last block")
    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="adamw", type=str, help="optimizer name (timm create_optimizer_v2)")
    g.add_argument("--opt-eps", default=None, type=float, help="optimizer epsilon (default: the optimizer's)")
    g.add_argument("--opt-betas", default=None, type=float, nargs="+", help="optimizer betas (default: its own)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (momentum optimizers only)")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="weight decay (not on biases, norms and cls_token)")
    g.add_argument("--clip-grad", type=float, default=None, help="clip gradients at this norm/value (off by default)")
    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="cosine", type=str, help="schedule name (timm create_scheduler_v2)")
    g.add_argument("--lr", type=float, default=1.6e-3, help="learning rate (not batch-scaled)")
    g.add_argument("--warmup-lr", type=float, default=1e-6, help="lr at the start of the warm-up")
    g.add_argument("--min-lr", type=float, default=1e-5, help="lr floor of the schedule")
    g.add_argument("--epochs", type=int, default=300,
                   help="cosine epochs; without --epochs the reference's 10 cool-down epochs follow (310 in all), "
                        "with --epochs N exactly N run unless --cooldown-epochs is given")
    g.add_argument("--start-epoch", dest="start_epoch", type=int, default=0,
                   help="first epoch (a --resume checkpoint sets it)")
    g.add_argument("--decay-epochs", type=float, default=30, help="epochs between decays (step schedules)")
    g.add_argument("--warmup-epochs", type=float, default=5, help="linear warm-up epochs")
    g.add_argument("--cooldown-epochs", type=int, default=None,
                   help="epochs at --min-lr added after --epochs (default: 10 when --epochs is not given, else 0)")
    g.add_argument("--patience-epochs", type=int, default=10, help="plateau schedule patience")
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1, help="lr decay factor (step schedules)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="RandomResizedCrop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0],
                   help="RandomResizedCrop aspect range")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--color-jitter", type=float, default=0.4, help="colour jitter strength")
    g.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="RandAugment policy ('none': off)")
    g.add_argument("--reprob", type=float, default=0.25, help="RandomErasing probability")
    g.add_argument("--remode", type=str, default="pixel", help="RandomErasing mode")
    g.add_argument("--recount", type=int, default=1, help="RandomErasing count")
    g.add_argument("--mixup", type=float, default=0.0, help="must stay 0: the recipe mixes with MixToken")
    g.add_argument("--cutmix", type=float, default=0.0, help="must stay 0: the recipe mixes with MixToken")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--train-interpolation", type=str, default="random", help="resize interpolation in training")
    g.add_argument("--repeated-aug", action="store_true", default=False, help="repeated augmentation (3 repeats)")
    g = p.add_argument_group("token labelling")
    g.add_argument("--token-label", action="store_true",
                   help="train with token labels (without: every token's target is the image's class label; "
                        "see docs/token_labels.md)")
    g.add_argument("--token-label-data", default="", help="DIR/<class_dir>/<image_stem>.pt label files")
    g.add_argument("--token-label-size", type=int, default=14, help="token grid of the dense targets")
    g.add_argument("--token-label-targets", choices=["exact", "reference"], default="exact",
                   help="'exact': each token's target is read where its pixels came from; 'reference': as the "
                        "reference code builds it (crop box with x and y exchanged, label map warped in cell units; "
                        "see docs/token_labels.md)")
    g.add_argument("--dense-weight", type=float, default=1.0, help="weight of the dense (token) loss")
    g.add_argument("--cls-weight", type=float, default=1.0, help="weight of the class-token loss")
    g.add_argument("--no-mix-token", action="store_true", help="turn MixToken off")
    g = p.add_argument_group("EMA, precision, run")
    g.add_argument("--model-ema", action="store_true", default=False,
                   help="keep an EMA of the weights; evaluated and used for the best checkpoint")
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False, help="keep the EMA on the CPU")
    g.add_argument("--model-ema-decay", type=float, default=0.99992, help="EMA decay per optimizer step")
    g.add_argument("--seed", type=int, default=42, help="random seed (each rank adds its rank)")
    g.add_argument("-j", "--workers", "--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
                   help="DataLoader worker processes (default: 4, at most the CPU cores of each process)")
    g.add_argument("--amp", "--native-amp", "--apex-amp", dest="amp", action="store_true", default=False,
                   help="mixed precision (fp16 + GradScaler on CUDA)")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pinned host memory for CUDA copies")
    g.add_argument("--output", "--output_dir", "--output-dir", dest="output_dir", default="",
                   help="folder of checkpoints, results and log (none: nothing is written)")
    g.add_argument("--eval", action="store_true", help="evaluate the --resume checkpoint only")
    g.add_argument("--dist-eval", action="store_true", default=False, help="shard evaluation over the processes")
    g.add_argument("--eval-metric", default="top1",
                   help="accepted; the best checkpoint is the one with the best top-1 of the largest full "
                        "sub-network")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
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
    if args.cooldown_epochs is None:  # the reference's 300 + 10; an explicit --epochs N means N epochs
        args.cooldown_epochs = 0 if "epochs" in args.explicit else 10
    if args.token_label and not args.token_label_data and not args.eval:
        parser.error("--token-label needs --token-label-data DIR")
    if args.num_workers is None:
        args.num_workers = cli.default_workers(4)
    cli.check_args(args, parser)
    return args


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), then train or evaluate; returns the last evaluation metrics."""
    args = parse_args(argv)
    from train.recipes import LVViTRecipe  # torch/timm load only after the arguments parsed
    from train.runner import run

    return run(args, LVViTRecipe(args))


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
