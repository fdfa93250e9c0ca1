"""The numba rasteriser as an autograd Function: ids, barycentrics and depth, with the analytic
gradient of the barycentrics and depth w.r.t. the screen positions (CPU).

It computes exactly what ``raster.pixel_barycentrics`` computes with torch autograd (that function
is the oracle of the tests), without its dozens of temporaries.  Per covered pixel, with edge k
running from vertex a = k+1 to b = k+2 and p the pixel centre:

    e_k = (x_b - x_a)(p_y - y_a) - (y_b - y_a)(p_x - x_a),   T = e_0 + e_1 + e_2
    q_k = e_k / (T z_k),   Q = Σ q_k,   bary_k = q_k / Q,   depth = 1 / Q

    ∂L/∂q_k = (g_bary_k - Σ_m g_bary_m bary_m) / Q - g_depth depth²
    ∂L/∂e_k = ∂L/∂q_k / (T z_k) - Σ_m ∂L/∂q_m q_m / T,      ∂L/∂z_k = -∂L/∂q_k q_k / z_k
    ∂e/∂x_a = y_b - p_y,  ∂e/∂x_b = p_y - y_a,  ∂e/∂y_a = p_x - x_b,  ∂e/∂y_b = x_a - p_x
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from ..threads import numba_follows_torch

from ._numba import _scratch, rasterize_shaded


@numba.njit(cache=True, inline="always")
def _edge_grad(g, xa, ya, xb, yb, px, py, grad, a, b):  # pragma: no cover - compiled
    """Accumulate g · ∂e/∂(vertex a, vertex b) of the edge function into grad[a], grad[b]."""
    grad[a, 0] += g * (yb - py)
    grad[a, 1] += g * (px - xb)
    grad[b, 0] += g * (py - ya)
    grad[b, 1] += g * (xa - px)


@numba.njit(cache=True, inline="always")
def _pixel_grad(screen, n, k0, k1, k2, px, py, gb0, gb1, gb2, gdepth, g):  # pragma: no cover - compiled
    """Add the gradient of one pixel's barycentrics and depth w.r.t. its triangle's vertices to g."""
    x0, y0, z0 = np.float64(screen[n, k0, 0]), np.float64(screen[n, k0, 1]), np.float64(screen[n, k0, 2])
    x1, y1, z1 = np.float64(screen[n, k1, 0]), np.float64(screen[n, k1, 1]), np.float64(screen[n, k1, 2])
    x2, y2, z2 = np.float64(screen[n, k2, 0]), np.float64(screen[n, k2, 1]), np.float64(screen[n, k2, 2])
    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    total = (e0 + e1) + e2
    q0, q1, q2 = (e0 / total) / z0, (e1 / total) / z1, (e2 / total) / z2
    inverse = (q0 + q1) + q2
    d = 1.0 / inverse
    mean = (gb0 * q0 + gb1 * q1 + gb2 * q2) * d                      # Σ g_bary_m bary_m
    gd = gdepth * d * d
    gq0, gq1, gq2 = (gb0 - mean) * d - gd, (gb1 - mean) * d - gd, (gb2 - mean) * d - gd
    gt = -(gq0 * q0 + gq1 * q1 + gq2 * q2) / total
    g[k0, 2] -= gq0 * q0 / z0
    g[k1, 2] -= gq1 * q1 / z1
    g[k2, 2] -= gq2 * q2 / z2
    _edge_grad(gq0 / (total * z0) + gt, x1, y1, x2, y2, px, py, g, k1, k2)
    _edge_grad(gq1 / (total * z1) + gt, x2, y2, x0, y0, px, py, g, k2, k0)
    _edge_grad(gq2 / (total * z2) + gt, x0, y0, x1, y1, px, py, g, k0, k1)


@numba.njit(cache=True, parallel=True)
def _backward(screen, tris, ids, gbary, gdepth, use_bary, use_depth, parts, out):  # pragma: no cover - compiled
    """screen (B, N, 3), ids (B, H, W), gbary (B, H, W, 3), gdepth (B, H, W) -> out (B, N, 3), any
    float dtypes (computed in float64).  A gradient that autograd did not supply (``use_bary`` or
    ``use_depth`` False) is read as zero and its array may be any (B', H', W'[, 3]) placeholder:
    no zero-filled tensors per call.  parts (B, P, N, 3) f64 scratch: task (face n, part p) takes
    rows p·H/P ... of face n and accumulates into parts[n, p]: no write races."""
    batch, height, width = ids.shape
    count, vertices = parts.shape[1], parts.shape[2]
    for task in prange(batch * count):
        n, p = task // count, task % count
        g = parts[n, p]
        g[:] = 0.0
        for i in range(height * p // count, height * (p + 1) // count):
            py = i + 0.5
            for j in range(width):
                f = ids[n, i, j]
                if f >= 0:
                    gb0 = np.float64(gbary[n, i, j, 0]) if use_bary else 0.0
                    gb1 = np.float64(gbary[n, i, j, 1]) if use_bary else 0.0
                    gb2 = np.float64(gbary[n, i, j, 2]) if use_bary else 0.0
                    gd = np.float64(gdepth[n, i, j]) if use_depth else 0.0
                    _pixel_grad(screen, n, tris[f, 0], tris[f, 1], tris[f, 2], j + 0.5, py, gb0, gb1, gb2, gd, g)
    for k in prange(batch * vertices):
        n, v = k // vertices, k % vertices
        for c in range(3):
            total = 0.0
            for p in range(count):
                total += parts[n, p, v, c]
            out[n, v, c] = total


class NumbaRaster(torch.autograd.Function):
    """screen (B, N, 3) float CPU, triangles (F, 3) -> ids (B, H, W), bary (B, H, W, 3), depth (B, H, W)."""

    @staticmethod
    def forward(ctx, screen, triangles, height, width, near, cull):
        ids, bary, depth = rasterize_shaded(screen.detach(), triangles, height, width, near, cull)
        ctx.save_for_backward(screen, triangles, ids)
        ctx.mark_non_differentiable(ids)
        # an output the loss does not use comes back as None, not as a zero-filled tensor
        ctx.set_materialize_grads(False)
        return ids, bary, depth

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _grad_ids, grad_bary, grad_depth):
        screen, triangles, ids = ctx.saved_tensors
        screen = screen.detach().contiguous()
        batch, vertices = screen.shape[:2]
        placeholder = screen.new_zeros((1, 1, 1, 3))
        use_bary, use_depth = grad_bary is not None, grad_depth is not None
        grad_bary = grad_bary.contiguous() if use_bary else placeholder
        grad_depth = grad_depth.contiguous() if use_depth else placeholder[..., 0]
        out = torch.empty_like(screen)
        with numba_follows_torch():
            # rows of a face split between threads when the batch is smaller than the thread count
            count = max(1, numba.get_num_threads() // batch)
            parts = _scratch("grad_parts", (batch, count, vertices, 3), torch.float64)
            _backward(screen.numpy(), triangles.contiguous().numpy(), ids.numpy(), grad_bary.numpy(),
                      grad_depth.numpy(), use_bary, use_depth, parts, out.numpy())
        return out, None, None, None, None, None
