"""``python -m supervit.serve``: --help and argument errors answer without torch or ray; user errors are one line
with exit code 2."""
import os
import socket
import subprocess
import sys

import pytest

from serve_helpers import write_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "supervit.serve", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_answers_without_importing_torch_or_ray():
    code = ("import runpy, sys\nsys.argv = ['-m', '--help']\ntry:\n"
            "    runpy.run_module('supervit.serve', run_name='__main__', alter_sys=True)\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'timm') if m in sys.modules)\n"
            "assert not heavy, f'{heavy} imported for --help'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--slo-ms", "--mode {adaptive,static}", "--subnet", "--replicas", "--batch-sizes", "--margin"):
        assert flag in done.stdout, flag


@pytest.mark.parametrize("argv, message", [
    (["--slo-ms", "100"], "give --checkpoint CKPT or --model NAME"),
    (["--model", "super_deit_s", "--mode", "static"], "--mode static needs --subnet SIZE:KEEP"),
    (["--model", "super_deit_s", "--subnet", "224:1"], "--subnet is for --mode static"),
    (["--model", "super_deit_s", "--mode", "static", "--subnet", "224"], "argument --subnet: expected IMG_SIZE"),
    (["--model", "super_deit_s", "--slo-ms", "0"], "--slo-ms must be > 0"),
    (["--model", "super_deit_s", "--slo-ms", "50", "--transit-ms", "60"], "--transit-ms must be in [0, --slo-ms)"),
    (["--model", "super_deit_s", "--batch-sizes", "2,4"], "--batch-sizes must be comma-separated ints >= 1 that "
                                                          "include 1"),
    (["--model", "super_deit_s", "--replicas", "0"], "--replicas must be >= 1"),
    (["--model", "super_deit_s", "--mode", "fast"], "argument --mode: invalid choice"),
    (["--model", "super_deit_s", "--mean", "a,b"], "--mean must be comma-separated numbers"),
])
def test_argument_errors_are_one_line_with_exit_code_2(argv, message):
    done = run_cli(*argv, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("python -m supervit.serve: error: ") and message in lines[0], lines[0]


def test_port_in_use_is_a_user_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = run_cli("--model", "super_deit_s", "--port", str(busy.getsockname()[1]), timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--port" in done.stderr and "cannot be used" in done.stderr


def test_model_errors_name_the_argument(tmp_path):
    done = run_cli("--model", "super_nothing")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "super_nothing" in done.stderr and "super_deit_s" in done.stderr
    no_table = write_tiny_checkpoint(tmp_path / "no_table.pth", with_table=False)
    done = run_cli("--checkpoint", no_table)
    assert done.returncode == 2 and "needs accuracy numbers" in done.stderr, done.stderr
    done = run_cli("--checkpoint", no_table, "--mode", "static", "--subnet", "20:1")
    assert done.returncode == 2 and "--subnet" in done.stderr and "128:1" in done.stderr, done.stderr


def _start_then(tmp_path, *extra, signal_when_ray_runs=None, limit_s=150.0):
    """Start a server on the tiny model and follow its processes until it exits (killed after ``limit_s``);
    ``signal_when_ray_runs``: a signal sent once Ray's GCS and raylet run. Returns (exit code, stderr, processes
    seen below it)."""
    import signal
    import time

    from serve_helpers import descendants

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    proc = subprocess.Popen([sys.executable, "-m", "supervit.serve", "--checkpoint", checkpoint, "--port", "0",
                             "--threads", "1", "--batch-sizes", "1,2", "--rounds", "1", "--warmup", "0",
                             "--no-progress", "--profile", str(tmp_path / "profiles.json"), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, sent, end = set(), False, time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < end:  # collect Ray's processes while they live
        seen.update(descendants(proc.pid))
        if signal_when_ray_runs and not sent and {"gcs_server", "raylet"} <= {name for _, name in seen}:
            proc.send_signal(signal_when_ray_runs)
            sent = True
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err, seen


def _left_alive(seen, grace_s=30.0):
    """The processes of ``seen`` still alive after up to ``grace_s`` (Ray's agents exit shortly after its raylet)."""
    import time

    from serve_helpers import alive

    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(alive(pid) for pid, _ in seen):
        time.sleep(0.5)
    return [(pid, name) for pid, name in seen if alive(pid)]


@pytest.mark.slow
def test_a_start_that_overruns_its_timeout_stops_ray_and_exits_1(tmp_path):
    # Ray, Serve's controller and proxy and a replica that imports torch cannot all start within one second
    code, err, seen = _start_then(tmp_path, "--startup-timeout", "1")
    assert code == 1, err
    assert "did not start within --startup-timeout 1 s" in err
    assert _left_alive(seen) == []


@pytest.mark.slow
def test_sigterm_while_starting_stops_ray_and_exits_1(tmp_path):
    import signal

    code, err, seen = _start_then(tmp_path, signal_when_ray_runs=signal.SIGTERM)
    assert code == 1, err
    assert "interrupted while starting" in err
    assert {"gcs_server", "raylet"} <= {name for _, name in seen}, seen  # Ray had started
    assert _left_alive(seen) == []
