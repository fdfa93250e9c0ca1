"""Numba interpolation (CPU) as an autograd Function: forward and backward without temporaries.

Same result as the torch gather path of ``interpolate.py`` (up to the order of float rounding in
the three-term sum); gradients w.r.t. attributes and barycentrics, not twice differentiable.
"""
from __future__ import annotations

import numba
import torch
from numba import prange

from ..threads import numba_follows_torch

from ._numba import _scratch


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
                # element by element: a slice assignment per pixel costs more than the shading
                for c in range(channels):
                    out[b, i, j, c] = 0.0
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
def _backward(grad, attr, tris, ids, bary, parts, grad_attr, grad_bary):  # pragma: no cover - compiled
    """grad (B, H, W, C) -> grad_attr (1 or B, N, C) and grad_bary (B, H, W, 3).

    parts (B, P, N, C) scratch: task (face b, part p) takes rows p·H/P ... of face b and accumulates
    into parts[b, p] (no write races); a second pass sums the parts (and the faces, when the
    attributes are shared)."""
    batch, height, width, channels = grad.shape
    count, vertices = parts.shape[1], parts.shape[2]
    shared = attr.shape[0] == 1
    for task in prange(batch * count):
        b, p = task // count, task % count
        a, ga = attr[0] if shared else attr[b], parts[b, p]
        ga[:] = 0
        for i in range(height * p // count, height * (p + 1) // count):
            for j in range(width):
                f = ids[b, i, j]
                if f < 0:
                    grad_bary[b, i, j, 0] = grad_bary[b, i, j, 1] = grad_bary[b, i, j, 2] = 0.0
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
    faces_per_row = batch if shared else 1
    for k in prange(grad_attr.shape[0] * vertices):
        row, v = k // vertices, k % vertices
        for c in range(channels):
            total = 0.0
            for b in range(row * faces_per_row, (row + 1) * faces_per_row):
                for p in range(count):
                    total += parts[b, p, v, c]
            grad_attr[row, v, c] = total


class InterpolateCPU(torch.autograd.Function):
    """attributes (1 or B, N, C), barycentrics (B, H, W, 3) same dtype, ids (B, H, W), triangles (F, 3)."""

    @staticmethod
    def forward(ctx, attributes, barycentrics, ids, triangles):
        attributes, barycentrics = attributes.contiguous(), barycentrics.contiguous()
        ids, triangles = ids.contiguous(), triangles.contiguous()
        out = torch.empty(ids.shape + attributes.shape[-1:], dtype=attributes.dtype)
        with numba_follows_torch():
            failed = _forward(attributes.numpy(), triangles.numpy(), ids.numpy(), barycentrics.numpy(), out.numpy())
        if failed:
            raise ValueError("triangle or vertex ids out of range: not the mesh the raster was made from, "
                             "or fewer attributes than vertices")
        ctx.save_for_backward(attributes, barycentrics, ids, triangles)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        with numba_follows_torch():
            return _interpolate_backward(ctx, grad)


def _interpolate_backward(ctx, grad):
    attributes, barycentrics, ids, triangles = ctx.saved_tensors
    batch = ids.shape[0]
    # rows of a face split between threads when the batch is smaller than the thread count
    count = max(1, numba.get_num_threads() // batch)
    parts = _scratch("interpolate_parts", (batch, count) + tuple(attributes.shape[1:]), attributes.dtype)
    grad_attr = torch.empty_like(attributes)
    grad_bary = torch.empty_like(barycentrics)
    # an expanded gradient (from a plain .sum()) goes in as it is, strides and all: copying
    # it is a torch op, whose OpenMP workers then compete with this kernel's threads
    grad = grad if grad.is_contiguous() or min(grad.stride()) == 0 else grad.contiguous()
    _backward(grad.numpy(), attributes.numpy(), triangles.numpy(), ids.numpy(),
              barycentrics.numpy(), parts, grad_attr.numpy(), grad_bary.numpy())
    return grad_attr, grad_bary, None, None
