"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny nets gain little from a second thread; and when other processes share the cores,
    OpenMP barriers made an overfit test 8x slower with two threads than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
