"""Start and stop the server: a local Ray (its own temporary folder, loopback only), Ray Serve's HTTP proxy on the
given host and port, and the replicas.

``running(config, ...)`` is a context manager: on exit (normal, Ctrl-C, SIGTERM) Serve and Ray are shut down and
Ray's processes (GCS, raylet, workers) end with them; the temporary folder is removed.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time

GRACE_S = 5.0           # how long Ray's processes get to exit after its shutdown before they are killed
MAX_ONGOING = 100_000   # the proxy hands every request to a replica at once: the replica's own queue decides


def check_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host``; ``ValueError`` naming --host/--port otherwise.

    Port 0 picks a free port below the usual ephemeral range (32768 and up): the port stays unbound until Ray's
    proxy binds it seconds later, and an ephemeral port could meanwhile become the local end of one of Ray's own
    connections.
    """
    if port == 0:
        for candidate in random.Random().sample(range(20000, 32768), 64):
            try:
                return _bindable(host, candidate)
            except OSError:
                continue
        raise ValueError(f"--port 0: no free port found on {host} between 20000 and 32767; give one with --port")
    try:
        return _bindable(host, port)
    except OSError as err:
        raise ValueError(f"--host {host} --port {port} cannot be used: {err.strerror}") from None


def _bindable(host: str, port: int) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server will: closed connections
        sock.bind((host, port))                                      # of a previous run may linger
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_ray(num_cpus: int):
    """A Ray instance of this process alone (``address="local"``), its files in a fresh temporary folder."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing is reported anywhere
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray lowers its workers' priority by default (15): the
    # proxy and the replicas would lose the CPU to any other process of the machine and miss their deadlines
    import ray

    folder = tempfile.mkdtemp(prefix="svray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    try:
        _adopt_orphans()
        on_sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=folder,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="warning")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init put sys.exit(15) in place of the caller's handler
        yield folder
    finally:
        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            _end_descendants()
            shutil.rmtree(folder, ignore_errors=True)


def _adopt_orphans() -> None:
    """Make this process the one that inherits its descendants' orphans (Linux ``PR_SET_CHILD_SUBREAPER``), so that
    Ray's agents, whose raylet exits before them, can still be found and ended; a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _end_descendants(grace_s: float = GRACE_S) -> None:
    """Wait up to ``grace_s`` for every process below this one to exit, then kill those left; reap them all. Ray's
    shutdown ends its processes, but agents started while a SIGTERM interrupted ``ray.init`` were seen outliving it
    by more than 30 s."""
    end = time.monotonic() + grace_s
    while True:
        _reap()
        left = _live_descendants()
        if not left or time.monotonic() >= end:
            break
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if left:
        time.sleep(0.2)
        _reap()


def _reap() -> None:
    """Collect the exit status of every child that has ended (orphans adopted by this process become its children)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _live_descendants() -> list[int]:
    """Ids of the processes below this one that have not ended (zombies excluded; Linux /proc, [] elsewhere)."""
    children, ended = {}, set()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        state, parent = stat[stat.rindex(")") + 2:].split()[:2]
        children.setdefault(int(parent), []).append(int(entry))
        if state == "Z":
            ended.add(int(entry))
    found, frontier = [], [os.getpid()]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return [pid for pid in found if pid not in ended]


@contextlib.contextmanager
def running(config: dict, host: str, port: int, replicas: int):
    """The server up at ``http://host:port/`` for the duration of the ``with`` block."""
    from ray import serve

    from .replica import SuperViTReplica

    with local_ray(num_cpus=max(os.cpu_count() or 1, replicas)) as folder:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        deployment = serve.deployment(
            SuperViTReplica, name="supervit", num_replicas=replicas, max_ongoing_requests=MAX_ONGOING,
            ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=2.0, graceful_shutdown_wait_loop_s=0.5,
            max_constructor_retry_count=1)
        serve.run(deployment.bind(config), name="supervit", route_prefix="/", blocking=False)
        yield folder
