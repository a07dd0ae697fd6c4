"""Operating points outside the training loop, as a library: measured latency profiles, accuracy tables, the budget
selector, the confidence cascade, and export of one sub-network (ONNX, .pt2, AOTInductor).

Modules: ``source`` (the model and accuracy table a checkpoint gives), ``accuracy`` (tables), ``profile`` (latency
profiles), ``selector`` (operating points, Pareto fronts, ``choose``), ``cascade`` and ``cascade_study`` (the
confidence cascade and its evaluation on held-out halves), ``images`` (labelled image sets), ``export`` and
``runners`` (one sub-network in its runtime), ``cuda_graph``, ``plotting``. Command line: ``cli``
(``python -m supervit.deploy {profile,choose,cascade,export} --help``).

The public names below load on first use: importing this package loads no torch.
"""
import importlib


class DeployError(ValueError):
    """A user error (bad argument, unusable file, unmet budget): the message names the value and what would work.
    The command line prints it as one line and exits with code 2."""


# public name -> module under supervit.deploy that defines it
_EXPORTS = {
    "Source": "source", "load_source": "source", "require_table": "source", "model_gmacs": "source",
    "profile_model": "profile", "profile_key": "profile", "read_profiles": "profile", "save_profile": "profile",
    "find_profile": "profile", "unsound_reason": "profile", "default_profile_file": "options",
    "operating_points": "selector", "choose": "selector", "pareto_front": "selector",
    "table_from_checkpoint": "accuracy", "table_from_results": "accuracy", "published_table": "accuracy",
    "Cascade": "cascade", "fit_cascade": "cascade",
    "export_subnet": "export", "load_runner": "runners",
}
__all__ = ["DeployError", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
