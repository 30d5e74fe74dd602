"""Torch settings for tests that compare against another package's numbers on the shared 2-core machine."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for the test: two cores shared by many processes make more threads only contend (a 10x
    slowdown was measured here). Import it into a test module to make it apply there (autouse)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
