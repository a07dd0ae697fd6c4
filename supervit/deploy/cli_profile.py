"""``python -m supervit.deploy profile``: time every sub-network and save the profile keyed by its settings."""
from __future__ import annotations

from . import cli_common
from .model_source import load_source
from .profile import parse_subnets


def add_arguments(parser) -> None:
    cli_common.add_source_arguments(parser)
    cli_common.add_timing_arguments(parser)
    parser.add_argument("--subnets", default=None, help="only these, e.g. 224:0.7,224:1 (default: all)")


def main(args) -> int:
    source = load_source(args.checkpoint, args.model, args.results)
    subnets = parse_subnets(args.subnets) if args.subnets else None
    args.reprofile = True  # this command always measures
    profile, _ = cli_common.obtain_profile(source, args, subnets)
    cond = profile["conditions"]
    print(f"profile {profile['key']}  (threads {cond['threads']}, load {cond['load_before']} -> "
          f"{cond['load_after']})")
    print("| img_size | keep | GMACs | latency ms (median) | min..max ms | IQR/median | img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in profile["rows"]:
        flag = " noisy" if r["noisy"] else ""
        print(f"| {r['img_size']} | {r['keep_ratio']:g} | {r['gmacs']:.4g} | {r['latency_ms']:.3g} | "
              f"{r['min_ms']:.3g}..{r['max_ms']:.3g} | {r['rel_spread']:.2f}{flag} | {r['img_per_s']:.4g} |")
    print(f"saved under that key in {args.profile or cli_common.default_profile_file()}")
    return 0
