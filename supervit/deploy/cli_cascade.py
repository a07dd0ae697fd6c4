"""``python -m supervit.deploy cascade``: fit a confidence cascade on one half of a labelled set, report the other."""
from __future__ import annotations

import json
import os

import torch

from ..models.checkpoint import load_failure
from . import cascade as casc
from . import cli_common
from .cascade_study import format_split_study, format_study, format_timing, study, time_study
from .errors import DeployError
from ..files import atomic_write
from .model_source import load_source


def add_arguments(parser) -> None:
    cli_common.add_source_arguments(parser)
    data = parser.add_argument_group("labelled images (split into two fixed stratified halves)")
    data.add_argument("--tensors", default=None, help="a torch.save'd dict {'images': [N,C,H,W] float (normalised), "
                      "'labels': [N] int} (read weights_only)")
    data.add_argument("--data", default=None, help="an image folder DIR/<class>/<image> (e.g. IMAGENET/val)")
    data.add_argument("--limit", type=int, default=5000, help="at most this many images of --data (stratified)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the stratified calibration/test split")
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--budget-ratio", type=float, default=0.8, help="mean GMACs budget as a fraction of the most "
                     "accurate static sub-network's on the calibration half")
    fit.add_argument("--budget-gmacs", type=float, default=None, help="absolute mean GMACs budget per image")
    fit.add_argument("--max-stages", type=int, default=2, choices=(1, 2, 3))
    fit.add_argument("--confidence", default="auto", choices=("auto",) + casc.CONFIDENCES,
                     help="auto: try both, keep the better on the calibration half")
    fit.add_argument("--stage-pool", default="all", choices=casc.STAGE_POOLS,
                     help="stages from every sub-network, or only from the calibration Pareto front")
    fit.add_argument("--budget-ms", type=float, default=None, help="mean latency budget per image (ms), from "
                     "the profile at --batch (per-image latency = batch latency / batch)")
    fit.add_argument("--splits", type=int, default=0, help="also fit and score the cascade again on this many "
                     "other stratified splits and summarize its gaps (how well the fit generalizes)")
    parser.add_argument("--time", action="store_true", help="also time the cascade against the reference "
                        "sub-network on one test batch (interleaved rounds)")
    cli_common.add_timing_arguments(parser)
    parser.set_defaults(batch=256)
    parser.add_argument("--save", default=None, metavar="JSON", help="write the study (cascade, tables) here")
    parser.add_argument("--plot", default=None, metavar="PNG", help="cascade curve over the static points")


def _tensors(path: str):
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only parsing runs no code: any failure means a bad file
        raise DeployError(f"--tensors {path!r} cannot be read: {load_failure(err)}") from None
    if not isinstance(data, dict) or not {"images", "labels"} <= set(data):
        raise DeployError(f"--tensors {path!r} must hold a dict with 'images' [N,C,H,W] and 'labels' [N]")
    images, labels = data["images"], data["labels"]
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DeployError(f"--tensors {path!r}: images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                          "must be [N, C, H, W] and [N]")
    return images.float(), labels.long()


def _image_folder(path: str, model, limit: int):
    import timm.data
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise DeployError(f"--data {path!r} is not a folder of class folders")
    config = timm.data.resolve_data_config({}, model=model)
    config["input_size"] = (model.in_chans, model.img_sizes[-1], model.img_sizes[-1])
    dataset = ImageFolder(path, transform=timm.data.create_transform(**config))
    labels = torch.tensor(dataset.targets)
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep.tolist()), batch_size=64)
    images = torch.cat([x for x, _ in loader])
    return images, labels[keep]


def _write_json(obj, path: str):
    with atomic_write(path, make_folder=True) as tmp, open(tmp, "w") as handle:
        json.dump(obj, handle, indent=1, default=float)


def main(args) -> int:
    if (args.tensors is None) == (args.data is None):
        raise DeployError("give exactly one of --tensors FILE or --data DIR (the labelled images)")
    if args.batch < 1:
        raise DeployError(f"--batch must be >= 1, got {args.batch}")
    if args.splits < 0:
        raise DeployError(f"--splits must be >= 0, got {args.splits}")
    source = load_source(args.checkpoint, args.model, args.results)
    model = source.model.to(args.device)
    images, labels = _tensors(args.tensors) if args.tensors else _image_folder(args.data, model, args.limit)
    gmacs = cli_common.model_gmacs(model)
    kinds = casc.CONFIDENCES if args.confidence == "auto" else (args.confidence,)
    if args.budget_ms is not None and args.budget_gmacs is not None:
        raise DeployError("give at most one of --budget-ms and --budget-gmacs")
    costs, cost_name, budget = None, "gmacs", args.budget_gmacs
    if args.budget_ms is not None:
        profile, _ = cli_common.obtain_profile(source, args)
        costs = {(r["img_size"], r["keep_ratio"]): r["latency_ms"] / args.batch for r in profile["rows"]}
        cost_name, budget = "latency_ms", args.budget_ms
    res = study(model, images, labels, gmacs, budget_ratio=args.budget_ratio, budget=budget, costs=costs,
                cost_name=cost_name, seed=args.split_seed, max_stages=args.max_stages, confidences=kinds,
                stage_pool=args.stage_pool, batch_size=args.batch, splits=args.splits, progress=not args.no_progress)
    print(format_study(res))
    if args.splits:
        print(format_split_study(res["splits"]))
    if args.time:
        time_study(model, res, images, labels, args.batch)
        print(format_timing(res))
    if args.save:
        _write_json(res, args.save)
        print(f"wrote {args.save}")
    if args.plot:
        from .plotting import plot_cascade

        plot_cascade(res, args.plot, f"{source.name}: cascade on the test half")
        print(f"wrote {args.plot}")
    return 0
