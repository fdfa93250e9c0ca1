"""Face-model formats behind one registry.

``load_model_data(spec)`` takes ``"default"`` (the embedded model derived from PyPI data) or a path:
a Deep3D ``BFM_model_front.mat`` file (told by its contents, so under any name), or a folder
that holds one.  New formats register a name (for built-in models) or a sniffing function (for files).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..data import ModelData
from .deep3d import is_deep3d_mat, load_deep3d_mat

#: built-in models by name
NAMED_MODELS: dict[str, Callable[[], ModelData]] = {}
#: file formats: (description, sniff(path) -> bool, load(path) -> ModelData)
FILE_FORMATS: list[tuple[str, Callable[[Path], bool], Callable[[Path], ModelData]]] = [
    ("Deep3D BFM_model_front.mat", is_deep3d_mat, load_deep3d_mat),
]
DEEP3D_FILE_NAME = "BFM_model_front.mat"


def _load_default() -> ModelData:
    from .embedded import load_embedded_default

    return load_embedded_default()


NAMED_MODELS["default"] = _load_default


def load_model_data(spec: str | Path = "default") -> ModelData:
    if not isinstance(spec, (str, os.PathLike)):  # None failed inside pathlib
        raise TypeError(f"a face model is a built-in name ({', '.join(NAMED_MODELS)}) or a path, got "
                        f"{type(spec).__name__}")
    if isinstance(spec, str) and spec in NAMED_MODELS:
        return NAMED_MODELS[spec]()
    path = Path(spec).expanduser()
    if path.is_dir() and (path / DEEP3D_FILE_NAME).is_file():
        path = path / DEEP3D_FILE_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such face model (built-in names: {', '.join(NAMED_MODELS)})")
    for _, sniff, load in FILE_FORMATS:
        if sniff(path):
            return load(path)
    known = "; ".join(desc for desc, _, _ in FILE_FORMATS)
    raise ValueError(f"{path}: not a face model in a known format ({known})")


def load_model(spec: str | Path = "default", dtype: torch.dtype = torch.float32, device=None):
    """A ``MorphableModel`` ready to use, on ``device`` in ``dtype``."""
    from ...devices import resolve_device
    from ..model import MorphableModel

    device = None if device is None else resolve_device(device)  # "cuda" on a CPU build: a clear ValueError
    return MorphableModel(load_model_data(spec), dtype=dtype).to(device)
