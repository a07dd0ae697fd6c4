"""Operating points outside the training loop: measured latency profiles, the budget selector, the confidence
cascade, and export of one sub-network (ONNX, .pt2, AOTInductor).

Command line: ``python -m supervit.deploy {profile,choose,cascade,export} --help``. The library's public names load
on first use (this package imports no torch by itself, so the command line answers ``--help`` at once).
"""
import importlib

from .errors import DeployError

# public name -> module under supervit.deploy that defines it
_EXPORTS = {
    "Source": "model_source", "load_source": "model_source", "require_table": "model_source",
    "profile_model": "profile", "profile_key": "profile", "read_profiles": "profile", "save_profile": "profile",
    "find_profile": "profile", "default_profile_file": "cli_common",
    "operating_points": "choose", "choose": "choose", "pareto_front": "choose",
    "table_from_checkpoint": "accuracy", "table_from_results": "accuracy", "published_table": "accuracy",
    "Cascade": "cascade", "fit_cascade": "cascade",
}
__all__ = ["DeployError", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
