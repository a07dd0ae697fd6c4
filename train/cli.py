"""Command-line pieces both scripts share: our additions to the reference flags, demo defaults, validation."""
from __future__ import annotations

import argparse
import sys

# The embedded demo's recipe (flags the user passes explicitly still win). Chosen by measurement on 2 CPU cores.
DEMO_DEFAULTS = dict(
    batch_size=64, epochs=8, lr=2e-3, unscale_lr=True, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=0.5,
    cooldown_epochs=0, weight_decay=0.05, drop_path=0.0, mixup=0.0, cutmix=0.0, smoothing=0.1, no_mix_token=True,
    repeated_aug=False, model_ema=False, num_workers=0, pin_mem=False, sched_on_updates=True, eval_interval=0,
    amp_dtype="float32", dist_eval=True,
)


def add_common_arguments(parser: argparse.ArgumentParser):
    """Flags of ours that both scripts accept (beside each reference script's own)."""
    group = parser.add_argument_group("SuperViT additions")
    group.add_argument("--demo", action="store_true",
                       help="train/evaluate the embedded digits demo (the default when no data path is given)")
    group.add_argument("--demo-aug", action="store_true",
                       help="demo: random affine augmentation of the digits (slower to converge; off by default)")
    group.add_argument("--autoresume", action="store_true",
                       help="resume from the last checkpoint in the output folder when there is one")
    group.add_argument("--kd-teacher", choices=["group", "full"], default=None,
                       help="teacher of the reduced-keep sub-networks: 'group' = own size's full keep (DeiT recipe),"
                            " 'full' = the largest full sub-network for both (LV-ViT reference)")
    group.add_argument("--amp-dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                       help="autocast dtype; auto = float16 + GradScaler on CUDA (when AMP is on), float32 on CPU")
    group.add_argument("--clip-mode", default="norm", choices=["norm", "value", "agc"],
                       help="gradient clipping mode (timm dispatch_clip_grad)")
    group.add_argument("--eval-interval", type=int, default=1,
                       help="full 12-sub-network evaluation every N epochs (and at the end); 0 = at the end only. "
                            "Other epochs evaluate the largest full sub-network only")
    group.add_argument("--eval-batch-size", type=int, default=None)
    group.add_argument("--sched-on-updates", action="store_true",
                       help="step the LR schedule every optimizer update instead of every epoch")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--local_rank", "--local-rank", type=int, default=None,
                       help="accepted for torch.distributed.launch; torchrun's LOCAL_RANK is used when set")
    group.add_argument("--epochs-this-run", type=int, default=0,
                       help="stop after this many epochs (schedule unchanged); continue later with --autoresume")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    group.add_argument("--strict-data", action="store_true",
                       help="an unreadable/corrupt image is an error naming the file (default: skip it, count it "
                            "in the log and go on)")
    group.add_argument("--max-nonfinite-steps", type=int, default=20,
                       help="stop with an error after this many consecutive steps with a NaN/inf loss (each such "
                            "step is skipped, as AMP's scaler does)")
    group.add_argument("--dump-rank-weights", action="store_true", help=argparse.SUPPRESS)  # tests: weights/rank
    group.add_argument("--model-kwargs", default=None, help=argparse.SUPPRESS)  # JSON overrides of the model
    group.add_argument("--max-steps-per-epoch", type=int, default=0, help=argparse.SUPPRESS)


def wants_demo(argv: list[str], data_given) -> bool:
    return "--demo" in argv or not data_given(argv)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, demo: bool,
          demo_overrides: dict | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the demo defaults (updated by ``demo_overrides``) when ``demo``; explicit flags win."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if demo:
        defaults = {**DEMO_DEFAULTS, **(demo_overrides or {})}
        parser.set_defaults(**{k: v for k, v in defaults.items() if _has_dest(parser, k)})
    args = parser.parse_args(argv)
    args.demo = demo
    return args


def _has_dest(parser, dest: str) -> bool:
    return any(action.dest == dest for action in parser._actions)


def check_args(args, parser: argparse.ArgumentParser):
    """Errors for impossible combinations, naming the flags."""
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.epochs < 1 and not args.eval:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.max_nonfinite_steps < 1:
        parser.error(f"--max-nonfinite-steps must be >= 1, got {args.max_nonfinite_steps}")
    if args.clip_grad is not None and args.clip_grad <= 0:
        parser.error(f"--clip-grad must be > 0, got {args.clip_grad}")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        parser.error(f"Mixup/CutMix need an even --batch-size, got {args.batch_size}")
