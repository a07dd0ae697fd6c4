"""Latency profiles: every sub-network of a model timed on one device at one batch, dtype, backend and mode.

A profile is a JSON-able dict::

    {"key": "<model>|<device>|b<batch>|<dtype>|<mode>|<backend>", "settings": {...those six...},
     "conditions": timing.conditions(...) + {"omp_wait_policy"}, "spinning_threads": bool,
     "rows": [{"img_size", "keep_ratio", "gmacs", "latency_ms", "min_ms", "max_ms", "rel_spread", "noisy",
               "img_per_s"}, ...]}

``<model>`` is the model's identity (``supervit.models.model_identity``), never a file name. Profiles are saved in
one JSON file (``{"profiles": {key: profile}}``), so a later command finds the one measured under its own settings.

OpenMP threads that spin while they wait (``OMP_WAIT_POLICY`` other than PASSIVE, several threads) steal the cores
of every other process on a shared CPU and have made CPU latencies 10-100x too slow; a profile records the wait
policy its process ran under, and one measured with spinning CPU threads is marked ``spinning_threads`` so that it is
never reused as if it were sound (``unsound_reason``). The command line sets ``OMP_WAIT_POLICY=PASSIVE`` before it
loads torch unless the user set the variable.
"""
from __future__ import annotations

import copy
import json
import os

import torch
from torch import nn

from .. import timing
from ..files import atomic_write
from ..kernels.dispatch import forced_backend
from ..models.subnet import SubnetError, check_subnets
from . import DeployError
from .options import BACKENDS, DTYPES, MODES, default_profile_file  # noqa: F401 - a public name here

_TORCH_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                 "fp16": torch.float16, "float16": torch.float16}
assert set(_TORCH_DTYPES) == set(DTYPES)


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name (``fp32``, ``bf16``, ...); DeployError naming the accepted ones."""
    if name not in _TORCH_DTYPES:
        raise DeployError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return _TORCH_DTYPES[name]


def profile_key(model_name: str, device: str, batch: int, dtype: str, mode: str, backend: str) -> str:
    """The key a profile is stored and found under (``model_name``: the model's identity)."""
    return f"{model_name}|{timing.device_name(device)}|b{batch}|{dtype}|{mode}|{backend}"


def thread_wait_policy() -> str:
    """The OpenMP wait policy of this process as its environment gives it ('PASSIVE', 'ACTIVE' or 'unset': the
    runtime's default, which spins for a while before it sleeps)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() or "unset"


def spinning_threads(device, threads: int, policy: str) -> bool:
    """Whether CPU work of this process ran with threads that spin while waiting (several threads, policy not
    PASSIVE): such timings are inflated by other processes on the same cores."""
    return torch.device(device).type == "cpu" and threads > 1 and policy != "PASSIVE"


def check_profile_subnets(model: nn.Module, subnets) -> list:
    """``subnets`` (all of the model's when None) checked by the one rule set of sub-networks; DeployError naming
    the unknown ones and the model's."""
    try:
        return check_subnets(model, subnets, trained=True)
    except SubnetError:
        valid = model.subnets()
        unknown = [s for s in subnets if (s[0], float(s[1])) not in valid]
        raise DeployError(f"unknown sub-network {', '.join(f'({s}, {r:g})' for s, r in unknown)}; this model has "
                          + ", ".join(str(s) for s in valid)) from None


def parse_subnets(text: str) -> list:
    """'20:0.5,24:0.7' -> [Subnet(20, 0.5), Subnet(24, 0.7)] (``supervit.models.parse_subnets``, as DeployError)."""
    from ..models.subnet import parse_subnets as parse

    try:
        return parse(text, "--subnets")
    except SubnetError as err:
        raise DeployError(str(err)) from None


def _backend(name: str):
    """The block runs on backend ``name`` ('auto': the dispatcher's choice)."""
    if name not in BACKENDS:
        raise DeployError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    return forced_backend(name)


def _runners(model, subnets, x, mode):
    """{(s, r): callable running that sub-network on x} in the given mode."""
    if mode == "eager":
        return {sub: (lambda sub=sub: model(x, img_size=sub[0], keep_ratio=sub[1])) for sub in subnets}
    if mode == "compile":
        compiled = torch.compile(model)  # one compiled entry per sub-network (guards on the two arguments)
        return {sub: (lambda sub=sub: compiled(x, img_size=sub[0], keep_ratio=sub[1])) for sub in subnets}
    if mode == "cuda-graph":
        from .cuda_graph import CudaGraphSubnet

        graphs = {sub: CudaGraphSubnet(model, sub[0], sub[1], batch=x.shape[0], dtype=x.dtype) for sub in subnets}
        return {sub: (lambda g=graphs[sub]: g.replay_into(x)) for sub in subnets}
    raise DeployError(f"mode must be one of {list(MODES)}, got {mode!r}")


def profile_model(model: nn.Module, model_name: str, device: str = "cpu", batch: int = 1, dtype: str = "fp32",
                  mode: str = "eager", backend: str = "auto", subnets=None, rounds: int = 10, warmup: int = 2,
                  progress: bool = True) -> dict:
    """Time every sub-network (or ``subnets``) of ``model`` and return the profile (see the module docstring).

    Args:
        model: a super-network (put in eval mode; a copy on ``device`` in ``dtype`` is timed when it is not
            there already, so the caller's model keeps its device and dtype).
        model_name: what the profile is keyed by (``supervit.models.model_identity(model)``).
        device, batch, dtype, mode, backend: the settings measured under (``mode``: one of ``MODES``).
        rounds, warmup: interleaved timed rounds and untimed warm-up calls per sub-network.
    """
    from supervit.models import flops

    from .source import example_input

    if not isinstance(batch, int) or batch < 1:
        raise DeployError(f"batch must be an int >= 1, got {batch!r}")
    if mode not in MODES:
        raise DeployError(f"mode must be one of {list(MODES)}, got {mode!r}")
    torch_dtype = parse_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeployError("device 'cuda' is not available here (torch.cuda.is_available() is False); use cpu")
    subnets = check_profile_subnets(model, subnets)
    weight = next(model.parameters())
    if weight.device != dev or weight.dtype != torch_dtype:  # time a copy: the caller's model stays as it is
        model = copy.deepcopy(model).to(device=dev, dtype=torch_dtype)
    model = model.eval()
    x = example_input(model, batch, dev, torch_dtype)
    limit = max(torch._dynamo.config.recompile_limit, 2 * len(subnets))
    with _backend(backend), torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=limit):
        runners = _runners(model, subnets, x, mode)
        stats, cond = timing.measure(runners, dev, dtype=torch_dtype, batch=batch, backend=backend, mode=mode,
                                     rounds=rounds, warmup=warmup, progress=progress)
    rows = []
    for sub in subnets:
        s = stats[sub]
        rows.append({"img_size": sub[0], "keep_ratio": sub[1], "gmacs": flops(model, *sub),
                     "latency_ms": s["median_ms"], "min_ms": s["min_ms"], "max_ms": s["max_ms"],
                     "rel_spread": s["rel_spread"], "noisy": s["noisy"],
                     "img_per_s": batch / (s["median_ms"] / 1e3)})
    settings = {"model": model_name, "device": timing.device_name(dev), "batch": batch, "dtype": dtype,
                "mode": mode, "backend": backend}
    cond["omp_wait_policy"] = thread_wait_policy()
    return {"key": profile_key(model_name, dev, batch, dtype, mode, backend), "settings": settings,
            "conditions": cond, "spinning_threads": spinning_threads(dev, cond["threads"], cond["omp_wait_policy"]),
            "rows": rows}


def unsound_reason(profile: dict) -> str:
    """Why a stored profile must not be reused as a sound measurement ('' when it may): taken with spinning CPU
    threads, or by an older version that did not record the thread wait policy."""
    cond = profile.get("conditions") or {}
    if profile.get("spinning_threads"):
        return (f"it was measured with spinning OpenMP threads (OMP_WAIT_POLICY {cond.get('omp_wait_policy')}, "
                f"{cond.get('threads')} threads), which inflates CPU latencies on a shared machine")
    if "omp_wait_policy" not in cond and str(profile.get("settings", {}).get("device", "")).startswith("cpu"):
        return "it does not record the thread wait policy it was measured under"
    return ""


def read_profiles(path: str) -> dict:
    """{key: profile} stored in ``path`` ({} when the file does not exist)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise DeployError(f"--profile {path!r} is not a readable profile file: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise DeployError(f"--profile {path!r} must hold {{'profiles': {{key: profile}}}} as written by "
                          "`python -m supervit.deploy profile`")
    return data["profiles"]


def save_profile(profile: dict, path: str) -> None:
    """Add (or replace) ``profile`` under its key in ``path``; written to a temp file, then renamed."""
    profiles = read_profiles(path)
    profiles[profile["key"]] = profile
    with atomic_write(path, make_folder=True) as tmp, open(tmp, "w") as handle:
        json.dump({"profiles": profiles}, handle, indent=1)


def find_profile(path: str, key: str) -> dict | None:
    """The profile stored under ``key`` in ``path``, or None."""
    return read_profiles(path).get(key)
