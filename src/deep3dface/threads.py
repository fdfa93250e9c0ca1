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

# torch's thread count is one per process: scopes entered from several threads at once (a server
# reconstructing two requests) share it.  Each thread's nested scopes restore their own outer
# count; the process's count from before the first scope comes back when the last scope of any
# thread ends (restoring per scope left the process at 1 thread after two overlapping fits).
_lock = threading.Lock()
_scopes = threading.local()
_active_threads = 0
_process_count = 0


@contextmanager
def torch_threads(count: int):
    global _active_threads, _process_count
    with _lock:
        stack = _scopes.__dict__.setdefault("stack", [])
        if not stack:
            if _active_threads == 0:
                _process_count = torch.get_num_threads()
            _active_threads += 1
        stack.append(count)
        torch.set_num_threads(count)
    try:
        yield
    finally:
        with _lock:
            stack.pop()
            if stack:
                torch.set_num_threads(stack[-1])
            else:
                _active_threads -= 1
                if _active_threads == 0:
                    torch.set_num_threads(_process_count)


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
