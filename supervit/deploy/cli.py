"""``python -m supervit.deploy {profile,choose,cascade,export}``: the command line of the deploy library.

The parser and the checks of the arguments alone import nothing heavy, so ``--help`` and argument errors answer
before torch loads; a command then loads the library. A ``DeployError`` (or ``ValueError``) is printed as one line
and exits with code 2. CPU threads: unless the environment sets ``OMP_WAIT_POLICY``, the command sets it to PASSIVE
before torch loads (spinning OpenMP threads make latencies on a shared CPU many times too slow; see ``profile``).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import DeployError
from .options import BACKENDS, CONFIDENCES, DTYPES, FORMATS, MODES, STAGE_POOLS, default_profile_file

COMMANDS = {
    "profile": "measure latency/throughput of every sub-network; save the profile",
    "choose": "the best sub-network under a latency / GMACs / accuracy budget",
    "cascade": "fit and evaluate a confidence cascade of sub-networks",
    "export": "export one sub-network to ONNX, .pt2 or an AOTInductor package",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults after the help text, except where there is nothing to show (None, switches)."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------------------------
# Arguments (no torch)
# ---------------------------------------------------------------------------------------------------------------
def _source_arguments(parser) -> None:
    group = parser.add_argument_group("model and accuracy")
    group.add_argument("--checkpoint", default=None, help="our or a released checkpoint, or a bare state dict (read "
                       "weights_only)")
    group.add_argument("--model", default=None, help="registered model name, e.g. super_deit_s: the model of a "
                       "checkpoint that records none (must agree with one that does); alone, random weights and the "
                       "published ImageNet accuracy")
    group.add_argument("--results", default=None, help="a trainer results.json whose accuracy table to use")


def _timing_arguments(parser) -> None:
    group = parser.add_argument_group("latency measurement")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    group.add_argument("--batch", type=int, default=1, help="batch size the latency is measured at")
    group.add_argument("--dtype", default="fp32", choices=DTYPES, help="input and weight dtype")
    group.add_argument("--mode", default="eager", choices=MODES,
                       help="eager, torch.compile, or a captured CUDA graph (CUDA only)")
    group.add_argument("--backend", default="auto", choices=BACKENDS, help="kernel backend")
    group.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds per sub-network")
    group.add_argument("--warmup", type=int, default=2, help="untimed calls per sub-network first")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--profile", default=None, help="profile file to read and add to (default: "
                       f"{default_profile_file()})")
    group.add_argument("--profile-key", default=None, help="use the profile stored under this key (e.g. one "
                       "measured on the target machine) instead of measuring here")
    group.add_argument("--reprofile", action="store_true", help="measure even when the profile file has a "
                       "profile for these settings")


def _profile_arguments(parser) -> None:
    _source_arguments(parser)
    _timing_arguments(parser)
    parser.add_argument("--subnets", default=None, help="only these, e.g. 224:0.7,224:1 (default: all)")


def _choose_arguments(parser) -> None:
    _source_arguments(parser)
    budget = parser.add_argument_group("budget (exactly one)")
    budget.add_argument("--budget-ms", type=float, default=None, help="latency per batch (measured)")
    budget.add_argument("--budget-gmacs", type=float, default=None, help="GMACs per image")
    budget.add_argument("--min-accuracy", type=float, default=None, help="top-1 %% floor: the cheapest point")
    parser.add_argument("--table", action="store_true", help="print the whole table with the Pareto sets")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write accuracy vs latency / GMACs (PNG)")
    parser.add_argument("--no-latency", action="store_true", help="do not measure or read latencies")
    _timing_arguments(parser)


def _cascade_arguments(parser) -> None:
    _source_arguments(parser)
    data = parser.add_argument_group("labelled images (split into two fixed stratified halves)")
    data.add_argument("--tensors", default=None, help="a torch.save'd dict {'images': [N,C,H,W] float (normalised "
                      "as the model expects), 'labels': [N] int} (read weights_only)")
    data.add_argument("--data", default=None, help="an image folder DIR/<class>/<image> (e.g. IMAGENET/val), "
                      "preprocessed as the checkpoint records (else the architecture's evaluation transform)")
    data.add_argument("--limit", type=int, default=5000, help="at most this many images of --data (a fixed random "
                      "subset)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the stratified calibration/test split")
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--budget-ratio", type=float, default=0.8, help="mean GMACs budget as a fraction of the most "
                     "accurate static sub-network's on the calibration half")
    fit.add_argument("--budget-gmacs", type=float, default=None, help="absolute mean GMACs budget per image")
    fit.add_argument("--max-stages", type=int, default=2, choices=(1, 2, 3))
    fit.add_argument("--confidence", default="auto", choices=("auto",) + CONFIDENCES,
                     help="auto: try both, keep the better on the calibration half")
    fit.add_argument("--stage-pool", default="all", choices=STAGE_POOLS,
                     help="stages from every sub-network, or only from the calibration Pareto front")
    fit.add_argument("--budget-ms", type=float, default=None, help="mean latency budget per image (ms), from "
                     "the profile at --batch (per-image latency = batch latency / batch)")
    fit.add_argument("--splits", type=int, default=0, help="also fit and score the cascade again on this many "
                     "other stratified splits and summarize its gaps (how well the fit generalizes)")
    parser.add_argument("--time", action="store_true", help="also time the cascade against the reference "
                        "sub-network on one test batch (interleaved rounds)")
    _timing_arguments(parser)
    parser.set_defaults(batch=256)
    parser.add_argument("--save", default=None, metavar="JSON", help="write the study (cascade, tables) here")
    parser.add_argument("--plot", default=None, metavar="PNG", help="the static sub-networks on the test half, the "
                        "cascade curve over them and the cascade fitted to the budget")


def _export_arguments(parser) -> None:
    source = parser.add_argument_group("model (a checkpoint, a model name, or both)")
    source.add_argument("--model", default=None, help="registered model name (alone: random weights), e.g. "
                        "super_deit_s; with --checkpoint, the model of a file that records none")
    source.add_argument("--checkpoint", default=None, help="our or a released checkpoint, or a bare state dict "
                        "(read weights_only)")
    parser.add_argument("--img-size", type=int, required=True, help="image size of the sub-network, e.g. 224")
    parser.add_argument("--keep-ratio", type=float, required=True, help="keep rate of the sub-network, e.g. 0.5")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)} (aoti: AOTInductor package)")
    parser.add_argument("--out", required=True, help="output file (.onnx for onnx, .pt2 for pt2 and aoti)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=None, help="a fixed batch size (aoti: our runner refuses "
                       "other batches; PyTorch's loader does not check)")
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size (the default)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="side of the input image (default: the model's largest size; resized inside)")
    parser.add_argument("--with-kept", action="store_true",
                        help="also output the kept token indices of each pruning block (for verification)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip running the export in its runtime against PyTorch eager")


_ARGUMENTS = {"profile": _profile_arguments, "choose": _choose_arguments, "cascade": _cascade_arguments,
              "export": _export_arguments}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m supervit.deploy",
                                     description="Profile, choose, cascade or export the 12 sub-networks of a "
                                                 "SuperViT model.", formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        _ARGUMENTS[name](p)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_arguments(args) -> None:
    """The checks that need only the arguments (before torch loads); DeployError naming the value."""
    if args.command != "export" and args.checkpoint is None and args.model is None:
        raise DeployError("give --checkpoint CKPT or --model NAME (or both)")
    if args.command == "export":
        if args.checkpoint is None and args.model is None:
            raise DeployError("give --model NAME, --checkpoint CKPT, or both")
        if args.format not in FORMATS:
            raise DeployError(f"--format must be one of {list(FORMATS)}, got {args.format!r}")
        return
    if args.batch < 1:
        raise DeployError(f"--batch must be >= 1, got {args.batch}")
    if args.rounds < 1 or args.warmup < 0:
        raise DeployError(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise DeployError(f"--threads must be >= 1, got {args.threads}")
    if args.command == "profile" and args.subnets is not None:
        from ..models.subnet import parse_subnets

        args.subnets = parse_subnets(args.subnets, "--subnets")
    if args.command == "choose" and args.no_latency and args.budget_ms is not None:
        raise DeployError("--budget-ms needs latencies; drop --no-latency")
    if args.command == "cascade":
        if (args.tensors is None) == (args.data is None):
            raise DeployError("give exactly one of --tensors FILE or --data DIR (the labelled images)")
        if args.splits < 0:
            raise DeployError(f"--splits must be >= 0, got {args.splits}")
        if args.limit < 1:
            raise DeployError(f"--limit must be >= 1, got {args.limit}")
        if args.budget_ms is not None and args.budget_gmacs is not None:
            raise DeployError("give at most one of --budget-ms and --budget-gmacs")
        if args.budget_ratio <= 0:
            raise DeployError(f"--budget-ratio must be > 0, got {args.budget_ratio}")


# ---------------------------------------------------------------------------------------------------------------
# Commands (they load torch and the library)
# ---------------------------------------------------------------------------------------------------------------
def _source(args):
    from .source import load_source

    return load_source(args.checkpoint, args.model, getattr(args, "results", None))


def _prepare_device(args):
    """torch threads and the device of the timing arguments, checked."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise DeployError(f"--device must be cpu or cuda[:N], got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeployError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if args.mode == "cuda-graph" and device.type != "cuda":
        raise DeployError("--mode cuda-graph needs --device cuda (CUDA graphs capture GPU work); on CPU use "
                          "--mode eager or compile")
    return device


def obtain_profile(source, args, subnets=None) -> tuple[dict, str]:
    """(profile for the requested settings, how it was obtained: 'saved profile...' or 'measured now').

    A saved profile is reused only when it covers ``subnets`` and was measured soundly (``unsound_reason``); an
    unsound one is measured again, and said so."""
    from . import profile as profiling

    path = args.profile or default_profile_file()
    if args.profile_key:
        stored = profiling.read_profiles(path)
        if args.profile_key not in stored:
            raise DeployError(f"--profile-key {args.profile_key!r} is not in {path!r}; it holds "
                              f"{sorted(stored) or 'no profiles'}")
        why = profiling.unsound_reason(stored[args.profile_key])
        return stored[args.profile_key], "saved profile" + (f" (used as asked, but {why})" if why else "")
    _prepare_device(args)
    key = profiling.profile_key(source.name, args.device, args.batch, args.dtype, args.mode, args.backend)
    saved = None if args.reprofile else profiling.find_profile(path, key)
    wanted = {(s, r) for s, r in (subnets or source.model.subnets())}
    if saved is not None and wanted <= {(r["img_size"], r["keep_ratio"]) for r in saved["rows"]}:
        why = profiling.unsound_reason(saved)
        if not why:
            return saved, "saved profile"
        print(f"note: not reusing the saved profile {key!r}: {why}; measuring again", file=sys.stderr)
    measured = profiling.profile_model(source.model, source.name, device=args.device, batch=args.batch,
                                       dtype=args.dtype, mode=args.mode, backend=args.backend, subnets=subnets,
                                       rounds=args.rounds, warmup=args.warmup, progress=not args.no_progress)
    if measured["spinning_threads"]:
        cond = measured["conditions"]
        print(f"warning: measured with spinning OpenMP threads (OMP_WAIT_POLICY {cond['omp_wait_policy']}, "
              f"{cond['threads']} threads): on a shared CPU these latencies can be many times too slow; the "
              "profile is saved marked as such and not reused. Set OMP_WAIT_POLICY=PASSIVE or --threads 1",
              file=sys.stderr)
    profiling.save_profile(measured, path)
    return measured, "measured now"


def _conditions_line(profile: dict) -> str:
    cond = profile["conditions"]
    return (f"threads {cond['threads']}, OMP_WAIT_POLICY {cond.get('omp_wait_policy', 'not recorded')}, load "
            f"{cond['load_before']} -> {cond['load_after']}")


def run_profile(args) -> int:
    source = _source(args)
    args.reprofile = True  # this command always measures
    profile, _ = obtain_profile(source, args, args.subnets)
    print(f"profile {profile['key']}  ({_conditions_line(profile)})")
    print("| img_size | keep | GMACs | latency ms (median) | min..max ms | IQR/median | img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in profile["rows"]:
        flag = " noisy" if r["noisy"] else ""
        print(f"| {r['img_size']} | {r['keep_ratio']:g} | {r['gmacs']:.4g} | {r['latency_ms']:.3g} | "
              f"{r['min_ms']:.3g}..{r['max_ms']:.3g} | {r['rel_spread']:.2f}{flag} | {r['img_per_s']:.4g} |")
    print(f"saved under that key in {args.profile or default_profile_file()}")
    return 0


def run_choose(args) -> int:
    from . import selector
    from .source import model_gmacs, require_table

    source = _source(args)
    table = require_table(source, "choose")
    subnets = selector.table_subnets(table, source.model.subnets()) or None  # the sub-networks evaluated
    budgets = dict(latency_ms=args.budget_ms, gmacs=args.budget_gmacs, min_accuracy=args.min_accuracy)
    profile, how = (None, "") if args.no_latency else obtain_profile(source, args, subnets)
    points = selector.operating_points(table, model_gmacs(source.model, subnets), profile)
    chosen = selector.choose(points, **budgets)
    print(f"accuracy: {table['label']}")
    if len(points) < len(source.model.subnets()):
        print(f"the table covers {len(points)} of the model's {len(source.model.subnets())} sub-networks: "
              "choosing among those")
    if profile is not None:
        print(f"latency: {how} {profile['key']} ({_conditions_line(profile)})")
    if args.table:
        print(selector.format_points(points, chosen))
    (kind, value), = ((k, v) for k, v in budgets.items() if v is not None)
    latency = f", {chosen['latency_ms']:.3g} ms at batch {args.batch}" if chosen["latency_ms"] is not None else ""
    print(f"chosen for {kind} {value:g}: img_size {chosen['img_size']}, keep_ratio {chosen['keep_ratio']:g} "
          f"(top-1 {chosen['acc1']:.2f}%, {chosen['gmacs']:.4g} GMACs{latency})")
    if args.plot:
        from .plotting import plot_operating_points

        budget = {"latency_ms": ("latency_ms", value), "gmacs": ("gmacs", value)}.get(kind)
        plot_operating_points(points, args.plot, table["label"], chosen, budget)
        print(f"wrote {args.plot}")
    return 0


def run_cascade(args) -> int:
    import json

    from ..files import atomic_write
    from . import cascade_study, images, selector
    from .source import model_gmacs

    source = _source(args)
    model = source.model.to(_prepare_device(args))
    if args.tensors:
        data, labels = images.load_tensors(args.tensors, model)
    else:
        data, labels = images.load_image_folder(args.data, model, args.limit, source.checkpoint)
    subnets = (selector.table_subnets(source.table, model.subnets()) if source.table else None) or model.subnets()
    gmacs = model_gmacs(model, subnets)
    kinds = CONFIDENCES if args.confidence == "auto" else (args.confidence,)
    costs, cost_name, budget = None, "gmacs", args.budget_gmacs
    if args.budget_ms is not None:
        profile, _ = obtain_profile(source, args, subnets)
        costs = {(r["img_size"], r["keep_ratio"]): r["latency_ms"] / args.batch for r in profile["rows"]}
        cost_name, budget = "latency_ms", args.budget_ms
    res = cascade_study.study(model, data, labels, gmacs, budget_ratio=args.budget_ratio, budget=budget, costs=costs,
                              cost_name=cost_name, seed=args.split_seed, max_stages=args.max_stages,
                              confidences=kinds, stage_pool=args.stage_pool, batch_size=args.batch,
                              splits=args.splits, progress=not args.no_progress)
    print(cascade_study.format_study(res))
    if args.splits:
        print(cascade_study.format_split_study(res["splits"]))
    if args.time:
        cascade_study.time_study(model, res, data, labels, args.batch)
        print(cascade_study.format_timing(res))
    if args.save:
        with atomic_write(args.save, make_folder=True) as tmp, open(tmp, "w") as handle:
            json.dump(res, handle, indent=1, default=float)
        print(f"wrote {args.save}")
    if args.plot:
        from .plotting import plot_cascade

        plot_cascade(res, args.plot, f"{source.label}: cascade on the test half")
        print(f"wrote {args.plot}")
    return 0


def run_export(args) -> int:
    from tqdm import tqdm

    from . import export

    model = _source(args).model
    img_size, keep_ratio = export.check_export_subnet(model, args.img_size, args.keep_ratio)
    path, side = export.check_export_args(model, args.format, args.out, args.batch, args.input_size)
    steps = ["trace and translate to core ATen", f"write {args.format}"] + ([] if args.no_verify else ["verify"])
    with tqdm(total=len(steps), desc="export", unit="step", file=sys.stderr, leave=False,
              disable=args.no_progress) as bar:
        bar.set_postfix_str(steps[0])
        result = export.export_subnet(model, img_size, keep_ratio, args.format, path, args.batch, side,
                                      args.with_kept)
        bar.update(2)
        check = None
        if not args.no_verify:
            bar.set_postfix_str(steps[-1])
            check = export.parity(result, model)
            bar.update(1)
    batch = f"batch {result.batch}" if result.batch else "dynamic batch"
    print(f"wrote {result.path} ({result.format}, {result.size_bytes / 2**20:.1f} MiB): sub-network "
          f"({img_size}, {keep_ratio:g}), {batch}, input [B, {model.in_chans}, {side}, {side}], outputs "
          f"{', '.join(result.output_names)}; {result.seconds:.1f} s")
    if check is not None:
        kept = "" if check["kept_equal"] is None else f", kept indices equal: {check['kept_equal']}"
        print(f"verified in its runtime against PyTorch eager: max |logits diff| = {check['max_abs_diff']:.2e}{kept}")
    return 0


_COMMANDS = {"profile": run_profile, "choose": run_choose, "cascade": run_cascade, "export": run_export}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        if "torch" not in sys.modules:  # read by the OpenMP runtime when torch loads
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return int(_COMMANDS[args.command](args) or 0)
    except (DeployError, ValueError) as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
