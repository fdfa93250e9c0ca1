"""Scoped torch thread count.

The fitter's work is many small tensor ops and tiny dense solves: on a 2-core machine that is
busy with anything else, two OpenMP threads spin-wait on each other and run them 10–40× slower
than one thread does (measured on the project's CI-sized machine).  Network inference (MTCNN,
R-Net) keeps the caller's setting; the fitter runs under ``torch_threads(1)``.
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
