"""Reading MATLAB .mat files: the one rule every reader here follows.

scipy's ``loadmat`` reads ``NAME.mat`` when asked for a missing ``NAME`` (``appendmat=True``, its
default): a user's typo would silently load a different file.  ``read_mat`` never does that.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def read_mat(source: str | Path | bytes, **options: Any) -> dict[str, Any]:
    """``scipy.io.loadmat`` of exactly ``source`` (a path, or the bytes of a file); ``options`` are
    loadmat's (``variable_names=...``)."""
    from scipy.io import loadmat  # scipy is imported only by the readers that need it

    return loadmat(io.BytesIO(source) if isinstance(source, bytes) else str(source), appendmat=False, **options)
