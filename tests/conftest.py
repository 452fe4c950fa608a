"""Shared fixtures."""

import os
import tempfile

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist each worker takes one core: two workers with two threads each on
    two cores slow each other many times over (OpenMP barriers). Subprocesses inherit it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    # converted OpenVINO graphs go to a throwaway folder, not the user's ~/.cache/ldmkit
    os.environ["LDMKIT_CACHE"] = tempfile.mkdtemp(prefix="ldmkit-test-cache-")


@pytest.fixture
def one_thread():
    """Tiny nets gain little from a second thread; and when other processes share the cores,
    OpenMP barriers made an overfit test 8x slower with two threads than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
