"""Shared fixtures."""

import pytest


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test: on a 2-core machine shared with other processes, small models and
    matrices run several times faster (and steadier) on one thread than on two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
