"""Torch devices by name, checked before any model is built on them."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` (or a ``torch.device``) -> the device, or a
    ValueError saying why this machine cannot use it (torch's own errors are an assertion deep in
    the first ``.to()``, or a parse error)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r} (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: CUDA is not available to this torch ({torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{name}: MPS is not available to this torch")
    elif device.type != "cpu":
        raise ValueError(f"{name}: not supported (cpu, cuda or mps)")
    return device
