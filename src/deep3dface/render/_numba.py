"""Numba backend (CPU): a z-buffer kernel, parallel over faces, chunks of triangles or bands of rows.

A face of the batch is shared out among threads (``parallel_split``) either as contiguous,
ascending ranges of triangles, each drawn into its own depth and id buffers and merged afterwards
row by row (an earlier chunk winning ties), or as bands of rows that every task draws all triangles
into.  No locks, no atomics, and the result equals a serial loop over triangles in id order.  The
arithmetic is the float64 expressions of ``raster.py``'s docstring, written in the same order as the
torch and reference backends (no fastmath: no FMA contraction or reassociation), hence identical
ids.  The kernels compile on first use (measured on 2 cores: ~4 s for rasterize, ~6 s more for
interpolate and the backward passes, per float dtype) and are cached on disk (``cache=True``):
later processes pay ~0.2 s to import numba and ~0.35 s on the first call, which loads the cache.
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from numba import prange


@numba.njit(cache=True, inline="always")
def _edge(xa, ya, xb, yb, orient):  # pragma: no cover - compiled
    """Canonical edge a -> b: (origin x, origin y, dx, dy, sign of the value, is top-left)."""
    ox, oy = (xb - xa) * orient, (yb - ya) * orient
    top_left = oy < 0 or (oy == 0 and ox > 0)
    if xa > xb or (xa == xb and ya > yb):
        return xb, yb, xa - xb, ya - yb, -orient, top_left
    return xa, ya, xb - xa, yb - ya, orient, top_left


@numba.njit(cache=True, inline="always")
def _prepare_vertex(screen, b, k, near, height, width, xyz, vbox, vok):  # pragma: no cover - compiled
    """Vertex k of face b: its float64 copy, whether it may be drawn, and the pixel centres it spans,
    ceil and floor of (x, y) - 0.5.  A triangle's box of pixel centres is then [min of the ceils,
    max of the floors] (ceil and floor are monotone), found with integer min / max only."""
    x, y, z = np.float64(screen[b, k, 0]), np.float64(screen[b, k, 1]), np.float64(screen[b, k, 2])
    xyz[b, k, 0], xyz[b, k, 1], xyz[b, k, 2] = x, y, z
    vok[b, k] = z >= near and z < np.inf and math.isfinite(x) and math.isfinite(y)
    if vok[b, k]:
        # clamped first so that huge coordinates convert to int safely
        cx, cy = min(max(x - 0.5, -1.0), width), min(max(y - 0.5, -1.0), height)
        vbox[b, k, 0], vbox[b, k, 1] = math.ceil(cx), math.floor(cx)
        vbox[b, k, 2], vbox[b, k, 3] = math.ceil(cy), math.floor(cy)


@numba.njit(cache=True)
def _raster_range(xyz, vbox, vok, tris, f_start, f_stop, r_start, r_stop, cull, zbuf, ibuf):  # pragma: no cover
    """Rasterise triangles [f_start, f_stop) of one face (xyz (N, 3) f64) into rows [r_start, r_stop)
    of zbuf / ibuf (H, W)."""
    width = zbuf.shape[1]
    for f in range(f_start, f_stop):
        a, b, c = tris[f, 0], tris[f, 1], tris[f, 2]
        if not (vok[a] and vok[b] and vok[c]):
            continue
        # bounding box first: about half the triangles of a dense mesh hold no pixel centre at all
        i0 = max(min(vbox[a, 2], vbox[b, 2], vbox[c, 2]), r_start)
        i1 = min(max(vbox[a, 3], vbox[b, 3], vbox[c, 3]), r_stop - 1)
        if i0 > i1:
            continue
        j0 = max(min(vbox[a, 0], vbox[b, 0], vbox[c, 0]), 0)
        j1 = min(max(vbox[a, 1], vbox[b, 1], vbox[c, 1]), width - 1)
        if j0 > j1:
            continue
        x0, y0, z0, x1, y1, z1 = xyz[a, 0], xyz[a, 1], xyz[a, 2], xyz[b, 0], xyz[b, 1], xyz[b, 2]
        x2, y2, z2 = xyz[c, 0], xyz[c, 1], xyz[c, 2]
        area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area2 == 0 or (cull and area2 > 0):
            continue
        orient = 1.0 if area2 > 0 else -1.0
        ax0, ay0, dx0, dy0, s0, tl0 = _edge(x1, y1, x2, y2, orient)
        ax1, ay1, dx1, dy1, s1, tl1 = _edge(x2, y2, x0, y0, orient)
        ax2, ay2, dx2, dy2, s2, tl2 = _edge(x0, y0, x1, y1, orient)
        for i in range(i0, i1 + 1):
            py = i + 0.5
            for j in range(j0, j1 + 1):
                px = j + 0.5
                w0 = s0 * (dx0 * (py - ay0) - dy0 * (px - ax0))
                if not (w0 > 0 or (w0 == 0 and tl0)):
                    continue
                w1 = s1 * (dx1 * (py - ay1) - dy1 * (px - ax1))
                if not (w1 > 0 or (w1 == 0 and tl1)):
                    continue
                w2 = s2 * (dx2 * (py - ay2) - dy2 * (px - ax2))
                if not (w2 > 0 or (w2 == 0 and tl2)):
                    continue
                total = (w0 + w1) + w2
                if not total > 0:
                    continue
                depth = total / ((w0 / z0 + w1 / z1) + w2 / z2)
                if depth < zbuf[i, j]:  # strict: within a chunk the lower id keeps ties
                    zbuf[i, j] = depth
                    ibuf[i, j] = f


@numba.njit(cache=True, inline="always")
def _shade(xyz, n, tris, f, px, py):  # pragma: no cover - compiled
    """Perspective-correct barycentrics and depth of triangle f of face n at (px, py), float64:
    raster.py's ``pixel_barycentrics`` formula, operation for operation."""
    a, b, c = tris[f, 0], tris[f, 1], tris[f, 2]
    x0, y0, z0, x1, y1, z1 = xyz[n, a, 0], xyz[n, a, 1], xyz[n, a, 2], xyz[n, b, 0], xyz[n, b, 1], xyz[n, b, 2]
    x2, y2, z2 = xyz[n, c, 0], xyz[n, c, 1], xyz[n, c, 2]
    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    total = (e0 + e1) + e2
    q0, q1, q2 = (e0 / total) / z0, (e1 / total) / z1, (e2 / total) / z2
    inverse = (q0 + q1) + q2
    return q0 / inverse, q1 / inverse, q2 / inverse, 1.0 / inverse


@numba.njit(cache=True, parallel=True)
def _raster(screen, tris, near, cull, bands, zbuf, ibuf, ids, bary, depth):  # pragma: no cover - compiled
    """screen (B, N, 3) float32/64, tris (F, 3) int64; scratch zbuf / ibuf (B, T, H, W) for T
    chunks of triangles, each drawn in ``bands`` bands of rows; out ids (B, H, W), bary
    (B, H, W, 3) and depth (B, H, W).  False, and nothing drawn, when a triangle
    refers to a vertex outside [0, N).  Checks and the float64 copy are done here rather than with
    torch: a torch op just before would leave torch's OpenMP workers spinning on the cores that
    this kernel's threads need."""
    batch, chunks, height, width = zbuf.shape
    faces, vertices = tris.shape[0], screen.shape[1]
    flat = tris.reshape(-1)
    low, high = 0, 0
    for k in range(flat.size):
        low, high = min(low, flat[k]), max(high, flat[k])
    if low < 0 or high >= vertices:
        return False
    xyz = np.empty((batch, vertices, 3), np.float64)
    vbox = np.empty((batch, vertices, 4), np.int32)
    vok = np.empty((batch, vertices), np.bool_)
    for k in prange(batch * vertices):  # (indexed, not sliced: a view per vertex costs ~30%)
        _prepare_vertex(screen, k // vertices, k % vertices, near, height, width, xyz, vbox, vok)
    # task (face b, chunk t, band r): triangles t·F/T ... into rows r·H/R ... of buffer (b, t)
    for task in prange(batch * chunks * bands):
        b, t, r = task // (chunks * bands), task // bands % chunks, task % bands
        r0, r1 = height * r // bands, height * (r + 1) // bands
        zbuf[b, t, r0:r1] = np.inf  # ibuf is read only where zbuf was written: no need to clear it
        _raster_range(xyz[b], vbox[b], vok[b], tris, faces * t // chunks, faces * (t + 1) // chunks, r0, r1, cull,
                      zbuf[b, t], ibuf[b, t])
    for row in prange(batch * height):
        b, i = row // height, row % height
        for j in range(width):
            best, nearest = -1, np.inf
            for t in range(chunks):
                if zbuf[b, t, i, j] < nearest:  # strict: the earlier chunk (lower ids) keeps ties
                    best, nearest = ibuf[b, t, i, j], zbuf[b, t, i, j]
            ids[b, i, j] = best
            if best < 0:
                bary[b, i, j, 0] = bary[b, i, j, 1] = bary[b, i, j, 2] = 0.0
                depth[b, i, j] = np.inf
            else:
                w0, w1, w2, d = _shade(xyz, b, tris, best, j + 0.5, i + 0.5)
                bary[b, i, j, 0], bary[b, i, j, 1], bary[b, i, j, 2], depth[b, i, j] = w0, w1, w2, d
    return True


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-thread depth and id buffers (float64, int32) of ``shape``, kept between calls.

    Freeing and re-allocating megabytes on every call lets glibc hand the pages back to the system
    and fault them in again: ~500 page faults, about 1 ms, per 224² call on a VM.  The buffers hold
    the largest image x batch seen so far (16 bytes per pixel and chunk)."""
    size = math.prod(shape)
    held = getattr(_SCRATCH, "buffers", None)
    if held is None or held[0].numel() < size:
        held = (torch.empty(size, dtype=torch.float64), torch.empty(size, dtype=torch.int32))
        _SCRATCH.buffers = held
    return held[0][:size].view(shape), held[1][:size].view(shape)


def rasterize_shaded(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, near: float,
                     cull: bool, split: tuple[int, int] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From CPU screen (B, N, 3) float32/64 and triangles (F, 3) int64: ids (B, H, W) int64 (-1
    empty), barycentrics (B, H, W, 3) and depth (B, H, W) in screen's dtype (0 and +inf where empty),
    bit for bit the values of ``raster.pixel_barycentrics`` (no autograd here: see ``_numba_grad``).
    ``split``: (triangle chunks, row bands) per face, by default ``parallel_split``'s choice."""
    batch, dtype = screen.shape[0], screen.dtype
    if len(triangles) >= 2**31:
        raise ValueError("at most 2**31 - 1 triangles")  # ids are int32 inside the kernel
    chunks, bands = split or parallel_split(batch, height, width)
    zbuf, ibuf = _scratch((batch, chunks, height, width))
    # torch allocates: numpy's large arrays (hugepage advice) fault in several times slower here
    ids = torch.empty((batch, height, width), dtype=torch.int64)
    bary = torch.empty((batch, height, width, 3), dtype=dtype)
    depth = torch.empty((batch, height, width), dtype=dtype)
    if not _raster(screen.contiguous().numpy(), triangles.contiguous().numpy(), near, cull, bands, zbuf.numpy(),
                   ibuf.numpy(), ids.numpy(), bary.numpy(), depth.numpy()):
        raise ValueError(f"triangle vertex ids must lie in [0, {screen.shape[1]})")
    return ids, bary, depth


def parallel_split(batch: int, height: int, width: int) -> tuple[int, int]:
    """How to share out one face among threads when the batch is smaller than the thread count.

    Chunks of triangles each have their own buffers, merged afterwards; bands of rows share one
    buffer, but every band visits every triangle.  Measured on 2 cores with a 70k-triangle face
    (kernel with shading): chunks win at 224² (0.92 vs 1.05 ms), bands from 384² up (2.73 vs
    3.64 ms at 512², 7.0 vs 9.0 ms at 1024²) and need no extra memory: chunks up to 256² pixels."""
    share = max(1, numba.get_num_threads() // batch)
    return (share, 1) if height * width <= 256 * 256 else (1, share)
