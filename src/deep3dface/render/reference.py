"""Naive rasteriser in plain Python: the tests' oracle (slow; keep meshes and images small).

One loop over triangles in ascending id, one over the pixels of each bounding box, Python floats
(IEEE float64) with the expressions stated in ``raster.py``.  It also returns its own
perspective-correct barycentrics and depth, so tests can check the differentiable recomputation.
"""
from __future__ import annotations

import math

import torch


def rasterize_reference(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int,
                        near: float = 1e-3, cull: bool = False):
    """screen (B, N, 3) float, triangles (F, 3) int64 -> (ids (B, H, W) int64, -1 empty;
    barycentrics (B, H, W, 3) float64, 0 empty; depth (B, H, W) float64, +inf empty)."""
    points = screen.detach().to(torch.float64).cpu().tolist()
    faces = triangles.cpu().tolist()
    batch = len(points)
    ids = [[[-1] * width for _ in range(height)] for _ in range(batch)]
    bary = [[[(0.0, 0.0, 0.0)] * width for _ in range(height)] for _ in range(batch)]
    depth = [[[math.inf] * width for _ in range(height)] for _ in range(batch)]
    for b in range(batch):
        for f, corners in enumerate(faces):
            v = [points[b][k] for k in corners]
            if not _drawable(v, near, cull):
                continue
            for i, j in _box(v, height, width):
                hit = _fragment(v, j + 0.5, i + 0.5)
                if hit is not None and hit[0] < depth[b][i][j]:  # strict: the lower id keeps ties
                    depth[b][i][j], bary[b][i][j], ids[b][i][j] = hit[0], hit[1], f
    return (torch.tensor(ids, dtype=torch.int64).reshape(batch, height, width),
            torch.tensor(bary, dtype=torch.float64).reshape(batch, height, width, 3),
            torch.tensor(depth, dtype=torch.float64).reshape(batch, height, width))


def triangle_ids(screen, triangles, height, width, near, cull) -> torch.Tensor:
    """The backend entry point of ``rasterize(backend="reference")``."""
    return rasterize_reference(screen, triangles, height, width, near, cull)[0].to(screen.device)


def _signed_area2(v) -> float:
    (x0, y0, _), (x1, y1, _), (x2, y2, _) = v
    return (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)


def _drawable(v, near, cull) -> bool:
    if not all(math.isfinite(c) for p in v for c in p) or min(p[2] for p in v) < near:
        return False
    area2 = _signed_area2(v)
    return area2 != 0 and not (cull and area2 > 0)


def _box(v, height, width):
    """Pixels (i, j) whose centre lies in the triangle's bounding box."""
    xs, ys = [p[0] for p in v], [p[1] for p in v]
    cols = range(max(math.ceil(min(xs) - 0.5), 0), min(math.floor(max(xs) - 0.5), width - 1) + 1)
    rows = range(max(math.ceil(min(ys) - 0.5), 0), min(math.floor(max(ys) - 0.5), height - 1) + 1)
    return [(i, j) for i in rows for j in cols]


def _edge_weight(a, b, orient, px, py):
    """Edge function of a -> b at (px, py), positive inside; and whether a -> b is top or left.

    Evaluated with the endpoints in lexicographic order and negated when swapped, so the two
    triangles that share an edge get exactly opposite values."""
    swap = (a[0], a[1]) > (b[0], b[1])
    p, q = (b, a) if swap else (a, b)
    value = (q[0] - p[0]) * (py - p[1]) - (q[1] - p[1]) * (px - p[0])
    value = -orient * value if swap else orient * value
    dx, dy = (b[0] - a[0]) * orient, (b[1] - a[1]) * orient
    return value, dy < 0 or (dy == 0 and dx > 0)


def _fragment(v, px, py):
    """(depth, perspective-correct barycentrics) when the pixel centre is covered, else None."""
    orient = 1.0 if _signed_area2(v) > 0 else -1.0
    w = []
    for k in range(3):
        value, top_left = _edge_weight(v[(k + 1) % 3], v[(k + 2) % 3], orient, px, py)
        if not (value > 0 or (value == 0 and top_left)):  # written so that NaN never covers
            return None
        w.append(value)
    total = (w[0] + w[1]) + w[2]
    if not total > 0:
        return None
    inverse = (w[0] / v[0][2] + w[1] / v[1][2]) + w[2] / v[2][2]
    return total / inverse, tuple((w[k] / v[k][2]) / inverse for k in range(3))
