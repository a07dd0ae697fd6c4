"""Command-line pieces both scripts share: our additions to the reference flags, demo defaults, validation, and the
script entry point that turns a user error into one line on stderr and exit code 2.

Nothing here imports torch or timm, so ``--help`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

# The embedded demo's recipe (flags the user passes explicitly still win). Chosen by measurement on 2 CPU cores.
DEMO_DEFAULTS = dict(
    batch_size=64, epochs=8, lr=3e-3, unscale_lr=True, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=0.5,
    cooldown_epochs=0, weight_decay=0.05, drop_path=0.1, mixup=0.0, cutmix=0.0, smoothing=0.1, no_mix_token=True,
    repeated_aug=False, model_ema=False, num_workers=0, pin_mem=False, sched_on_updates=True, eval_interval=0,
    amp_dtype="float32", dist_eval=True,
)

EPILOG = """\
Without a data path (or with --demo) the script trains the embedded digits demo; the demo changes these defaults:
  {demo}
Sub-networks are written SIZE:KEEP (image side in pixels : token keep rate), e.g. --subnets 224:1,224:0.7,160:1.
User errors print one line and exit with code 2; set SUPERVIT_DEBUG=1 to see the traceback instead.
"""


DEFER_ENV = "SUPERVIT_DEFER_IMPORTS"
_deferred_here = False


def defer_heavy_imports():
    """Make ``import supervit`` load torch only on first use, for a script run from the command line: ``--help`` and
    argument errors then answer at once. ``parse`` undoes it once the arguments are parsed (child processes do not
    inherit it)."""
    global _deferred_here
    if os.environ.get(DEFER_ENV) is None:
        os.environ[DEFER_ENV] = "1"
        _deferred_here = True


def _end_deferral():
    global _deferred_here
    if _deferred_here:
        os.environ.pop(DEFER_ENV, None)
        _deferred_here = False


class UsageError(ValueError):
    """A command-line value that cannot work (named in the message with what would)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (except None and off switches) after its help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, "", argparse.SUPPRESS) \
                or isinstance(action, argparse._StoreFalseAction):
            return text
        if action.nargs == 0:  # switches: say so only when one is on by default
            return f"{text} (default: on)" if default is True else text
        if isinstance(default, (list, tuple)):
            default = " ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (``prog: error: message``, exit code 2), without the usage
    block (``--help`` shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser(prog_description: str, demo_overrides: dict | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with defaults shown and the shared epilog (demo defaults, sub-network syntax, exit codes)."""
    demo = {**DEMO_DEFAULTS, **(demo_overrides or {})}
    shown = ", ".join(f"{k.replace('_', '-')} {({True: 'on', False: 'off'}.get(v, v) if isinstance(v, bool) else v)}"
                      for k, v in demo.items())
    shown = "\n  ".join(textwrap.wrap(shown, 110, break_on_hyphens=False))
    return ArgumentParser(description=prog_description, formatter_class=HelpFormatter,
                                   epilog=EPILOG.format(demo=shown))


def add_common_arguments(parser: argparse.ArgumentParser):
    """Flags of ours that both scripts accept (beside each reference script's own)."""
    group = parser.add_argument_group("SuperViT additions")
    group.add_argument("--demo", action="store_true",
                       help="train/evaluate the embedded digits demo (the default when no data path is given)")
    group.add_argument("--demo-aug", action="store_true",
                       help="demo: random affine augmentation of the digits (slower to converge; off by default)")
    group.add_argument("--subnets", default=None, type=parse_subnets, metavar="SIZE:KEEP[,SIZE:KEEP...]",
                       help="train and evaluate only these sub-networks (default: all 12); training needs the full "
                            "keep (SIZE:1) of every size listed, which teaches that size's reduced keeps")
    group.add_argument("--autoresume", action="store_true",
                       help="resume from the last checkpoint in the output folder when there is one")
    group.add_argument("--finetune-partial", action="store_true",
                       help="with --finetune: load what fits even when trunk tensors are missing or of another "
                            "shape (the default refuses, naming them)")
    group.add_argument("--kd-teacher", choices=["group", "full"], default=None,
                       help="teacher of the reduced-keep sub-networks: 'group' = own size's full keep (DeiT "
                            "default), 'full' = the largest full sub-network for both (LV-ViT default)")
    group.add_argument("--amp-dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                       help="autocast dtype; auto = on CUDA with AMP on, bfloat16 where the GPU has it, else float16 + "
                            "GradScaler (the reference's); float32 on CPU")
    group.add_argument("--clip-mode", default="norm", choices=["norm", "value", "agc"],
                       help="gradient clipping mode (timm dispatch_clip_grad)")
    group.add_argument("--clip-each-backward", action="store_true",
                       help="with --clip-grad: clip the partial gradient sum after each of the 4 backward passes, as "
                            "the reference scripts did (default: clip the summed gradient once, before the step)")
    group.add_argument("--model-ema-warmup", action="store_true",
                       help="EMA decay warm-up (timm's ModelEmaV3 use_warmup): the EMA follows the weights closely "
                            "early on (default: decay from the first update, as the reference's EMA)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model once: one graph per sub-network, used by the training step and "
                            "the evaluation (the first steps of each sub-network wait for its compilation)")
    group.add_argument("--compile-backend", default="inductor",
                       help="torch.compile backend with --compile ('aot_eager' traces without generating code)")
    group.add_argument("--profile-steps", type=int, default=0,
                       help="write a torch profiler trace (Chrome JSON, profile_rank<r>.json in the output folder) of "
                            "this many training steps after the first; 0 = none")
    group.add_argument("--eval-interval", type=int, default=1,
                       help="full evaluation of every sub-network every N epochs (and at the end); 0 = at the end "
                            "only. Other epochs evaluate the largest full sub-network only")
    group.add_argument("-vb", "--eval-batch-size", "--validation-batch-size", dest="eval_batch_size", type=int,
                       default=None,
                       help="evaluation batch per process (default: 1.5 x --batch-size)")
    group.add_argument("--sched-on-updates", action="store_true",
                       help="step the LR schedule every optimizer update instead of every epoch")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--local_rank", "--local-rank", type=int, default=None,
                       help="accepted for torch.distributed.launch; torchrun's LOCAL_RANK is used when set")
    group.add_argument("--epochs-this-run", type=int, default=0,
                       help="stop after this many epochs (schedule unchanged); continue later with --autoresume; "
                            "0 = run to the end")
    group.add_argument("--max-steps-per-epoch", type=int, default=0,
                       help="cut every epoch after this many steps (quick trials; the schedule counts these steps); "
                            "0 = the whole training set")
    group.add_argument("--model-kwargs", default=None, metavar="JSON",
                       help="JSON object of model constructor overrides, e.g. '{\"depth\": 6, \"prune_layers\": "
                            "[1, 3, 5]}'; recorded in the checkpoints")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    group.add_argument("--strict-data", action="store_true",
                       help="an unreadable/corrupt image is an error naming the file (default: skip it, count it "
                            "in the log and go on)")
    group.add_argument("--max-nonfinite-steps", type=int, default=20,
                       help="stop with an error after this many consecutive steps with a NaN/inf loss (each such "
                            "step is skipped, as AMP's scaler does)")
    group.add_argument("--data-backend", choices=["pil", "device"], default="pil",
                       help="training data path: 'pil' decodes and augments on CPU loader workers (PIL); 'device' "
                            "decodes JPEGs and augments on the training device (nvJPEG on CUDA)")
    group.add_argument("--dump-rank-weights", action="store_true", help=argparse.SUPPRESS)  # tests: weights/rank


def parse_subnets(text: str):
    """argparse type of ``--subnets``: '224:1,160:0.5' -> [Subnet(224, 1.0), Subnet(160, 0.5)] by the one parser
    (``supervit.models.parse_subnets``); its error becomes argparse's one-line error (exit code 2)."""
    from supervit.models.subnet import SubnetError, parse_subnets as parse  # no torch

    try:
        return parse(text, "--subnets")
    except SubnetError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--subnets: ")) from None


def default_workers(recipe_default: int) -> int:
    """DataLoader workers when ``--num-workers`` is not given: the recipe's default, at most the CPU cores this
    process may use (its affinity, shared among torchrun's processes on the node)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_process = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    return min(recipe_default, per_process)


def wants_demo(argv: list[str], data_given) -> bool:
    return "--demo" in argv or not data_given(argv)


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line, in any form argparse accepts (``--opt``,
    ``--opt=value``, an abbreviation, a short flag): ``argv`` parsed again with every default suppressed."""
    saved = [(action, action.default) for action in parser._actions]
    saved_defaults = dict(parser._defaults)
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parser._defaults.clear()
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults.update(saved_defaults)
    return set(vars(given))


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, demo: bool,
          demo_overrides: dict | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the demo defaults (updated by ``demo_overrides``) when ``demo``; explicit flags win.

    ``args.explicit`` lists the options the user wrote (e.g. to tell ``--epochs 300`` from the default).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if demo and not {"-h", "--help"} & set(argv):  # help shows the recipe's defaults; the epilog the demo's
        defaults = {**DEMO_DEFAULTS, **(demo_overrides or {})}
        parser.set_defaults(**{k: v for k, v in defaults.items() if _has_dest(parser, k)})
    try:
        args = parser.parse_args(argv)
    finally:
        _end_deferral()
    args.demo = demo
    args.explicit = sorted(explicit_dests(parser, argv))
    return args


def _has_dest(parser, dest: str) -> bool:
    return any(action.dest == dest for action in parser._actions)


def check_args(args, parser: argparse.ArgumentParser):
    """Errors for impossible combinations, naming the flags."""
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.epochs < 1 and not args.eval:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.max_nonfinite_steps < 1:
        parser.error(f"--max-nonfinite-steps must be >= 1, got {args.max_nonfinite_steps}")
    if args.clip_grad is not None and args.clip_grad <= 0:
        parser.error(f"--clip-grad must be > 0, got {args.clip_grad}")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        parser.error(f"Mixup/CutMix need an even --batch-size, got {args.batch_size}")
    if args.cooldown_epochs is not None and args.cooldown_epochs < 0:
        parser.error(f"--cooldown-epochs must be >= 0, got {args.cooldown_epochs}")
    if args.finetune_partial and not args.finetune:
        parser.error("--finetune-partial needs --finetune PATH")
    if args.profile_steps < 0:
        parser.error(f"--profile-steps must be >= 0, got {args.profile_steps}")
    if args.profile_steps and not args.output_dir:
        parser.error("--profile-steps needs --output DIR (the trace is written there)")
    if args.clip_each_backward and args.clip_grad is None:
        parser.error("--clip-each-backward needs --clip-grad VALUE")
    if args.clip_each_backward and args.clip_mode == "agc":
        parser.error("--clip-each-backward works with --clip-mode norm or value, not agc")


def user_error_types() -> tuple[type, ...]:
    """Exceptions that mean 'the input was wrong' (reported in one line): ValueError (our UsageError, data and
    config errors) and the checkpoint reader's error."""
    types: list[type] = [ValueError]
    if "supervit.models" in sys.modules:
        types.append(sys.modules["supervit.models"].CheckpointError)
    return tuple(types)


def run_script(main, argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a user error becomes ``<script>: error: <message>`` on stderr and exit code 2."""
    try:
        main(argv)
    except user_error_types() as err:
        if os.environ.get("SUPERVIT_DEBUG"):
            raise
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train"
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
