"""Numba backend (CPU): a z-buffer kernel that bins triangles, then draws bands of rows in parallel.

One call runs three parallel phases per face of the batch:

1. vertices, split between threads: whether each may be drawn (depth in [near, inf), finite x and
   y) and the pixel centres it spans (ceil / floor of x - 0.5 and y - 0.5);
2. triangles, in contiguous ascending chunks (one per thread): the box of pixel centres from the
   vertices' spans (integer min / max only); about half the triangles of a dense mesh at 224²
   hold no centre and stop here; the others are appended, with their box, to the chunk's list;
3. bands of rows, one task each: every listed triangle whose box meets the band is drawn into the
   band's rows, chunk after chunk, so in ascending id order: a strict depth test keeps the lower
   id on ties, exactly like a serial loop.  A winning fragment writes the outputs (id,
   barycentrics, depth) at once, while the triangle's vertices are in registers: there is no
   per-chunk z-buffer to merge and no second pass over the pixels.

No locks, no atomics: tasks write disjoint rows.  The arithmetic is the float64 expressions of
``raster.py``'s docstring, written in the same order as the torch and reference backends (no
fastmath: no FMA contraction or reassociation), hence identical ids.  Culling and zero-area tests
are done in phase 3, where the coordinates are loaded anyway.  The kernels compile on first use
and are cached on disk (``cache=True``).
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from numba import prange

#: span given to a vertex that may not be drawn: it adds nothing to a triangle's box of pixel
#: centres, so a triangle of three such vertices has an empty box (the others are rejected by
#: the ``ok`` flags once their box is found non-empty)
_NO_SPAN = 2**30


@numba.njit(cache=True, inline="always")
def _load(screen, n, k):  # pragma: no cover - compiled
    return np.float64(screen[n, k, 0]), np.float64(screen[n, k, 1]), np.float64(screen[n, k, 2])


@numba.njit(cache=True, inline="always")
def _prepare(screen, n, k0, k1, near, height, width, span, ok):  # pragma: no cover - compiled
    """Vertices [k0, k1) of face n: ``ok`` and the span of pixel centres (ceil x, floor x, ceil y,
    floor y of the coordinate - 0.5); a triangle's box is [min of the ceils, max of the floors],
    ceil and floor being monotone."""
    for k in range(k0, k1):
        x, y, z = _load(screen, n, k)
        good = (z >= near) & (z < np.inf) & (x - x == 0) & (y - y == 0)  # x - x is NaN for inf, NaN
        ok[k] = good
        if good:
            # clamped first so that huge coordinates convert to int safely
            cx, cy = min(max(x - 0.5, -1.0), width), min(max(y - 0.5, -1.0), height)
            span[k, 0], span[k, 1], span[k, 2], span[k, 3] = math.ceil(cx), math.floor(cx), math.ceil(cy), math.floor(cy)
        else:
            span[k, 0], span[k, 1], span[k, 2], span[k, 3] = _NO_SPAN, -_NO_SPAN, _NO_SPAN, -_NO_SPAN


@numba.njit(cache=True, inline="always")
def _bin(tris, f0, f1, height, width, span, ok, listed, box):  # pragma: no cover - compiled
    """List triangles [f0, f1) whose box holds a pixel centre and whose vertices may be drawn:
    ids into ``listed``, boxes (first row, last row, first col, last col) into ``box``.  Returns
    (count, whether a vertex id was out of range: such triangles are skipped, never read)."""
    vertices = span.shape[0]
    count, bad = 0, False
    for f in range(f0, f1):
        a, b, c = tris[f, 0], tris[f, 1], tris[f, 2]
        if not ((0 <= a) & (a < vertices) & (0 <= b) & (b < vertices) & (0 <= c) & (c < vertices)):
            bad = True
            continue
        i0 = max(min(span[a, 2], span[b, 2], span[c, 2]), 0)
        i1 = min(max(span[a, 3], span[b, 3], span[c, 3]), height - 1)
        j0 = max(min(span[a, 0], span[b, 0], span[c, 0]), 0)
        j1 = min(max(span[a, 1], span[b, 1], span[c, 1]), width - 1)
        # written whatever the outcome, kept by advancing ``count``: a branch here would be
        # mispredicted for about half the triangles (measured ~20% of this loop)
        listed[count] = f
        box[count, 0], box[count, 1], box[count, 2], box[count, 3] = i0, i1, j0, j1
        count += (i0 <= i1) & (j0 <= j1) & ok[a] & ok[b] & ok[c]
    return count, bad


@numba.njit(cache=True, inline="always")
def _edge(xa, ya, xb, yb, orient):  # pragma: no cover - compiled
    """Edge a -> b with its endpoints in canonical (lexicographic) order: origin x, y, dx, dy, the
    sign that makes the inside positive, and whether the oriented edge is a top or left edge.

    The swap is done with arithmetic, not branches (a mispredicted branch per edge cost more than
    the rest of the setup): v·1 + w·0 is exactly v for the finite coordinates drawn here (up to
    the sign of a zero, which no comparison or sum below can see)."""
    ox, oy = (xb - xa) * orient, (yb - ya) * orient
    top_left = (oy < 0) | ((oy == 0) & (ox > 0))
    s = np.float64((xa > xb) | ((xa == xb) & (ya > yb)))
    r = 1.0 - s
    px, py = xa * r + xb * s, ya * r + yb * s
    qx, qy = xb * r + xa * s, yb * r + ya * s
    return px, py, qx - px, qy - py, orient * (r - s), top_left


@numba.njit(cache=True, inline="always")
def _draw(screen, n, tris, cull, listed, box, count, r0, r1, zbuf, ids, bary, depth):  # pragma: no cover
    """Draw the ``count`` listed triangles, in list order, into rows [r0, r1) of face n."""
    for k in range(count):
        i0, i1 = max(box[k, 0], r0), min(box[k, 1], r1 - 1)
        if i0 > i1:
            continue
        j0, j1 = box[k, 2], box[k, 3]
        f = listed[k]
        x0, y0, z0 = _load(screen, n, tris[f, 0])
        x1, y1, z1 = _load(screen, n, tris[f, 1])
        x2, y2, z2 = _load(screen, n, tris[f, 2])
        area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if (area2 == 0) | (cull & (area2 > 0)):
            continue
        orient = 1.0 if area2 > 0 else -1.0
        ax0, ay0, dx0, dy0, s0, tl0 = _edge(x1, y1, x2, y2, orient)
        ax1, ay1, dx1, dy1, s1, tl1 = _edge(x2, y2, x0, y0, orient)
        ax2, ay2, dx2, dy2, s2, tl2 = _edge(x0, y0, x1, y1, orient)
        for i in range(i0, i1 + 1):
            py = i + 0.5
            for j in range(j0, j1 + 1):
                px = j + 0.5
                # all three edges, then one branch: most boxes hold one centre, so early exits
                # per edge would only add mispredictions
                w0 = s0 * (dx0 * (py - ay0) - dy0 * (px - ax0))
                w1 = s1 * (dx1 * (py - ay1) - dy1 * (px - ax1))
                w2 = s2 * (dx2 * (py - ay2) - dy2 * (px - ax2))
                total = (w0 + w1) + w2
                # written so that NaN never covers
                if not (((w0 > 0) | ((w0 == 0) & tl0)) & ((w1 > 0) | ((w1 == 0) & tl1))
                        & ((w2 > 0) | ((w2 == 0) & tl2)) & (total > 0)):
                    continue
                d = total / ((w0 / z0 + w1 / z1) + w2 / z2)
                if d < zbuf[i, j]:  # strict: the lower id, drawn first, keeps ties
                    zbuf[i, j] = d
                    ids[n, i, j] = f
                    # raster.pixel_barycentrics' formula, operation for operation
                    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
                    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
                    e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
                    t = (e0 + e1) + e2
                    q0, q1, q2 = (e0 / t) / z0, (e1 / t) / z1, (e2 / t) / z2
                    inverse = (q0 + q1) + q2
                    bary[n, i, j, 0], bary[n, i, j, 1], bary[n, i, j, 2] = q0 / inverse, q1 / inverse, q2 / inverse
                    depth[n, i, j] = 1.0 / inverse


@numba.njit(cache=True, parallel=True)
def _raster(screen, tris, near, cull, bands, span, ok, listed, box, counts, bad, zbuf, ids, bary, depth):  # pragma: no cover
    """screen (B, N, 3) float32/64, tris (F, 3) int64; scratch span (B, N, 4) int32, ok (B, N)
    bool, listed (B, T, L) int32 and box (B, T, L, 4) int32 with L >= ceil(F / T), counts (B, T)
    int64, bad (B, T) bool, zbuf (B, H, W) float64, for T chunks of triangles; out ids (B, H, W),
    bary (B, H, W, 3), depth (B, H, W).  False when a triangle refers to a vertex outside [0, N)
    (checked here rather than with torch: a torch op just before would leave torch's OpenMP
    workers spinning on the cores that this kernel's threads need)."""
    batch, chunks = counts.shape
    height, width = zbuf.shape[1], zbuf.shape[2]
    faces, vertices = tris.shape[0], screen.shape[1]
    for task in prange(batch * chunks):
        n, t = task // chunks, task % chunks
        _prepare(screen, n, vertices * t // chunks, vertices * (t + 1) // chunks, near, height, width, span[n], ok[n])
    for task in prange(batch * chunks):
        n, t = task // chunks, task % chunks
        counts[n, t], bad[n, t] = _bin(tris, faces * t // chunks, faces * (t + 1) // chunks, height, width, span[n],
                                       ok[n], listed[n, t], box[n, t])
    for task in prange(batch * bands):
        n, r = task // bands, task % bands
        r0, r1 = height * r // bands, height * (r + 1) // bands
        zbuf[n, r0:r1] = np.inf
        ids[n, r0:r1] = -1
        bary[n, r0:r1] = 0.0
        depth[n, r0:r1] = np.inf
        for t in range(chunks):
            _draw(screen, n, tris, cull, listed[n, t], box[n, t], counts[n, t], r0, r1, zbuf[n], ids, bary, depth)
    for k in range(bad.size):
        if bad.flat[k]:
            return False
    return True


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """A per-thread scratch array ``name`` of ``shape``, kept between calls.

    Freeing and re-allocating megabytes on every call lets glibc hand the pages back to the system
    and fault them in again: ~500 page faults, about 1 ms, per 224² call on a VM (much more when
    the machine is loaded).  Each buffer holds the largest size seen so far."""
    held = getattr(_SCRATCH, "buffers", None)
    if held is None:
        held = _SCRATCH.buffers = {}
    size = math.prod(shape)
    buffer = held.get((name, dtype))
    if buffer is None or buffer.numel() < size:
        buffer = held[name, dtype] = torch.empty(size, dtype=dtype)
    return buffer[:size].view(shape).numpy()


def rasterize_shaded(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, near: float,
                     cull: bool, split: tuple[int, int] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From CPU screen (B, N, 3) float32/64 and triangles (F, 3) int64: ids (B, H, W) int64 (-1
    empty), barycentrics (B, H, W, 3) and depth (B, H, W) in screen's dtype (0 and +inf where empty),
    bit for bit the values of ``raster.pixel_barycentrics`` (no autograd here: see ``_numba_grad``).
    ``split``: (triangle chunks, row bands) per face, by default ``parallel_split``'s choice."""
    batch, vertices, dtype = screen.shape[0], screen.shape[1], screen.dtype
    faces = len(triangles)
    if faces >= 2**31:
        raise ValueError("at most 2**31 - 1 triangles")  # ids are int32 inside the kernel
    if max(height, width) >= 2**30:
        raise ValueError("images must be smaller than 2**30 pixels a side")  # spans are int32
    chunks, bands = split or parallel_split(batch, height, width)
    per_chunk = -(-faces // chunks)
    # torch allocates: numpy's large arrays (hugepage advice) fault in several times slower here
    ids = torch.empty((batch, height, width), dtype=torch.int64)
    bary = torch.empty((batch, height, width, 3), dtype=dtype)
    depth = torch.empty((batch, height, width), dtype=dtype)
    if not _raster(screen.contiguous().numpy(), triangles.contiguous().numpy(), near, cull, bands,
                   _scratch("span", (batch, vertices, 4), torch.int32), _scratch("ok", (batch, vertices), torch.bool),
                   _scratch("listed", (batch, chunks, per_chunk), torch.int32),
                   _scratch("box", (batch, chunks, per_chunk, 4), torch.int32),
                   _scratch("counts", (batch, chunks), torch.int64), _scratch("bad", (batch, chunks), torch.bool),
                   _scratch("zbuf", (batch, height, width), torch.float64), ids.numpy(), bary.numpy(), depth.numpy()):
        raise ValueError(f"triangle vertex ids must lie in [0, {vertices})")
    return ids, bary, depth


def parallel_split(batch: int, height: int, width: int) -> tuple[int, int]:
    """How to share out one face among threads when the batch is smaller than the thread count:
    as many chunks of triangles (binning) and bands of rows (drawing) as threads per face."""
    share = max(1, numba.get_num_threads() // batch)
    return share, share
