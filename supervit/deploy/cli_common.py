"""Arguments and steps the profile / choose / cascade subcommands share."""
from __future__ import annotations

import os

import torch

from . import profile as profiling
from .errors import DeployError


def default_profile_file() -> str:
    """Where profiles are kept unless --profile says otherwise: $XDG_CACHE_HOME/supervit/profiles.json."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "supervit", "profiles.json")


def add_source_arguments(parser) -> None:
    group = parser.add_argument_group("model and accuracy")
    group.add_argument("--checkpoint", default=None, help="our or a released checkpoint (read weights_only)")
    group.add_argument("--model", default=None, help="registered model name without --checkpoint (random "
                       "weights; published ImageNet accuracy), e.g. super_deit_s")
    group.add_argument("--results", default=None, help="a trainer results.json whose accuracy table to use")


def add_timing_arguments(parser) -> None:
    group = parser.add_argument_group("latency measurement")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    group.add_argument("--batch", type=int, default=1, help="batch size the latency is measured at")
    group.add_argument("--dtype", default="fp32", choices=sorted(profiling.DTYPES), help="input and weight dtype")
    group.add_argument("--mode", default="eager", choices=profiling.MODES,
                       help="eager, torch.compile, or a captured CUDA graph (CUDA only)")
    group.add_argument("--backend", default="auto", choices=profiling.BACKENDS, help="kernel backend")
    group.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds per sub-network")
    group.add_argument("--warmup", type=int, default=2, help="untimed calls per sub-network first")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--profile", default=None, help="profile file to read and add to (default: "
                       f"{default_profile_file()})")
    group.add_argument("--profile-key", default=None, help="use the profile stored under this key (e.g. one "
                       "measured on the target machine) instead of measuring here")
    group.add_argument("--reprofile", action="store_true", help="measure even when the profile file has a "
                       "profile for these settings")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_timing_arguments(args) -> None:
    if args.batch < 1:
        raise DeployError(f"--batch must be >= 1, got {args.batch}")
    if args.rounds < 1 or args.warmup < 0:
        raise DeployError(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if args.threads is not None:
        if args.threads < 1:
            raise DeployError(f"--threads must be >= 1, got {args.threads}")
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


def obtain_profile(source, args, subnets=None) -> tuple[dict, bool]:
    """(profile for the requested settings, whether it was read from the profile file rather than measured)."""
    path = args.profile or default_profile_file()
    if getattr(args, "profile_key", None):
        stored = profiling.read_profiles(path)
        if args.profile_key not in stored:
            raise DeployError(f"--profile-key {args.profile_key!r} is not in {path!r}; it holds "
                              f"{sorted(stored) or 'no profiles'}")
        return stored[args.profile_key], True
    check_timing_arguments(args)
    key = profiling.profile_key(source.name, args.device, args.batch, args.dtype, args.mode, args.backend)
    saved = None if args.reprofile else profiling.find_profile(path, key)
    wanted = {(s, r) for s, r in (subnets or source.model.subnets())}
    if saved is not None and wanted <= {(r["img_size"], r["keep_ratio"]) for r in saved["rows"]}:
        return saved, True
    measured = profiling.profile_model(source.model, source.name, device=args.device, batch=args.batch,
                                       dtype=args.dtype, mode=args.mode, backend=args.backend, subnets=subnets,
                                       rounds=args.rounds, warmup=args.warmup, progress=not args.no_progress)
    profiling.save_profile(measured, path)
    return measured, False


def model_gmacs(model) -> dict:
    """{(img_size, keep_ratio): GMACs} of every sub-network."""
    from supervit.models import flops

    return {sub: flops(model, *sub) for sub in model.subnets()}
