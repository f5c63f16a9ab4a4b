"""The test harness itself: what `make mutants` relies on."""

from __future__ import annotations

import os
import signal

import pytest
from tqdm import tqdm


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_killed_inside_a_progress_bar_does_not_block_the_next() -> None:
    """mutmut forks one process per mutant and kills it on time-out; one killed while it held tqdm's (by default
    cross-process) write lock made every later mutant hang in its first bar and count as a time-out."""
    lock = tqdm.get_lock()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies holding it
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    acquired = lock.acquire(timeout=2)
    if acquired:
        lock.release()
    assert acquired, "tqdm's lock stayed taken by a killed process"
