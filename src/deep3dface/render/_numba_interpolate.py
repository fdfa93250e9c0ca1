"""Numba interpolation (CPU) as an autograd Function: forward and backward without temporaries.

Same result as the torch gather path of ``interpolate.py`` (up to the order of float rounding in
the three-term sum); gradients w.r.t. attributes and barycentrics, not twice differentiable.
"""
from __future__ import annotations

import numba
import torch
from numba import prange


@numba.njit(cache=True, parallel=True)
def _forward(attr, tris, ids, bary, out):  # pragma: no cover - compiled
    """attr (1 or B, N, C), tris (F, 3), ids (B, H, W), bary (B, H, W, 3) -> out (B, H, W, C).

    Returns the number of pixels whose triangle or vertex id is out of range (left unwritten):
    checked here, not with torch, to keep torch's spinning OpenMP workers off this kernel's cores."""
    batch, height, width, channels = out.shape
    faces, vertices = tris.shape[0], attr.shape[1]
    shared = attr.shape[0] == 1
    bad = 0
    for row in prange(batch * height):
        b, i = row // height, row % height
        a = attr[0] if shared else attr[b]
        for j in range(width):
            f = ids[b, i, j]
            if f < 0:
                out[b, i, j, :] = 0
                continue
            if f >= faces:
                bad += 1
                continue
            v0, v1, v2 = tris[f, 0], tris[f, 1], tris[f, 2]
            if not (0 <= v0 < vertices and 0 <= v1 < vertices and 0 <= v2 < vertices):
                bad += 1
                continue
            w0, w1, w2 = bary[b, i, j, 0], bary[b, i, j, 1], bary[b, i, j, 2]
            for c in range(channels):
                out[b, i, j, c] = (w0 * a[v0, c] + w1 * a[v1, c]) + w2 * a[v2, c]
    return bad


@numba.njit(cache=True, parallel=True)
def _backward(grad, attr, tris, ids, bary, grad_attr, grad_bary):  # pragma: no cover - compiled
    """grad (B, H, W, C) -> grad_attr (B, N, C) (zero-filled, accumulated) and grad_bary (B, H, W, 3)."""
    batch, height, width, channels = grad.shape
    shared = attr.shape[0] == 1
    for b in prange(batch):  # one face per task: its own grad_attr[b], so no write races
        a, ga = attr[0] if shared else attr[b], grad_attr[b]
        for i in range(height):
            for j in range(width):
                f = ids[b, i, j]
                if f < 0:
                    grad_bary[b, i, j, :] = 0
                    continue
                v0, v1, v2 = tris[f, 0], tris[f, 1], tris[f, 2]
                w0, w1, w2 = bary[b, i, j, 0], bary[b, i, j, 1], bary[b, i, j, 2]
                g0 = g1 = g2 = 0.0
                for c in range(channels):
                    g = grad[b, i, j, c]
                    ga[v0, c] += w0 * g
                    ga[v1, c] += w1 * g
                    ga[v2, c] += w2 * g
                    g0 += g * a[v0, c]
                    g1 += g * a[v1, c]
                    g2 += g * a[v2, c]
                grad_bary[b, i, j, 0], grad_bary[b, i, j, 1], grad_bary[b, i, j, 2] = g0, g1, g2


class InterpolateCPU(torch.autograd.Function):
    """attributes (1 or B, N, C), barycentrics (B, H, W, 3) same dtype, ids (B, H, W), triangles (F, 3)."""

    @staticmethod
    def forward(ctx, attributes, barycentrics, ids, triangles):
        attributes, barycentrics = attributes.contiguous(), barycentrics.contiguous()
        ids, triangles = ids.contiguous(), triangles.contiguous()
        out = torch.empty(ids.shape + attributes.shape[-1:], dtype=attributes.dtype)
        if _forward(attributes.numpy(), triangles.numpy(), ids.numpy(), barycentrics.numpy(), out.numpy()):
            raise ValueError("triangle or vertex ids out of range: not the mesh the raster was made from, "
                             "or fewer attributes than vertices")
        ctx.save_for_backward(attributes, barycentrics, ids, triangles)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        attributes, barycentrics, ids, triangles = ctx.saved_tensors
        batch = ids.shape[0]
        grad_attr = attributes.new_zeros((batch,) + tuple(attributes.shape[1:]))
        grad_bary = torch.empty_like(barycentrics)
        _backward(grad.contiguous().numpy(), attributes.numpy(), triangles.numpy(), ids.numpy(),
                  barycentrics.numpy(), grad_attr.numpy(), grad_bary.numpy())
        if attributes.shape[0] == 1:
            grad_attr = grad_attr.sum(0, keepdim=True)
        return grad_attr, grad_bary, None, None
