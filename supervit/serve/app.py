"""What the server needs before Ray starts: the model source checked, its latency profiles at several batch sizes,
its accuracy table, and the plain settings every replica is built from.

Profiles are the deploy profiles of this device (``python -m supervit.deploy profile``), one per batch size, read
from the profile file when one measured under the same settings and thread count is there, measured (and saved)
otherwise. Measuring happens here, in the command's process before the server starts, on an otherwise idle model.
"""
from __future__ import annotations

import math

from supervit import deploy

from .policy import latency_from_profiles

DEVICE, DTYPE, MODE, BACKEND = "cpu", "fp32", "eager", "auto"   # what the server runs (and so what is profiled)


def latency_table(source, subnets, batches, threads: int, path: str, reprofile: bool = False, rounds: int = 10,
                  warmup: int = 2, progress: bool = True, log=print) -> dict:
    """``{str(subnet): {batch: median ms}}`` of ``subnets`` at every batch size in ``batches``."""
    profiles = []
    for batch in batches:
        key = deploy.profile_key(source.name, DEVICE, batch, DTYPE, MODE, BACKEND)
        saved = None if reprofile else deploy.find_profile(path, key)
        if not _usable(saved, subnets, threads):
            log(f"profiling {source.name} at batch {batch} ({len(subnets)} operating points, {threads} threads)")
            saved = deploy.profile_model(source.model, source.name, device=DEVICE, batch=batch, dtype=DTYPE,
                                         mode=MODE, backend=BACKEND, subnets=subnets, rounds=rounds, warmup=warmup,
                                         progress=progress)
            deploy.save_profile(saved, path)
        profiles.append(saved)
    return {str(s): by_batch for s, by_batch in latency_from_profiles(profiles, subnets).items()}


def _usable(profile, subnets, threads: int) -> bool:
    """A stored profile covers ``subnets``, was measured with ``threads`` torch threads, and is sound
    (``deploy.unsound_reason``: not taken with spinning OpenMP threads, its thread wait policy recorded)."""
    conditions = (profile or {}).get("conditions") or {}
    if profile is None or deploy.unsound_reason(profile) or conditions.get("threads") != threads:
        return False
    covered = {(r["img_size"], r["keep_ratio"]) for r in profile.get("rows", [])}
    return all((s.img_size, s.keep_ratio) in covered for s in subnets)


def input_spec(model, mean=None, std=None) -> dict:
    """The model's input (channels, largest side) and normalisation: the given mean/std, else the model's own
    (timm's pretrained config; averaged over RGB for a one-channel model)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels = int(model.in_chans)

    def default(values):
        values = tuple(values)
        return (sum(values) / len(values),) if channels == 1 and len(values) == 3 else values

    return {"channels": channels, "side": int(model.img_sizes[-1]),
            "mean": tuple(mean) if mean else default(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(std) if std else default(cfg.get("std", (0.229, 0.224, 0.225)))}


def replica_config(args, log=print) -> dict:
    """Load and check the model source, obtain its profiles, and return the settings of every replica.

    Raises ``DeployError`` / ``ValueError`` (one line for the user) when something does not fit.
    """
    import torch

    from supervit import models

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source = deploy.load_source(checkpoint=args.checkpoint, model_name=args.model, results=args.results)
    model = source.model
    if args.mode == "static":
        subnets = models.check_subnets(model, [args.subnet], trained=True, arg="--subnet")
    else:
        subnets = models.check_subnets(model, args.subnets or models.model_subnets(model), trained=True,
                                       arg="--subnets")
    table = source.table
    if args.mode == "adaptive":
        table = deploy.require_table(source, "--mode adaptive (it picks the most accurate point that fits)")
    accuracy = {str(s): math.nan for s in subnets}
    if table is not None:
        gmacs = {tuple(s): models.flops(model, *s) for s in subnets}
        for point in deploy.operating_points(table, gmacs):
            accuracy[str(models.Subnet(point["img_size"], point["keep_ratio"]))] = point["acc1"]
    latency = latency_table(source, subnets, args.batch_sizes, args.threads, args.profile_file,
                            reprofile=args.reprofile, rounds=args.rounds, warmup=args.warmup,
                            progress=not args.no_progress, log=log)
    config = {
        "source": {"checkpoint": args.checkpoint, "model_name": args.model, "results": args.results},
        "name": source.name, "seed": args.seed, "threads": args.threads, "mode": args.mode,
        "slo_ms": args.slo_ms, "transit_ms": args.transit_ms, "margin": args.margin,
        "rate_guard": not args.no_rate_guard,
        "quantile": args.calibration_quantile, "window": args.calibration_window,
        "latency_ms": latency, "accuracy": accuracy, "accuracy_known": table is not None,
        "accuracy_label": table["label"] if table is not None else None,
        "input": input_spec(model, args.mean, args.std), "max_body_bytes": int(args.max_body_mb * 2**20),
    }
    del source, model  # the replicas load their own copy; this process keeps none
    return config
