"""Rasterisation: which triangle covers each pixel, its perspective-correct barycentrics and depth.

Conventions (the renderer's, fixed here once):

* ``screen`` (B, N, 3) or (N, 3) float: x, y in **pixels**, origin at the top-left *corner* of the
  top-left pixel, x right, y down; pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
  z is **camera depth**: positive in front of the camera, larger is farther (``Camera.screen``).
* ``triangles`` (F, 3) int64, 0-based, shared by the batch, counter-clockwise seen from outside in
  the model's right-handed y-up frame.  The y flip to pixels turns that into a NEGATIVE signed area
  ``(x1-x0)·(y2-y0) - (x2-x0)·(y1-y0) < 0`` for a front-facing triangle; a positive one is a back
  face (dropped by ``cull_backfaces``).
* **Coverage**: a pixel is covered when its centre is inside the triangle.  Centres exactly on an
  edge belong to the triangle for which that edge is a top or left edge (top-left fill rule), so two
  triangles sharing an edge cover every centre on it exactly once: no cracks, no double cover.
* **Dropped triangles** (they never cover): zero signed area (degenerate); any vertex with depth
  below ``near`` (no clipping is done: a triangle crossing the near plane vanishes whole); any
  non-finite vertex coordinate.
* **Depth test**: nearest camera depth wins, ties go to the lower triangle id.
* **Exactness**: coverage and the depth test are computed in float64 with the same expressions, in
  the same order, in every backend, so all backends give identical triangle ids pixel for pixel.
  Edge functions are evaluated with the edge's endpoints in a canonical (lexicographic) order and
  negated when needed, so the two triangles of a shared edge see bitwise opposite values.
* **Outputs**: ``triangle_id`` -1, ``barycentrics`` 0 and ``depth`` +inf on empty pixels.

Backends: ``"numba"`` (CPU z-buffer kernel), ``"torch"`` (vectorised, any device), ``"reference"``
(plain Python loops, the tests' oracle).  ``"auto"`` takes numba for CPU tensors when numba imports,
torch otherwise.  The torch and reference backends only find triangle ids; barycentrics and depth
are then recomputed with autograd from ``screen`` at the pixel centres (``pixel_barycentrics``),
so they are differentiable w.r.t. ``screen``.  The numba backend computes the same values in its
kernel and supplies the analytic gradient (``_numba_grad``); tests hold the two paths together.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BACKENDS = ("auto", "numba", "torch", "reference")


@dataclass(frozen=True)
class Raster:
    """Per-pixel rasterisation result.

    triangle_id: (B, H, W) int64, the covering triangle's row in ``triangles``; -1 where empty.
    barycentrics: (B, H, W, 3) screen dtype, perspective-correct weights of the triangle's three
        vertices (sum to 1); 0 where empty.  Differentiable w.r.t. ``screen``.
    depth: (B, H, W) screen dtype, camera depth of the surface; +inf where empty.  Differentiable.
    """

    triangle_id: torch.Tensor
    barycentrics: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool, True where a triangle covers the pixel centre."""
        return self.triangle_id >= 0


def rasterize(screen: torch.Tensor, triangles: torch.Tensor, size: tuple[int, int], *, near: float = 1e-3,
              cull_backfaces: bool = False, backend: str = "auto") -> Raster:
    """Rasterise triangles given in screen space (pixels and camera depth; see the module docstring).

    screen: (B, N, 3) or (N, 3) float32/float64 (B = 1 for the latter); triangles: (F, 3) int64;
    size: (H, W).  Triangles with a vertex nearer than ``near`` are dropped; with ``cull_backfaces``
    so are triangles of positive signed area in pixels (facing away).  Returns a ``Raster``.
    """
    screen = _check_screen(screen)
    height, width = _check_size(size)
    name = _resolve(backend, screen.device)
    # the numba kernel checks the vertex ids itself (see _numba._raster on why)
    triangles = _check_triangles(triangles, screen.shape[1], screen.device, check_range=name != "numba")
    if name == "numba":
        # same values as the generic path below, with an analytic backward: no temporaries
        from ._numba_grad import NumbaRaster

        return Raster(*NumbaRaster.apply(screen, triangles, height, width, float(near), bool(cull_backfaces)))
    with torch.no_grad():
        ids = _KERNELS[name]()(screen.detach().to(torch.float64), triangles, height, width, float(near),
                               bool(cull_backfaces))
    barycentrics, depth = pixel_barycentrics(screen, triangles, ids)
    return Raster(ids, barycentrics, depth)


def pixel_barycentrics(screen: torch.Tensor, triangles: torch.Tensor,
                       triangle_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics and depth at the pixel centres, with autograd.

    screen (B, N, 3) float; triangles (F, 3) int64; triangle_id (B, H, W) int64 (-1 empty).
    Returns barycentrics (B, H, W, 3) and depth (B, H, W) in screen's dtype (0 and +inf where empty).
    Computed in float64 (then cast): screen-space weights are edge functions of the pixel centre
    divided by their sum; 1/depth is affine in screen space, so depth = 1 / Σ_k b_k / z_k and the
    perspective-correct weights are (b_k / z_k) · depth.
    """
    batch, height, width = triangle_id.shape
    b, i, j = torch.nonzero(triangle_id >= 0, as_tuple=True)
    corners = triangles[triangle_id[b, i, j]] + (b * screen.shape[1])[:, None]  # (P, 3) rows of flat
    v = screen.to(torch.float64).reshape(-1, 3)[corners]           # (P, 3 vertices, xyz)
    px = (j.to(torch.float64) + 0.5)[:, None]
    py = (i.to(torch.float64) + 0.5)[:, None]
    x, y, z = v.unbind(-1)                                          # each (P, 3)
    xa, ya = x.roll(-1, 1), y.roll(-1, 1)                           # edge k runs from vertex k+1 ...
    xb, yb = x.roll(-2, 1), y.roll(-2, 1)                           # ... to vertex k+2
    edge = (xb - xa) * (py - ya) - (yb - ya) * (px - xa)            # ∝ screen-space weight of vertex k
    # sums written out in a fixed order: the numba kernel repeats these expressions exactly
    total = (edge[:, 0] + edge[:, 1]) + edge[:, 2]
    over_z = edge / total[:, None] / z
    inverse_depth = (over_z[:, 0] + over_z[:, 1]) + over_z[:, 2]
    bary_values = over_z / inverse_depth[:, None]
    depth_values = 1.0 / inverse_depth
    dtype = screen.dtype
    bary = screen.new_zeros((batch, height, width, 3)).index_put((b, i, j), bary_values.to(dtype))
    depth = torch.full((batch, height, width), float("inf"), dtype=dtype, device=screen.device)
    return bary, depth.index_put((b, i, j), depth_values.to(dtype))


# -- checks and dispatch ------------------------------------------------------------------------
def _check_screen(screen: torch.Tensor) -> torch.Tensor:
    if not isinstance(screen, torch.Tensor) or screen.dtype not in (torch.float32, torch.float64):
        raise TypeError("screen must be a float32 or float64 tensor")
    if screen.ndim == 2:
        screen = screen.unsqueeze(0)
    if screen.ndim != 3 or screen.shape[-1] != 3:
        raise ValueError(f"screen must be (B, N, 3) or (N, 3), got {tuple(screen.shape)}")
    return screen


def _check_triangles(triangles: torch.Tensor, num_vertices: int, device: torch.device,
                     check_range: bool = True) -> torch.Tensor:
    if not isinstance(triangles, torch.Tensor) or triangles.dtype not in (torch.int64, torch.int32):
        raise TypeError("triangles must be an int64 tensor")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must be (F, 3), got {tuple(triangles.shape)}")
    triangles = triangles.to(device=device, dtype=torch.int64)
    # out-of-range ids would make the numba kernel read out of memory: it checks them itself
    if check_range and triangles.numel() and not 0 <= int(triangles.min()) <= int(triangles.max()) < num_vertices:
        raise ValueError(f"triangle vertex ids must lie in [0, {num_vertices})")
    return triangles


def _check_size(size) -> tuple[int, int]:
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (H, W), got {size}")
    return height, width


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        return "numba" if device.type == "cpu" and _numba_available() else "torch"
    if name == "numba" and device.type != "cpu":
        raise ValueError("the numba backend runs on CPU tensors only")
    return name


def _torch_ids():
    from ._torch import triangle_ids

    return triangle_ids


def _reference_ids():
    from .reference import triangle_ids

    return triangle_ids


#: backend name -> loader of ``ids(screen f64 (B, N, 3), triangles, H, W, near, cull) -> (B, H, W)``;
#: imported lazily so that importing the renderer does not import numba
_KERNELS = {"torch": _torch_ids, "reference": _reference_ids}
