"""Numba backend (CPU): triangles classified in SIMD blocks, then drawn by bands of rows in parallel.

One call runs two parallel phases per face of the batch:

1. triangles, in contiguous chunks (one per thread), in blocks of ``BLOCK``: after one vectorised
   check of the chunk's vertex ids, a scalar loop gathers the block's vertices into a small array,
   then a branch-free, division-free loop (LLVM vectorises it) finds each triangle's box of pixel
   centres, whether it may be drawn and, for a box of at most 2 x 2 centres (98% of the drawable
   triangles of the default face at 224², half at 512²), which of those centres it covers.  Most
   triangles stop there (empty box, culled, no centre covered).  A short scalar loop shades each
   covered centre (depth-test value, barycentrics, depth) into the chunk's ``single`` list; larger
   boxes go to its ``multi`` list;
2. bands of rows, one task each: the single fragments that fall in the band are depth-tested and
   written; the multi triangles are drawn into the band's rows (edge functions per pixel) and a
   winning fragment writes the outputs at once, vertices in registers.

The depth test keeps the smaller (depth, triangle id) pair: the result of a serial loop in id order
with a strict test, whatever the order fragments arrive in.  No locks, no atomics: tasks write
disjoint rows.  The arithmetic is the float64 expressions of ``raster.py``'s docstring, written in
the same order as the torch and reference backends (no fastmath: no FMA contraction or
reassociation; vectorising does not change IEEE results), hence identical ids.  ``error_model=
"numpy"``: a division by zero gives inf / NaN as in torch, without a check that blocks
vectorisation.  The kernels compile on first use and are cached on disk (``cache=True``).
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from numba import prange

from ..threads import numba_follows_torch

#: triangles per classification block: its gathered vertices (9 x BLOCK float64) and results stay in L1
BLOCK = 256
_VALUES = 6  # rows of a block's results: larger box, i0, i1, j0, j1, mask of covered centres


@numba.njit(cache=True, inline="always")
def _load(screen, n, k):  # pragma: no cover - compiled
    return np.float64(screen[n, k, 0]), np.float64(screen[n, k, 1]), np.float64(screen[n, k, 2])


@numba.njit(cache=True, inline="always")
def _edge_setup(xa, ya, xb, yb, orient):  # pragma: no cover - compiled
    """Edge a -> b with its endpoints in canonical (lexicographic) order, by selects (not branches:
    this runs in the vectorised loop): origin x, y, dx, dy, the sign that makes the inside
    positive, and whether the oriented edge is a top or left edge."""
    swap = (xa > xb) | ((xa == xb) & (ya > yb))
    ox, oy = (xb if swap else xa), (yb if swap else ya)
    qx, qy = (xa if swap else xb), (ya if swap else yb)
    dx, dy = (xb - xa) * orient, (yb - ya) * orient
    return ox, oy, qx - ox, qy - oy, (-orient if swap else orient), (dy < 0) | ((dy == 0) & (dx > 0))


@numba.njit(cache=True, inline="always")
def _centre(e0, e1, e2, px, py):  # pragma: no cover - compiled
    """The three edge functions at (px, py) and whether the centre is covered (never for NaN)."""
    ax0, ay0, dx0, dy0, s0, tl0 = e0
    ax1, ay1, dx1, dy1, s1, tl1 = e1
    ax2, ay2, dx2, dy2, s2, tl2 = e2
    w0 = s0 * (dx0 * (py - ay0) - dy0 * (px - ax0))
    w1 = s1 * (dx1 * (py - ay1) - dy1 * (px - ax1))
    w2 = s2 * (dx2 * (py - ay2) - dy2 * (px - ax2))
    covered = (((w0 > 0) | ((w0 == 0) & tl0)) & ((w1 > 0) | ((w1 == 0) & tl1))
               & ((w2 > 0) | ((w2 == 0) & tl2)) & ((w0 + w1) + w2 > 0))
    return w0, w1, w2, covered


@numba.njit(cache=True, inline="always")
def _barycentrics(x0, y0, z0, x1, y1, z1, x2, y2, z2, px, py):  # pragma: no cover - compiled
    """Perspective-correct barycentrics and depth at (px, py): ``raster.pixel_barycentrics``'
    formula, operation for operation (the fast path must equal it bit for bit)."""
    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    t = (e0 + e1) + e2
    q0, q1, q2 = (e0 / t) / z0, (e1 / t) / z1, (e2 / t) / z2
    inverse = (q0 + q1) + q2
    return q0 / inverse, q1 / inverse, q2 / inverse, 1.0 / inverse


@numba.njit(cache=True, error_model="numpy")
def _classify(v, out, count, near, cull, height, width):  # pragma: no cover - compiled
    """v (9, BLOCK) float64: x, y, z of the three vertices of ``count`` triangles -> out (_VALUES, BLOCK): 1 for a drawable triangle whose box holds more than 2 x 2
    centres, else 0; box (i0, i1, j0, j1; 0 unless drawable); for a box of at most 2 x 2 centres,
    the bit mask of the covered ones among (i0, j0), (i0, j0 + 1), (i0 + 1, j0), (i0 + 1, j0 + 1).  Branch-free and without divisions on purpose (vectorised; most triangles
    stop here)."""
    for k in range(count):
        x0, y0, z0, x1, y1, z1 = v[0, k], v[1, k], v[2, k], v[3, k], v[4, k], v[5, k]
        x2, y2, z2 = v[6, k], v[7, k], v[8, k]
        # x - x is NaN for inf and NaN
        good = ((z0 >= near) & (z0 < np.inf) & (x0 - x0 == 0) & (y0 - y0 == 0)
                & (z1 >= near) & (z1 < np.inf) & (x1 - x1 == 0) & (y1 - y1 == 0)
                & (z2 >= near) & (z2 < np.inf) & (x2 - x2 == 0) & (y2 - y2 == 0))
        area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        good = good & (area2 != 0) & ~(cull & (area2 > 0))
        orient = 1.0 if area2 > 0 else -1.0
        # box of pixel centres, clamped before the int conversion (huge coordinates)
        j0 = max(math.ceil(min(max(min(min(x0, x1), x2) - 0.5, -1.0), width)), 0.0)
        j1 = min(math.floor(min(max(max(max(x0, x1), x2) - 0.5, -1.0), width)), width - 1.0)
        i0 = max(math.ceil(min(max(min(min(y0, y1), y2) - 0.5, -1.0), height)), 0.0)
        i1 = min(math.floor(min(max(max(max(y0, y1), y2) - 0.5, -1.0), height)), height - 1.0)
        drawn = good & (j0 <= j1) & (i0 <= i1)
        small = drawn & (j1 - j0 <= 1.0) & (i1 - i0 <= 1.0)
        e0 = _edge_setup(x1, y1, x2, y2, orient)
        e1 = _edge_setup(x2, y2, x0, y0, orient)
        e2 = _edge_setup(x0, y0, x1, y1, orient)
        px, py = j0 + 0.5, i0 + 0.5
        c0 = _centre(e0, e1, e2, px, py)[3]
        c1 = _centre(e0, e1, e2, px + 1.0, py)[3]
        c2 = _centre(e0, e1, e2, px, py + 1.0)[3]
        c3 = _centre(e0, e1, e2, px + 1.0, py + 1.0)[3]
        right, down = j0 < j1, i0 < i1
        mask = ((1.0 if c0 else 0.0) + (2.0 if c1 & right else 0.0) + (4.0 if c2 & down else 0.0)
                + (8.0 if c3 & right & down else 0.0))
        out[0, k] = 1.0 if drawn & ~small else 0.0
        out[5, k] = mask if small else 0.0
        out[1, k], out[2, k] = (i0 if drawn else 0.0), (i1 if drawn else 0.0)
        out[3, k], out[4, k] = (j0 if drawn else 0.0), (j1 if drawn else 0.0)


@numba.njit(cache=True)
def _id_range(tris, f0, f1):  # pragma: no cover - compiled
    """Smallest and largest vertex id of triangles [f0, f1) (a vectorised reduction: checking each
    id where it is read costs more than the classification)."""
    lowest, highest = np.int64(0), np.int64(0)
    flat = tris[f0:f1].ravel()
    for k in range(flat.size):
        lowest, highest = min(lowest, flat[k]), max(highest, flat[k])
    return lowest, highest


@numba.njit(cache=True, inline="always")
def _bin(screen, n, tris, f0, f1, near, cull, height, width, v, out, block_list, single_id, single_at,
         single_value, multi_id, multi_box):  # pragma: no cover - compiled
    """Classify triangles [f0, f1) of face n block by block: append the covered centres of boxes of
    at most 2 x 2 centres, shaded, to the single list (few: their divisions are not worth
    vectorising) and larger boxes to the multi list.  Returns (fragments, multis, whether a vertex
    id was out of range: then nothing is read or listed)."""
    lowest, highest = _id_range(tris, f0, f1)
    if (lowest < 0) | (highest >= screen.shape[1]):
        return 0, 0, True  # the call fails: no need to draw the chunk's valid triangles
    singles = multis = 0
    for b0 in range(f0, f1, BLOCK):
        count = min(BLOCK, f1 - b0)
        for k in range(count):
            for m in range(3):
                v[3 * m, k], v[3 * m + 1, k], v[3 * m + 2, k] = _load(screen, n, tris[b0 + k, m])
        _classify(v, out, count, near, cull, height, width)
        # 4 k + centre of each covered centre, and positions of larger boxes: written whatever
        # they are, kept by advancing the count (no mispredicted branches)
        ones = larger = 0
        for k in range(count):
            mask = np.int64(out[5, k])
            for c in range(4):
                block_list[0, ones] = 4 * k + c
                ones += (mask >> c) & 1
            block_list[1, larger] = k
            larger += out[0, k] == 1.0
        for m in range(ones):
            k, c = block_list[0, m] >> 2, block_list[0, m] & 3
            x0, y0, z0, x1, y1, z1 = v[0, k], v[1, k], v[2, k], v[3, k], v[4, k], v[5, k]
            x2, y2, z2 = v[6, k], v[7, k], v[8, k]
            i, j = np.int32(out[1, k]) + (c >> 1), np.int32(out[3, k]) + (c & 1)
            py, px = i + 0.5, j + 0.5
            # the edge functions again, by the same expressions: storing them would stop LLVM
            # from vectorising _classify (too many output streams)
            orient = 1.0 if (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0) > 0 else -1.0
            w0, w1, w2, _ = _centre(_edge_setup(x1, y1, x2, y2, orient), _edge_setup(x2, y2, x0, y0, orient),
                                    _edge_setup(x0, y0, x1, y1, orient), px, py)
            single_id[singles] = b0 + k
            single_at[singles, 0], single_at[singles, 1] = i, j
            single_value[singles, 0] = ((w0 + w1) + w2) / ((w0 / z0 + w1 / z1) + w2 / z2)
            (single_value[singles, 1], single_value[singles, 2], single_value[singles, 3],
             single_value[singles, 4]) = _barycentrics(x0, y0, z0, x1, y1, z1, x2, y2, z2, px, py)
            singles += 1
        for m in range(larger):
            k = block_list[1, m]
            multi_id[multis] = b0 + k
            for c in range(4):
                multi_box[multis, c] = np.int32(out[1 + c, k])
            multis += 1
    return singles, multis, False


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
def _draw(screen, n, tris, multi_id, multi_box, count, r0, r1, zbuf, ids, bary, depth):  # pragma: no cover
    """Draw the ``count`` listed larger-box triangles (drawable: checked by ``_classify``) into rows
    [r0, r1) of face n; a winning fragment writes the outputs at once."""
    for k in range(count):
        i0, i1 = max(multi_box[k, 0], r0), min(multi_box[k, 1], r1 - 1)
        if i0 > i1:
            continue
        j0, j1 = multi_box[k, 2], multi_box[k, 3]
        f = multi_id[k]
        x0, y0, z0 = _load(screen, n, tris[f, 0])
        x1, y1, z1 = _load(screen, n, tris[f, 1])
        x2, y2, z2 = _load(screen, n, tris[f, 2])
        orient = 1.0 if (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0) > 0 else -1.0
        ax0, ay0, dx0, dy0, s0, tl0 = _edge(x1, y1, x2, y2, orient)
        ax1, ay1, dx1, dy1, s1, tl1 = _edge(x2, y2, x0, y0, orient)
        ax2, ay2, dx2, dy2, s2, tl2 = _edge(x0, y0, x1, y1, orient)
        for i in range(i0, i1 + 1):
            py = i + 0.5
            for j in range(j0, j1 + 1):
                px = j + 0.5
                w0 = s0 * (dx0 * (py - ay0) - dy0 * (px - ax0))
                w1 = s1 * (dx1 * (py - ay1) - dy1 * (px - ax1))
                w2 = s2 * (dx2 * (py - ay2) - dy2 * (px - ax2))
                total = (w0 + w1) + w2
                # written so that NaN never covers
                if not (((w0 > 0) | ((w0 == 0) & tl0)) & ((w1 > 0) | ((w1 == 0) & tl1))
                        & ((w2 > 0) | ((w2 == 0) & tl2)) & (total > 0)):
                    continue
                d = total / ((w0 / z0 + w1 / z1) + w2 / z2)
                if (d < zbuf[i, j]) | ((d == zbuf[i, j]) & (f < ids[n, i, j])):
                    zbuf[i, j] = d
                    ids[n, i, j] = f
                    bary[n, i, j, 0], bary[n, i, j, 1], bary[n, i, j, 2], depth[n, i, j] = _barycentrics(
                        x0, y0, z0, x1, y1, z1, x2, y2, z2, px, py)


@numba.njit(cache=True, inline="always")
def _place(n, single_id, single_at, single_value, count, r0, r1, zbuf, ids, bary, depth):  # pragma: no cover
    """Depth-test the ``count`` listed one-centre fragments that fall in rows [r0, r1) of face n."""
    for k in range(count):
        i, j = single_at[k, 0], single_at[k, 1]
        if (i < r0) | (i >= r1):
            continue
        d, f = single_value[k, 0], single_id[k]
        if (d < zbuf[i, j]) | ((d == zbuf[i, j]) & (f < ids[n, i, j])):
            zbuf[i, j] = d
            ids[n, i, j] = f
            bary[n, i, j, 0], bary[n, i, j, 1], bary[n, i, j, 2] = single_value[k, 1], single_value[k, 2], single_value[k, 3]
            depth[n, i, j] = single_value[k, 4]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _raster(screen, tris, near, cull, bands, v, out, block_list, single_id, single_at, single_value, multi_id, multi_box,
            counts, bad, zbuf, ids, bary, depth):  # pragma: no cover
    """screen (B, N, 3) float32/64, tris (F, 3) int64; per task scratch v (B, T, 9, BLOCK) and out
    (B, T, _VALUES, BLOCK) float64, lists single_id (B, T, L) int32, single_at (B, T, L, 2) int32,
    single_value (B, T, L, 5) float64, multi_id (B, T, L) int32, multi_box (B, T, L, 4) int32 with
    L >= ceil(F / T), counts (B, T, 2) int64, bad (B, T) bool, zbuf (B, H, W) float64, for T chunks
    of triangles; out ids (B, H, W), bary (B, H, W, 3), depth (B, H, W).  False when a triangle
    refers to a vertex outside [0, N) (checked here rather than with torch: a torch op just before
    would leave torch's OpenMP workers spinning on the cores that this kernel's threads need)."""
    batch, chunks = bad.shape
    height, width = zbuf.shape[1], zbuf.shape[2]
    faces = tris.shape[0]
    for task in prange(batch * chunks):
        n, t = task // chunks, task % chunks
        counts[n, t, 0], counts[n, t, 1], bad[n, t] = _bin(
            screen, n, tris, faces * t // chunks, faces * (t + 1) // chunks, near, cull, height, width, v[n, t],
            out[n, t], block_list[n, t], single_id[n, t], single_at[n, t], single_value[n, t], multi_id[n, t], multi_box[n, t])
    for task in prange(batch * bands):
        n, r = task // bands, task % bands
        r0, r1 = height * r // bands, height * (r + 1) // bands
        zbuf[n, r0:r1] = np.inf
        ids[n, r0:r1] = -1
        bary[n, r0:r1] = 0.0
        depth[n, r0:r1] = np.inf
        for t in range(chunks):
            _place(n, single_id[n, t], single_at[n, t], single_value[n, t], counts[n, t, 0], r0, r1, zbuf[n], ids,
                   bary, depth)
            _draw(screen, n, tris, multi_id[n, t], multi_box[n, t], counts[n, t, 1], r0, r1, zbuf[n], ids, bary,
                  depth)
    for k in range(bad.size):
        if bad.flat[k]:
            return False
    return True


_SCRATCH = threading.local()
#: scratch buffers up to this size are kept per thread; larger ones (renders of several megapixels)
#: are allocated per call, where a page fault per page costs little against the render, and a
#: 4096² render no longer holds 128 MiB for the thread's life
SCRATCH_KEEP_BYTES = 32 << 20


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """A per-thread scratch array ``name`` of ``shape``, kept between calls (up to
    ``SCRATCH_KEEP_BYTES``).

    Freeing and re-allocating megabytes on every call lets glibc hand the pages back to the system
    and fault them in again: ~500 page faults, about 1 ms, per 224² call on a VM (much more when
    the machine is loaded).  Each buffer holds the largest size seen so far."""
    size = math.prod(shape)
    if size * torch.empty((), dtype=dtype).element_size() > SCRATCH_KEEP_BYTES:
        return torch.empty(shape, dtype=dtype).numpy()
    held = getattr(_SCRATCH, "buffers", None)
    if held is None:
        held = _SCRATCH.buffers = {}
    buffer = held.get((name, dtype))
    if buffer is None or buffer.numel() < size:
        buffer = held[name, dtype] = torch.empty(size, dtype=dtype)
    return buffer[:size].view(shape).numpy()


def rasterize_shaded(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, near: float,
                     cull: bool, split: tuple[int, int] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_rasterize_shaded`` on torch's thread count (``threads.numba_follows_torch``)."""
    with numba_follows_torch():
        return _rasterize_shaded(screen, triangles, height, width, near, cull, split)


def _rasterize_shaded(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, near: float,
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
                   _scratch("v", (batch, chunks, 9, BLOCK), torch.float64),
                   _scratch("out", (batch, chunks, _VALUES, BLOCK), torch.float64),
                   _scratch("block_list", (batch, chunks, 2, 4 * BLOCK), torch.int32),
                   _scratch("single_id", (batch, chunks, 4 * per_chunk), torch.int32),
                   _scratch("single_at", (batch, chunks, 4 * per_chunk, 2), torch.int32),
                   _scratch("single_value", (batch, chunks, 4 * per_chunk, 5), torch.float64),
                   _scratch("multi_id", (batch, chunks, per_chunk), torch.int32),
                   _scratch("multi_box", (batch, chunks, per_chunk, 4), torch.int32),
                   _scratch("counts", (batch, chunks, 2), torch.int64), _scratch("bad", (batch, chunks), torch.bool),
                   _scratch("zbuf", (batch, height, width), torch.float64), ids.numpy(), bary.numpy(), depth.numpy()):
        raise ValueError(f"triangle vertex ids must lie in [0, {vertices})")
    return ids, bary, depth


def parallel_split(batch: int, height: int, width: int) -> tuple[int, int]:
    """How to share out one face among threads when the batch is smaller than the thread count:
    as many chunks of triangles (binning) and bands of rows (drawing) as threads per face."""
    share = max(1, numba.get_num_threads() // batch)
    return share, share
