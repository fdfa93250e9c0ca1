"""One TFLite network run with ``ai-edge-litert``: the MediaPipe models the project ships with
(the face mesh in ``detect.facemesh``, BlazeFace in ``detect.blazeface``).

A LiteRT interpreter is not thread safe: invocations are serialised by a lock, so one loaded
network can serve several threads (a web server's requests, a thread pool over photos).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

import numpy as np


class LiteRTNetwork:
    """``network(x, outputs)``: run on one (H, W, C) input (a batch of one is added) and return
    copies of the output tensors ``outputs`` (their indices, from ``output_details``)."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter  # optional at import time of the package

        self.path = path
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        with _native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate": noise under -q too
            self._interpreter.allocate_tensors()
        entry = self._interpreter.get_input_details()[0]
        self.input_shape = tuple(int(n) for n in entry["shape"])
        self._input = entry["index"]
        self.output_details = self._interpreter.get_output_details()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray, outputs: tuple[int, ...]) -> list[np.ndarray]:
        with self._lock:
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(x[None], dtype=np.float32))
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(index).copy() for index in outputs]


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 pointed at the null device for the duration: the runtime's C++ logging
    writes there directly, beyond Python's ``sys.stderr``.  Python's own errors still surface (as
    exceptions); where descriptors cannot be swapped, nothing is silenced."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
