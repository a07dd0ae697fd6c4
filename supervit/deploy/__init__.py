"""Operating points outside the training loop: measured latency profiles, the budget selector, the confidence
cascade, and export of one sub-network (ONNX, .pt2, AOTInductor).

Command line: ``python -m supervit.deploy {profile,choose,cascade,export} --help``.
"""
from .errors import DeployError

__all__ = ["DeployError"]
