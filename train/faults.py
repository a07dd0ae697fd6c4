"""Test-only fault injection for the reliability tests (tests/reliability); inert unless SUPERVIT_FAULT is set.

Environment:
    SUPERVIT_FAULT: ``<point>:<action>``. Points: ``step`` (in the training loop, before an optimizer step) and
        ``save`` (a checkpoint's temporary file is written and fsync'ed but not yet renamed over the target).
        Actions: ``pause`` (write the marker, then sleep until killed from outside) and ``kill`` (write the
        marker, then SIGKILL this process).
    SUPERVIT_FAULT_WHEN: optional filters ``key=value,...`` over the point's context (``epoch``, ``step``,
        ``rank``), e.g. ``epoch=1,step=1,rank=1``.
    SUPERVIT_FAULT_MARKER: a file written when the fault fires (required). A fault whose marker already exists
        never fires again, so a restarted job runs through.
"""
from __future__ import annotations

import os
import signal
import time

ENV = "SUPERVIT_FAULT"
POINTS = ("step", "save")
ACTIONS = ("pause", "kill")


def _parse_when(text: str) -> dict:
    when = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"SUPERVIT_FAULT_WHEN must be key=value[,key=value], got {text!r}")
        when[key.strip()] = value.strip()
    return when


def inject(point: str, **context) -> None:
    """Fire the configured fault if ``point`` and ``context`` match it (no-op when SUPERVIT_FAULT is unset)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_point, _, action = spec.partition(":")
    if want_point not in POINTS or action not in ACTIONS:
        raise ValueError(f"{ENV} must be <point>:<action> with point in {POINTS} and action in {ACTIONS}, "
                         f"got {spec!r}")
    if want_point != point:
        return
    when = _parse_when(os.environ.get(ENV + "_WHEN", ""))
    if any(str(context.get(key)) != value for key, value in when.items()):
        return
    marker = os.environ.get(ENV + "_MARKER")
    if not marker:
        raise ValueError(f"{ENV} needs {ENV}_MARKER (a file path: the fault fires once, while it does not exist)")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # fired before (e.g. in the run that a restart now continues)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{point} {action} pid={os.getpid()} {context}\n")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pause: wait for the test to kill us
        time.sleep(1.0)
