import os
import sys

# Threads that sleep while they wait (as the trainers and the deploy command line run): on a small shared CPU,
# spinning OpenMP threads make small ops many times slower. Read by the OpenMP runtime when torch loads, next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_TORCH_BEFORE = "torch" in sys.modules

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_report_header(config):
    if _TORCH_BEFORE:
        return "warning: torch was loaded before tests/conftest.py set OMP_WAIT_POLICY"
    return f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
