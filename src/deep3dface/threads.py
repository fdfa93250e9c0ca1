"""Scoped torch thread count.

The fitter's work is many small tensor ops and tiny dense solves: on a 2-core machine that is
busy with anything else, two OpenMP threads spin-wait on each other and run them 10–40× slower
than one thread does (measured on the project's CI-sized machine).  Network inference (MTCNN,
R-Net) keeps the caller's setting; the fitter runs under ``torch_threads(1)``.  Numba's parallel
kernels (resampling, rendering) run under ``numba_follows_torch``: on torch's count, without
changing it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
