import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, tiny ops with several spinning OpenMP threads run ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
