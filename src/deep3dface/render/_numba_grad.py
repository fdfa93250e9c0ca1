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
import torch
from numba import prange

from ._numba import rasterize_shaded


@numba.njit(cache=True, inline="always")
def _edge_grad(g, xa, ya, xb, yb, px, py, grad, n, a, b):  # pragma: no cover - compiled
    """Accumulate g · ∂e/∂(vertex a, vertex b) of the edge function into grad[n, a], grad[n, b]."""
    grad[n, a, 0] += g * (yb - py)
    grad[n, a, 1] += g * (px - xb)
    grad[n, b, 0] += g * (py - ya)
    grad[n, b, 1] += g * (xa - px)


@numba.njit(cache=True, parallel=True)
def _backward(xyz, tris, ids, gbary, gdepth, gxyz):  # pragma: no cover - compiled
    """xyz (B, N, 3) f64, ids (B, H, W), gbary (B, H, W, 3), gdepth (B, H, W) -> gxyz (B, N, 3) (+=)."""
    batch, height, width = ids.shape
    for n in prange(batch):  # one face per task: its own gxyz[n], so no write races
        for i in range(height):
            py = i + 0.5
            for j in range(width):
                f = ids[n, i, j]
                if f < 0:
                    continue
                px = j + 0.5
                k0, k1, k2 = tris[f, 0], tris[f, 1], tris[f, 2]
                x0, y0, z0 = xyz[n, k0, 0], xyz[n, k0, 1], xyz[n, k0, 2]
                x1, y1, z1 = xyz[n, k1, 0], xyz[n, k1, 1], xyz[n, k1, 2]
                x2, y2, z2 = xyz[n, k2, 0], xyz[n, k2, 1], xyz[n, k2, 2]
                e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
                e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
                e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
                total = (e0 + e1) + e2
                q0, q1, q2 = (e0 / total) / z0, (e1 / total) / z1, (e2 / total) / z2
                inverse = (q0 + q1) + q2
                b0, b1, b2 = q0 / inverse, q1 / inverse, q2 / inverse
                d = 1.0 / inverse
                gb0, gb1, gb2 = gbary[n, i, j, 0], gbary[n, i, j, 1], gbary[n, i, j, 2]
                mean = gb0 * b0 + gb1 * b1 + gb2 * b2
                gd = gdepth[n, i, j] * d * d
                gq0, gq1, gq2 = (gb0 - mean) * d - gd, (gb1 - mean) * d - gd, (gb2 - mean) * d - gd
                gt = -(gq0 * q0 + gq1 * q1 + gq2 * q2) / total
                gxyz[n, k0, 2] -= gq0 * q0 / z0
                gxyz[n, k1, 2] -= gq1 * q1 / z1
                gxyz[n, k2, 2] -= gq2 * q2 / z2
                _edge_grad(gq0 / (total * z0) + gt, x1, y1, x2, y2, px, py, gxyz, n, k1, k2)
                _edge_grad(gq1 / (total * z1) + gt, x2, y2, x0, y0, px, py, gxyz, n, k2, k0)
                _edge_grad(gq2 / (total * z2) + gt, x0, y0, x1, y1, px, py, gxyz, n, k0, k1)


class NumbaRaster(torch.autograd.Function):
    """screen (B, N, 3) float CPU, triangles (F, 3) -> ids (B, H, W), bary (B, H, W, 3), depth (B, H, W)."""

    @staticmethod
    def forward(ctx, screen, triangles, height, width, near, cull):
        ids, bary, depth = rasterize_shaded(screen.detach(), triangles, height, width, near, cull)
        ctx.save_for_backward(screen, triangles, ids)
        ctx.mark_non_differentiable(ids)
        return ids, bary, depth

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _grad_ids, grad_bary, grad_depth):
        screen, triangles, ids = ctx.saved_tensors
        xyz = screen.detach().to(torch.float64).contiguous()
        grad_bary = torch.zeros(ids.shape + (3,), dtype=torch.float64) if grad_bary is None else grad_bary
        grad_depth = torch.zeros(ids.shape, dtype=torch.float64) if grad_depth is None else grad_depth
        grad = torch.zeros_like(xyz)
        _backward(xyz.numpy(), triangles.contiguous().numpy(), ids.numpy(),
                  grad_bary.to(torch.float64).contiguous().numpy(), grad_depth.to(torch.float64).contiguous().numpy(),
                  grad.numpy())
        return grad.to(screen.dtype), None, None, None, None, None
