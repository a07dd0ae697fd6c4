"""``python -m supervit.deploy``: profile / choose / cascade / export.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and ``main(args) -> int``; the
module is imported only when its subcommand runs (``--help`` still imports torch and timm with the ``supervit``
package, about 4 s). A ``DeployError`` (or ``ValueError``) raised by a subcommand is printed as one line and exits
with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under supervit.deploy that implements it, one-line help)
SUBCOMMANDS = {
    "profile": ("cli_profile", "measure latency/throughput of every sub-network; save the profile"),
    "choose": ("cli_choose", "the best sub-network under a latency / GMACs / accuracy budget"),
    "cascade": ("cli_cascade", "fit and evaluate a confidence cascade of sub-networks"),
    "export": ("cli_export", "export one sub-network to ONNX, .pt2 or an AOTInductor package"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults after the help text, except where there is nothing to show (None, switches)."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _module(name: str):
    return importlib.import_module(f"supervit.deploy.{SUBCOMMANDS[name][0]}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m supervit.deploy",
                                     description="Profile, choose, cascade or export the 12 sub-networks of a "
                                                 "SuperViT model.",
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        if name in argv:  # import (and so fill in) only the subcommand that is asked for
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from .errors import DeployError
    try:
        return int(_module(args.command).main(args) or 0)
    except (DeployError, ValueError) as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
