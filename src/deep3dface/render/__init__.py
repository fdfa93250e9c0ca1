"""Differentiable triangle rasterisation in pure PyTorch (numba fast path on CPU).

Two small functions, in the manner of nvdiffrast: ``rasterize`` finds, per pixel, the covering
triangle, its perspective-correct barycentrics and depth; ``interpolate`` spreads per-vertex
attributes with them.  Screen-space conventions (pixels corner-origin y-down, camera depth, front
faces of negative signed area, top-left fill rule, what empty pixels hold) are stated once at the
top of ``raster.py``.  ``reference.rasterize_reference`` is the naive oracle the tests compare to.
"""
from .interpolate import interpolate
from .raster import BACKENDS, Raster, pixel_barycentrics, rasterize

__all__ = ["BACKENDS", "Raster", "interpolate", "pixel_barycentrics", "rasterize"]
