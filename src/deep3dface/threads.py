"""Scoped torch thread count.

The fitter's work is many small tensor ops and tiny dense solves: on a 2-core machine that is
busy with anything else, two OpenMP threads spin-wait on each other and run them 10–40× slower
than one thread does (measured on the project's CI-sized machine).  Network inference (MTCNN,
R-Net) keeps the caller's setting; the fitter runs under ``torch_threads(1)``.  Numba's parallel
kernels (resampling, rendering) run under ``numba_follows_torch``: on torch's count, without
changing it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

# torch's thread count is per thread (OpenMP's), and a thread's first read copies the count most
# recently set by any thread; scopes entered from several threads at once (a server reconstructing
# two requests) therefore leak counts into each other.  Each scope restores its own thread's count,
# except the last scope of the process to end, which restores the count from before the first one
# began (two overlapping fits left threads at 1; measured with torch 2.13's libgomp build).
_lock = threading.Lock()
_active_scopes = 0
_process_count = 0


@contextmanager
def torch_threads(count: int):
    global _active_scopes, _process_count
    with _lock:
        previous = torch.get_num_threads()  # this thread's own count
        if _active_scopes == 0:
            _process_count = previous
        _active_scopes += 1
        torch.set_num_threads(count)
    try:
        yield
    finally:
        with _lock:
            _active_scopes -= 1
            torch.set_num_threads(_process_count if _active_scopes == 0 else previous)


@contextmanager
def numba_follows_torch():
    """Run numba's parallel kernels on torch's thread count, and leave torch's count as it was.

    Numba's OpenMP layer shares torch's OpenMP runtime: a parallel launch sets the runtime's thread
    count to numba's (all cores), so a caller's ``torch.set_num_threads(1)`` (the pipeline's
    default) silently became 2 after the first detection or render."""
    import numba

    count = torch.get_num_threads()
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)


torch.get_num_threads()  # the importing thread settles its own count now, not at a later first read
