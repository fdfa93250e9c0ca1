"""Interpolation of per-vertex attributes over a raster (differentiable)."""
from __future__ import annotations

import torch

from .raster import Raster, _numba_available


def interpolate(attributes: torch.Tensor, raster: Raster, triangles: torch.Tensor, *,
                backend: str = "auto") -> torch.Tensor:
    """Per-pixel attributes: Σ_k barycentric_k · attribute of the covering triangle's vertex k.

    attributes: (B, N, C) or (N, C) float (the latter shared by the batch); raster from
    ``rasterize`` with the same ``triangles`` (F, 3) int64.  Returns (B, H, W, C) in the attributes'
    dtype, 0 on empty pixels.  Differentiable w.r.t. attributes and, through
    ``raster.barycentrics``, w.r.t. the screen positions that made the raster.
    backend: "auto" (numba kernels for CPU tensors when numba imports), "numba" or "torch".
    """
    batch = len(raster.triangle_id)
    if attributes.ndim not in (2, 3) or (attributes.ndim == 3 and attributes.shape[0] not in (1, batch)):
        raise ValueError(f"attributes must be (B, N, C) or (N, C), got {tuple(attributes.shape)}")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, numba or torch")
    attributes = attributes if attributes.ndim == 3 else attributes.unsqueeze(0)
    ids, triangles = raster.triangle_id, triangles.to(raster.triangle_id.device, torch.int64)
    weights = raster.barycentrics.to(attributes.dtype)
    numba_ok = (attributes.device.type == ids.device.type == "cpu"
                and attributes.dtype in (torch.float32, torch.float64))
    if backend == "numba" and not numba_ok:
        raise ValueError("the numba backend takes CPU float32 / float64 tensors only")
    if backend == "numba" or (backend == "auto" and numba_ok and _numba_available()):
        from ._numba_interpolate import InterpolateCPU

        return InterpolateCPU.apply(attributes, weights, ids, triangles)  # checks the ids itself
    if ids.numel() and int(ids.max()) >= len(triangles):
        raise ValueError("raster.triangle_id refers to rows beyond triangles: not the mesh it was made from")
    if triangles.numel() and int(triangles.max()) >= attributes.shape[-2]:
        raise ValueError(f"triangles refer to vertex ids beyond the {attributes.shape[-2]} attributes")
    return _interpolate_torch(attributes, weights, ids, triangles)


def _interpolate_torch(attributes, weights, ids, triangles) -> torch.Tensor:
    """Gather path (any device): attributes (1 or B, N, C), weights (B, H, W, 3), ids (B, H, W)."""
    batch, height, width = ids.shape
    b, i, j = torch.nonzero(ids >= 0, as_tuple=True)
    corners = triangles[ids[b, i, j]]                               # (P, 3)
    rows = b if attributes.shape[0] > 1 else torch.zeros_like(b)
    values = attributes[rows[:, None], corners]                     # (P, 3, C)
    pixels = torch.einsum("pk,pkc->pc", weights[b, i, j], values)
    out = attributes.new_zeros((batch, height, width, attributes.shape[-1]))
    return out.index_put((b, i, j), pixels)
