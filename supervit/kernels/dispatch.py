"""Choice of the backend that runs an op, per call.

A backend is a module exposing ``NAME``, ``is_available(device) -> (bool, reason)`` and the functions of the
reference backend (``attention_forward``, ``attention_backward``, ``keep_topk``, ``gather_tokens``,
``gather_tokens_backward``, ``prune_tokens_forward``) with the same signatures.

Order of preference: CUDA tensors -> triton, ext, reference; CPU tensors -> ext, reference.
``SUPERVIT_BACKEND=triton|ext|reference`` forces one; a forced backend that cannot run is an error saying why.
``TRITON_INTERPRET=1`` (set before triton is imported) lets the Triton backend run on CPU tensors.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from . import reference

BACKEND_NAMES = ("triton", "ext", "reference")
_MODULES = {"triton": "supervit.kernels.triton_backend", "ext": "supervit.kernels.ext_backend"}
_PREFERENCE = {"cuda": ("triton", "ext", "reference"), "cpu": ("ext", "reference")}
_loaded: dict[str, tuple[ModuleType | None, str]] = {"reference": (reference, "")}


def _load(name: str) -> tuple[ModuleType | None, str]:
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


def select_backend(device: torch.device | str) -> ModuleType:
    """The backend module that runs an op on ``device``: forced by SUPERVIT_BACKEND or the best available."""
    forced = os.environ.get("SUPERVIT_BACKEND", "").strip().lower()
    if forced:
        if forced not in BACKEND_NAMES:
            raise ValueError(f"SUPERVIT_BACKEND must be one of {BACKEND_NAMES}, got {forced!r}")
        ok, reason = backend_status(forced, device)
        if not ok:
            raise RuntimeError(f"SUPERVIT_BACKEND={forced} cannot run on {torch.device(device)}: {reason}")
        return _load(forced)[0]
    kind = torch.device(device).type
    for name in _PREFERENCE.get(kind, ("reference",)):
        if backend_status(name, device)[0]:
            return _load(name)[0]
    return reference
