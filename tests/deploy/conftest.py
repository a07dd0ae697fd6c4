"""Fixtures of the deploy tests."""
import pytest

from deploy_helpers import write_tiny_checkpoint


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return write_tiny_checkpoint(tmp_path / "tiny.pth")
