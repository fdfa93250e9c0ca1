"""Helpers shared by the benchmark scripts: timing and one-line JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def median_ms(fn, runs: int = 50, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo): timings on "2 cores" differ ~2x between VMs'
    processors, so every result says which one it ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def emit(name: str, **results) -> None:
    print(json.dumps({"benchmark": name, **results, "machine": machine()}))
