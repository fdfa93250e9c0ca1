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

from ..types import DEEP3D_LAYOUT, GROUPS, CoefficientLayout, Coefficients


def to_reference_pixels(points: np.ndarray) -> np.ndarray:
    """Our corner-origin pixels -> Deep3D's pixel-centre ones (both y down)."""
    return np.asarray(points, np.float64) - 0.5


def coefficients_to_mat(coeffs: Coefficients, **extras: np.ndarray) -> bytes:
    """One face's coefficients (batch of 1) and extra arrays -> .mat bytes (MAT v5)."""
    from scipy.io import savemat

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


def read_coefficients_mat(source: str | Path | bytes, layout: CoefficientLayout | None = None) -> Coefficients:
    """Coefficients from a .mat written by us or by Deep3D (``coeff`` or the named groups)."""
    from scipy.io import loadmat

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        mat = loadmat(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except Exception as exc:
        raise ValueError(f"{name}: not a readable .mat file ({exc})") from exc
    if all(g in mat for g in GROUPS):
        groups = {g: torch.as_tensor(np.asarray(mat[g], np.float32).reshape(1, -1)) for g in GROUPS}
        coeffs = Coefficients(**groups)
        if layout is not None and coeffs.layout != layout:
            raise ValueError(f"{name}: coefficient layout {coeffs.layout} is not the expected {layout}")
        return coeffs
    if "coeff" in mat:
        vector = np.asarray(mat["coeff"], np.float32).reshape(1, -1)
        layout = layout or DEEP3D_LAYOUT
        if vector.shape[1] != layout.total:
            raise ValueError(f"{name}: 'coeff' holds {vector.shape[1]} values, the layout needs {layout.total}")
        return Coefficients.from_vector(torch.as_tensor(vector), layout)
    raise ValueError(f"{name}: no coefficients in this .mat (expected 'coeff' or the keys {', '.join(GROUPS)})")
