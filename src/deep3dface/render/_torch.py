"""Vectorised torch backend (any device): triangle ids by bounding-box candidates and a z-buffer.

Every (triangle, pixel-in-its-bounding-box) pair is a candidate; candidates are made in chunks of
whole triangles so that memory stays bounded whatever the mesh.  Coverage and depth follow the
expressions of ``raster.py``'s docstring exactly, in float64 (see ``_numba.py`` for the same
arithmetic as loops).  The depth test is exact: a scatter-min of float64 depth per pixel, then a
scatter-min of the triangle id among the candidates at that depth.
"""
from __future__ import annotations

import torch

#: candidates (pixel, triangle pairs) per chunk: ~400 bytes of temporaries each, ~200 MB at most
CHUNK = 1 << 19


def triangle_setup(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, near: float,
                   cull: bool) -> dict[str, torch.Tensor]:
    """Per (batch, triangle) data, flattened to B·F rows, from screen (B, N, 3) float64.

    Returns ``rows`` / ``cols`` (B·F, 2) int64 first and last pixel of the bounding box (empty
    when last < first; dropped triangles are empty), ``edge`` (B·F, 3, 4) float64 canonical edges
    (ax, ay, dx, dy), ``sign`` (B·F, 3) float64 ±1, ``top_left`` (B·F, 3) bool, ``z`` (B·F, 3).
    """
    v = screen[:, triangles]                                        # (B, F, 3, 3)
    x, y, z = v.unbind(-1)
    area2 = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    keep = torch.isfinite(v).flatten(-2).all(-1) & (z >= near).all(-1) & (area2 != 0)
    if cull:
        keep &= area2 < 0
    orient = torch.where(area2 > 0, 1.0, -1.0).to(torch.float64)[..., None]
    # edge k runs from vertex k+1 to vertex k+2 (opposite vertex k)
    xa, ya, xb, yb = x.roll(-1, -1), y.roll(-1, -1), x.roll(-2, -1), y.roll(-2, -1)
    swap = (xa > xb) | ((xa == xb) & (ya > yb))
    ax, ay = torch.where(swap, xb, xa), torch.where(swap, yb, ya)
    edge = torch.stack([ax, ay, torch.where(swap, xa, xb) - ax, torch.where(swap, ya, yb) - ay], -1)
    sign = torch.where(swap, -orient, orient)
    # oriented so that the inside is where the edge function is positive: top-left rule
    dx, dy = (xb - xa) * orient, (yb - ya) * orient
    top_left = (dy < 0) | ((dy == 0) & (dx > 0))
    rows = _pixel_range(y.amin(-1), y.amax(-1), height)
    cols = _pixel_range(x.amin(-1), x.amax(-1), width)
    rows = torch.where(keep[..., None], rows, rows.new_tensor([0, -1]))   # dropped: empty box
    flat = screen.shape[0] * triangles.shape[0]
    return {"rows": rows.reshape(flat, 2), "cols": cols.reshape(flat, 2), "edge": edge.reshape(flat, 3, 4),
            "sign": sign.reshape(flat, 3), "top_left": top_left.reshape(flat, 3), "z": z.reshape(flat, 3)}


def _pixel_range(low: torch.Tensor, high: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 2) int64 first/last pixel index whose centre k + 0.5 lies in [low, high], clipped."""
    # clamp in float first so that huge or infinite coordinates convert to int safely
    first = torch.ceil((low - 0.5).clamp(-1, size)).clamp(min=0)
    last = torch.floor((high - 0.5).clamp(-1, size)).clamp(max=size - 1)
    return torch.stack([first, last], -1).nan_to_num(-1).long()


def triangle_ids(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, near: float,
                 cull: bool) -> torch.Tensor:
    """(B, H, W) int64 covering triangle per pixel (-1 empty) from screen (B, N, 3) float64."""
    batch, faces = screen.shape[0], triangles.shape[0]
    device = screen.device
    zbuf = torch.full((batch * height * width,), float("inf"), dtype=torch.float64, device=device)
    ids = torch.full((batch * height * width,), -1, dtype=torch.int64, device=device)
    if faces == 0:
        return ids.view(batch, height, width)
    setup = triangle_setup(screen, triangles, height, width, near, cull)
    counts = ((setup["rows"][:, 1] - setup["rows"][:, 0] + 1).clamp(min=0)
              * (setup["cols"][:, 1] - setup["cols"][:, 0] + 1).clamp(min=0))
    ends = counts.cumsum(0).cpu()
    start = 0
    # chunks of whole triangles, in ascending (batch, triangle) order: an earlier chunk wins ties
    while start < counts.numel():
        done = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, done + CHUNK, right=True)), start + 1)
        _raster_chunk(setup, counts, start, stop, faces, height, width, zbuf, ids)
        start = stop
    return ids.view(batch, height, width)


def _raster_chunk(setup, counts, start, stop, faces, height, width, zbuf, ids) -> None:
    """Z-test the candidates of flattened triangles [start, stop) into zbuf / ids (in place)."""
    device = zbuf.device
    rows_of = torch.arange(start, stop, device=device)
    tri = torch.repeat_interleave(rows_of, counts[start:stop])      # (C,) flattened triangle row
    if tri.numel() == 0:
        return
    offsets = counts[start:stop].cumsum(0) - counts[start:stop]
    local = torch.arange(tri.numel(), device=device) - offsets[tri - start]
    box_w = setup["cols"][tri, 1] - setup["cols"][tri, 0] + 1
    i = setup["rows"][tri, 0] + torch.div(local, box_w, rounding_mode="floor")
    j = setup["cols"][tri, 0] + local % box_w
    px = (j.to(torch.float64) + 0.5)[:, None]
    py = (i.to(torch.float64) + 0.5)[:, None]
    e = setup["edge"][tri]                                          # (C, 3, 4)
    w = setup["sign"][tri] * (e[..., 2] * (py - e[..., 1]) - e[..., 3] * (px - e[..., 0]))
    inside = ((w > 0) | ((w == 0) & setup["top_left"][tri])).all(1)
    total_w = (w[:, 0] + w[:, 1]) + w[:, 2]
    inside &= total_w > 0
    w, tri, total_w = w[inside], tri[inside], total_w[inside]
    z = setup["z"][tri]
    inverse = (w[:, 0] / z[:, 0] + w[:, 1] / z[:, 1]) + w[:, 2] / z[:, 2]
    depth = total_w / inverse
    pixel = (torch.div(tri, faces, rounding_mode="floor") * height + i[inside]) * width + j[inside]
    nearest = torch.full_like(zbuf, float("inf")).scatter_reduce_(0, pixel, depth, "amin")
    at_min = depth == nearest[pixel]
    first = torch.full_like(ids, faces).scatter_reduce_(0, pixel[at_min], tri[at_min] % faces, "amin")
    better = nearest < zbuf
    zbuf.copy_(torch.where(better, nearest, zbuf))
    ids.copy_(torch.where(better, first, ids))
