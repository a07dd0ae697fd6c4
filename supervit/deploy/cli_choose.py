"""``python -m supervit.deploy choose``: the best sub-network under a latency / GMACs / accuracy budget."""
from __future__ import annotations

from . import choose as selector
from . import cli_common
from .errors import DeployError
from .model_source import load_source, require_table


def add_arguments(parser) -> None:
    cli_common.add_source_arguments(parser)
    budget = parser.add_argument_group("budget (exactly one)")
    budget.add_argument("--budget-ms", type=float, default=None, help="latency per batch (measured)")
    budget.add_argument("--budget-gmacs", type=float, default=None, help="GMACs per image")
    budget.add_argument("--min-accuracy", type=float, default=None, help="top-1 %% floor: the cheapest point")
    parser.add_argument("--table", action="store_true", help="print the whole table with the Pareto sets")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write accuracy vs latency / GMACs (PNG)")
    parser.add_argument("--no-latency", action="store_true", help="do not measure or read latencies")
    cli_common.add_timing_arguments(parser)


def main(args) -> int:
    source = load_source(args.checkpoint, args.model, args.results)
    table = require_table(source, "choose")
    budgets = dict(latency_ms=args.budget_ms, gmacs=args.budget_gmacs, min_accuracy=args.min_accuracy)
    if args.no_latency and args.budget_ms is not None:
        raise DeployError("--budget-ms needs latencies; drop --no-latency")
    profile, read = (None, False) if args.no_latency else cli_common.obtain_profile(source, args)
    points = selector.operating_points(table, cli_common.model_gmacs(source.model), profile)
    chosen = selector.choose(points, **budgets)
    print(f"accuracy: {table['label']}")
    if profile is not None:
        cond = profile["conditions"]
        print(f"latency: {'saved profile' if read else 'measured now'} {profile['key']} (threads "
              f"{cond['threads']}, load {cond['load_before']} -> {cond['load_after']})")
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
