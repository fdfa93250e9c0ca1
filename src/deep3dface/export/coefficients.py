"""Coefficients as MATLAB .mat files with Deep3D's keys.

Keys written: ``coeff`` (1, 257 for the BFM front model: the flat R-Net layout), the named groups
``id, exp, tex, angle, gamma, trans`` (1, K each, as Deep3DFaceRecon_pytorch's ``save_coeff``), and
any extras the caller passes (``lm68``, ``trans_params``, ...).  Deep3D stores ``lm68`` in the crop
with pixel centres at integers and y down; callers convert before passing (``to_reference_pixels``).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..io.mat import read_mat
from ..types import DEEP3D_LAYOUT, GROUPS, CoefficientLayout, Coefficients


def to_reference_pixels(points: np.ndarray) -> np.ndarray:
    """Our corner-origin pixels -> Deep3D's pixel-centre ones (both y down)."""
    return np.asarray(points, np.float64) - 0.5


def coefficients_to_mat(coeffs: Coefficients, **extras: np.ndarray) -> bytes:
    """One face's coefficients (batch of 1) and extra arrays -> .mat bytes (MAT v5)."""
    from scipy.io import savemat

    if not isinstance(coeffs, Coefficients):
        raise TypeError(f"coefficients_to_mat needs Coefficients (a face's .coefficients), got {type(coeffs).__name__}")
    if coeffs.batch_size != 1:
        raise ValueError(f"a .mat file holds one face; got a batch of {coeffs.batch_size}")
    arrays = {"coeff": coeffs.to_vector().detach().cpu().numpy().astype(np.float32)}
    arrays.update({g: getattr(coeffs, g).detach().cpu().numpy().astype(np.float32) for g in GROUPS})
    clash = set(extras) & set(arrays)
    if clash:
        raise ValueError(f"extra .mat keys clash with coefficient keys: {sorted(clash)}")
    arrays.update({k: np.asarray(v) for k, v in extras.items()})
    buffer = io.BytesIO()
    savemat(buffer, arrays, do_compression=True)
    return buffer.getvalue()


#: how data that are not numbers read, by dtype kind (a MATLAB cell or struct loads as objects or records)
NOT_NUMBERS = {"U": "text", "S": "text", "O": "objects (a cell or struct)", "V": "records (a struct)",
               "b": "true/false values", "c": "complex numbers", "M": "dates", "m": "time spans"}


def numeric_array(value: object, what: str) -> np.ndarray:
    """``value`` as finite float32, or a one-line error starting with ``what`` (file and key)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":   # float() would fail on the content with a message naming neither
        raise ValueError(f"{what} holds {NOT_NUMBERS.get(array.dtype.kind, array.dtype.name)}, not real numbers")
    with np.errstate(over="ignore"):   # a float64 beyond float32's range becomes inf: reported below
        array = array.astype(np.float32)
    if not np.isfinite(array).all():   # NaN or inf would draw nothing (or garbage) without an error
        raise ValueError(f"{what} holds values that are not finite (NaN or infinity)")
    return array


def read_coefficients_mat(source: str | Path | bytes, layout: CoefficientLayout | None = None) -> Coefficients:
    """Coefficients from a .mat written by us or by Deep3D (``coeff`` or the named groups)."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    source = source if isinstance(source, bytes) else Path(source).expanduser()
    if not isinstance(source, bytes) and Path(source).is_dir():
        raise ValueError(f"{name} is a folder, not a .mat file")
    if not isinstance(source, bytes) and not Path(source).exists():
        raise FileNotFoundError(f"{name}: no such file")
    try:
        mat = read_mat(source)
    except Exception as exc:
        raise ValueError(f"{name}: not a readable .mat file ({exc})") from exc
    if all(g in mat for g in GROUPS):
        groups = {g: torch.as_tensor(numeric_array(mat[g], f"{name}: '{g}'").reshape(1, -1)) for g in GROUPS}
        coeffs = Coefficients(**groups)
        if layout is not None and coeffs.layout != layout:
            raise ValueError(f"{name}: coefficient layout {coeffs.layout} is not the expected {layout}")
        return coeffs
    if "coeff" in mat:
        vector = numeric_array(mat["coeff"], f"{name}: 'coeff'").reshape(1, -1)
        layout = layout or DEEP3D_LAYOUT
        if vector.shape[1] != layout.total:
            raise ValueError(f"{name}: 'coeff' holds {vector.shape[1]} values, the layout needs {layout.total}")
        return Coefficients.from_vector(torch.as_tensor(vector), layout)
    raise ValueError(f"{name}: no coefficients in this .mat (expected 'coeff' or the keys {', '.join(GROUPS)})")
