"""Shared fixtures."""

from __future__ import annotations

import threading

import pytest
import torch
from tqdm import tqdm

# tqdm's default write lock holds a multiprocessing semaphore, shared by every process forked after it exists. A
# forked test process killed while it holds the lock (mutmut's time-out, a fault test's kill) leaves it taken for
# good, and every later fork blocks in its first progress bar: mutmut then scored every following mutant a time-out.
# Tests never share a bar across processes, so each process gets a lock of its own.
tqdm.set_lock(threading.RLock())


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors + 2 shared cores: one torch thread is faster and keeps CPU use modest."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _own_global_rng():
    """Each test gets torch's global RNG back as it found it: a test that seeds it (a UNet built from a seed) does
    not change what later tests draw, so results do not depend on the order tests run in."""
    with torch.random.fork_rng(devices=[]):
        yield
