"""Which backend runs a call: one fallback policy for every op.

Order of preference: CUDA tensors -> triton, ext, reference; CPU tensors -> ext, reference.
``SUPERVIT_BACKEND=triton|ext|reference`` forces one; a forced backend that cannot run on the device is an error
saying why. ``backend_for(op, case)`` hands a backend only the cases its ``supports`` accepts (see
``contract.Backend``); every other case (fp64, long sequences, head dims, dtypes a kernel does not take) runs on
the reference backend. The choice is remembered per (SUPERVIT_BACKEND, op, case), so a call costs one lookup.
``TRITON_INTERPRET=1`` (set before triton is imported) lets the Triton backend run on CPU tensors.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import torch

from . import reference
from .contract import OPS, Backend, Case
from .fast_path import environ_lookup

BACKEND_NAMES = ("triton", "ext", "reference")
_MODULES = {"triton": "supervit.kernels.triton_backend", "ext": "supervit.kernels.ext_backend"}
_PREFERENCE = {"cuda": ("triton", "ext", "reference"), "cpu": ("ext", "reference")}
_loaded: dict[str, tuple[Backend | None, str]] = {"reference": (reference, "")}
_chosen: dict[tuple[str, str, Case], Backend] = {}
_MAX_CHOICES = 4096  # distinct (op, case) pairs remembered; a model uses a few dozen


def _load(name: str) -> tuple[Backend | None, str]:
    """Import a backend module once; remember why it failed if it did."""
    if name not in _loaded:
        try:
            _loaded[name] = (importlib.import_module(_MODULES[name]), "")
        except Exception as err:  # noqa: BLE001 - any import failure makes the backend unavailable
            _loaded[name] = (None, f"{type(err).__name__}: {err}")
    return _loaded[name]


def backend_status(name: str, device: torch.device | str) -> tuple[bool, str]:
    """(available, reason) of backend ``name`` for tensors on ``device``."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    module, reason = _load(name)
    if module is None:
        return False, f"cannot import the {name} backend ({reason})"
    return module.is_available(torch.device(device))


def available_backends(device: torch.device | str) -> list[str]:
    """Names of every backend that can run on ``device`` (the Triton one on CPU only under TRITON_INTERPRET=1)."""
    return [n for n in BACKEND_NAMES if backend_status(n, device)[0]]


# SUPERVIT_BACKEND is read on every call (tests and users change it at run time); the key of a call's choice is
# its raw value, read by the fast path's environment lookup (one dict lookup where the platform allows).
_forced_raw = environ_lookup("SUPERVIT_BACKEND")


def _forced() -> str:
    forced = os.environ.get("SUPERVIT_BACKEND", "").strip().lower()
    if forced and forced not in BACKEND_NAMES:
        raise ValueError(f"SUPERVIT_BACKEND must be one of {BACKEND_NAMES}, got {forced!r}")
    return forced


def _candidates(forced: str, device: torch.device | str) -> list[Backend]:
    """The backends that may run an op on ``device``, best first (the reference last)."""
    if forced:
        ok, reason = backend_status(forced, device)
        if not ok:
            raise RuntimeError(f"SUPERVIT_BACKEND={forced} cannot run on {torch.device(device)}: {reason}")
        return [_load(forced)[0]]
    kind = torch.device(device).type
    return [_load(n)[0] for n in _PREFERENCE.get(kind, ("reference",)) if backend_status(n, device)[0]]


def select_backend(device: torch.device | str) -> Backend:
    """The backend preferred on ``device``: forced by SUPERVIT_BACKEND, else the best available.

    It runs every case it supports; ``backend_for`` gives the backend of one call.
    """
    return (_candidates(_forced(), device) or [reference])[0]


def backend_for(op: str, case: Case | tuple) -> Backend:
    """The backend that runs ``op`` (a key of ``contract.OPS``) on ``case``: the first candidate that supports
    it, else the reference. ``case`` may also be the plain tuple of its fields (``OpSpec.case_fields``)."""
    key = (_forced_raw(), op, case)
    backend = _chosen.get(key)
    if backend is None:
        if op not in OPS:
            raise ValueError(f"op must be one of {tuple(OPS)}, got {op!r}")
        case = Case(*case)
        backend = next((b for b in _candidates(_forced(), case.device_type) if b.supports(op, case)), reference)
        if len(_chosen) >= _MAX_CHOICES:
            _chosen.clear()
        _chosen[key] = backend
    return backend


def forget_choices() -> None:
    """Drop the remembered choices (after a backend's availability changed, e.g. in tests)."""
    _chosen.clear()


@contextlib.contextmanager
def forced_backend(name: str | None):
    """``SUPERVIT_BACKEND=name`` inside the block (None or 'auto': the dispatcher's own choice), restored after."""
    old = os.environ.pop("SUPERVIT_BACKEND", None)
    if name and name != "auto":
        os.environ["SUPERVIT_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("SUPERVIT_BACKEND", None)
        if old is not None:
            os.environ["SUPERVIT_BACKEND"] = old
