"""``python -m supervit.serve``: serve one SuperViT over HTTP on Ray Serve, adapting its operating point to the load.

Arguments are parsed and checked before torch or ray is imported (``--help`` and argument errors answer at once).
A user error prints one line and exits with code 2.
"""
from __future__ import annotations

import _thread
import argparse
import os
import signal
import sys
import threading
import time

from supervit.models import Subnet, SubnetError, parse_subnets

from .policy import DEFAULT_MARGIN, DEFAULT_QUANTILE, DEFAULT_WINDOW

DESCRIPTION = """\
Serve one SuperViT model over HTTP (Ray Serve). In adaptive mode each batch runs on the most accurate operating
point whose profiled latency fits the time left until the oldest queued request's deadline; static mode serves one
point. Requests that cannot be answered in time get a prompt 503.

  POST /        {"image": "<base64 PNG/JPEG>"} or {"tensor": [C, S, S] lists | {"data": b64 float32, "shape": [...]}}
  GET  /info    operating points, policy state, counters, resident memory
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Defaults after the help text, except where there is nothing to show (None, switches)."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "%(default)" in (action.help or ""):
            return action.help
        return f"{action.help} (default: %(default)s)"


def _floats(arg: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values:
            raise argparse.ArgumentTypeError(f"{arg} must be comma-separated numbers (e.g. 0.485,0.456,0.406), "
                                             f"got {text!r}")
        return values
    return parse


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] != 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes must be comma-separated ints >= 1 that include 1 "
                                         f"(e.g. 1,2,4,8), got {text!r}")
    return sizes


def _subnet(text: str) -> Subnet:
    try:
        return Subnet.parse(text, "--subnet")
    except SubnetError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--subnet: ")) from None


def _subnets(text: str) -> list[Subnet]:
    try:
        return parse_subnets(text, "--subnets")
    except SubnetError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--subnets: ")) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """A user error: one line on stderr, exit code 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    default_threads = max(1, (os.cpu_count() or 1))
    parser = _Parser(prog="python -m supervit.serve", description=DESCRIPTION,
                                     formatter_class=_HelpFormatter)
    source = parser.add_argument_group("model and accuracy")
    source.add_argument("--checkpoint", default=None, help="our or a released checkpoint (read weights-only)")
    source.add_argument("--model", default=None, help="registered model name (super_deit_s, super_lvvit_s); "
                        "without --checkpoint: random weights and the published accuracy table")
    source.add_argument("--results", default=None, help="a trainer results.json whose accuracy table to use")
    policy = parser.add_argument_group("serving")
    policy.add_argument("--slo-ms", type=float, default=100.0, help="latency target of every request, ms, as the "
                        "client sees it")
    policy.add_argument("--transit-ms", type=float, default=10.0, help="part of the SLO left for the HTTP path "
                        "outside the replica (proxy, network): the replica answers within SLO - this")
    policy.add_argument("--mode", choices=("adaptive", "static"), default="adaptive",
                        help="adaptive: the operating point follows the load; static: always --subnet")
    policy.add_argument("--subnet", type=_subnet, default=None, help="the one operating point of --mode static, "
                        "SIZE:KEEP (e.g. 224:1)")
    policy.add_argument("--subnets", type=_subnets, default=None, help="adaptive: the candidate points "
                        "(default: every trained point of the model)")
    policy.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="relative headroom on every "
                        "predicted latency, on top of the observed slowdown")
    policy.add_argument("--no-rate-guard", action="store_true", help="adaptive: do not restrict the choice to "
                        "points that sustain the recent arrival rate (deadlines alone decide)")
    policy.add_argument("--calibration-quantile", type=float, default=DEFAULT_QUANTILE, help="predictions scale "
                        "by this quantile of recent observed / profiled batch times")
    policy.add_argument("--calibration-window", type=int, default=DEFAULT_WINDOW, help="how many recent batches "
                        "that quantile is taken over")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on")
    server.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    server.add_argument("--replicas", type=int, default=1, help="model replicas (each holds one weight copy and "
                        "its own queue)")
    server.add_argument("--threads", type=int, default=None, help="torch CPU threads per replica (default: the "
                        f"cores divided by --replicas; {default_threads} cores here)")
    server.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get 413")
    server.add_argument("--mean", type=_floats("--mean"), default=None, help="input normalisation mean, one value "
                        "per channel (default: the model's own)")
    server.add_argument("--std", type=_floats("--std"), default=None, help="input normalisation std (default: the "
                        "model's own)")
    server.add_argument("--seed", type=int, default=0, help="seed of the random weights of a model without a "
                        "checkpoint")
    server.add_argument("--startup-timeout", type=float, default=300.0, help="give up (exit code 1, Ray shut down) "
                        "when the server is not serving this many seconds after Ray starts (profiling comes before)")
    server.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run "
                        "until Ctrl-C or SIGTERM)")
    prof = parser.add_argument_group("latency profiles (python -m supervit.deploy profile, one per batch size)")
    prof.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 2, 4, 8, 16], metavar="LIST",
                      help="batch sizes profiled; the largest is the largest batch served (default: 1,2,4,8,16)")
    prof.add_argument("--profile", dest="profile_file", default=None, help="profile file to read and add to "
                      "(default: the deploy profile file, ~/.cache/supervit/profiles.json)")
    prof.add_argument("--reprofile", action="store_true", help="measure even when the file has matching profiles")
    prof.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds per point and batch size")
    prof.add_argument("--warmup", type=int, default=2, help="untimed calls per point first")
    prof.add_argument("--no-progress", action="store_true", help="no progress bar while profiling")
    return parser


def check_args(args) -> None:
    """Cross-argument rules; ``ValueError`` naming the argument and what is accepted."""
    if args.checkpoint is None and args.model is None:
        raise ValueError("give --checkpoint CKPT or --model NAME (e.g. super_deit_s)")
    if not args.slo_ms > 0:
        raise ValueError(f"--slo-ms must be > 0, got {args.slo_ms:g}")
    if not 0 <= args.transit_ms < args.slo_ms:
        raise ValueError(f"--transit-ms must be in [0, --slo-ms), got {args.transit_ms:g}")
    if args.mode == "static" and args.subnet is None:
        raise ValueError("--mode static needs --subnet SIZE:KEEP (e.g. 224:1)")
    if args.mode == "adaptive" and args.subnet is not None:
        raise ValueError("--subnet is for --mode static; adaptive mode takes --subnets LIST (its candidates)")
    if args.mode == "static" and args.subnets is not None:
        raise ValueError("--subnets is for --mode adaptive; static mode takes one --subnet")
    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not (args.margin >= 0):
        raise ValueError(f"--margin must be >= 0, got {args.margin:g}")
    if not 0 < args.calibration_quantile <= 1:
        raise ValueError(f"--calibration-quantile must be in (0, 1], got {args.calibration_quantile:g}")
    if args.calibration_window < 1:
        raise ValueError(f"--calibration-window must be >= 1, got {args.calibration_window}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb:g}")
    if not args.startup_timeout > 0:
        raise ValueError(f"--startup-timeout must be > 0 seconds, got {args.startup_timeout:g}")
    if args.duration is not None and not args.duration > 0:
        raise ValueError(f"--duration must be > 0 seconds, got {args.duration:g}")
    if args.rounds < 1 or args.warmup < 0:
        raise ValueError(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.replicas)


def prepare(args) -> tuple[dict, int]:
    """(the replicas' settings, the port to listen on): the model checked and profiled, before Ray starts."""
    # before torch loads (here and in Ray's workers, which inherit the environment): idle OpenMP threads that spin
    # steal the cores of the proxy, the other replicas and everything else on the machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from supervit import deploy

    from .app import replica_config
    from .server import check_port

    if args.profile_file is None:
        args.profile_file = deploy.default_profile_file()
    port = check_port(args.host, args.port)
    config = replica_config(args, log=lambda line: print(f"supervit.serve: {line}", file=sys.stderr, flush=True))
    return config, port


def serve(args, config: dict, port: int) -> int:
    """Run the server until Ctrl-C, SIGTERM or --duration; shut Serve and Ray down. Exit code 1 when it did not
    start within --startup-timeout (or was interrupted while starting)."""
    from .server import running

    stop, abort = threading.Event(), threading.Event()

    def interrupt(*_):
        abort.set()
        raise KeyboardInterrupt

    def overrun():
        abort.set()
        _thread.interrupt_main()  # Ray may swallow it in code that defers SIGINT: the flag is checked again below

    signal.signal(signal.SIGTERM, interrupt)  # while starting: unwind (and so stop Ray) as Ctrl-C does
    timer = threading.Timer(args.startup_timeout, overrun)
    timer.daemon = True
    timer.start()
    started = False
    try:
        with running(config, args.host, port, args.replicas):
            timer.cancel()
            if abort.is_set():
                raise KeyboardInterrupt  # the timer or a SIGTERM fired while Ray's code kept the interrupt
            started = True
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            print(f"supervit.serve: {config['name']} ({args.mode}"
                  + (f" {args.subnet}" if args.mode == "static" else f", {len(config['latency_ms'])} points")
                  + f", SLO {args.slo_ms:g} ms, {args.replicas} replica(s) x {args.threads} thread(s)) at "
                  f"http://{args.host}:{port}/ - Ctrl-C stops", flush=True)
            end = None if args.duration is None else time.monotonic() + args.duration
            while not stop.wait(0.2):
                if end is not None and time.monotonic() >= end:
                    break
            print("supervit.serve: stopping", flush=True)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: a SIGTERM inside ray.init, whose handler is sys.exit(15)
        if started:
            raise
        timer.cancel()
        print(f"supervit.serve: error: the server did not start within --startup-timeout {args.startup_timeout:g} s "
              "(or was interrupted while starting); Ray was shut down", file=sys.stderr, flush=True)
        return 1
    print("supervit.serve: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        config, port = prepare(args)
    except ValueError as err:  # DeployError, SubnetError, PolicyError are ValueErrors
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return serve(args, config, port)


if __name__ == "__main__":
    sys.exit(main())
