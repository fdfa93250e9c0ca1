"""Renderer against Deep3DFaceRecon_pytorch's projection (../shared/conformance, README section 2).

For the tiny synthetic BFM, the reference's camera-space vertices give the depth and its
``face_proj`` the pixels (y up, integer pixel centres; converted to ours here, at the boundary).
Every visible vertex must land in a covered pixel whose interpolated position and depth are its own.
"""
from __future__ import annotations

import numpy as np
import torch

from deep3dface.render import interpolate, rasterize

SIZE = 224


def reference_screen(conformance):
    vectors = np.load(conformance / "bfm_vectors.npz")
    model = np.load(conformance / "tiny_bfm.npz")
    proj = torch.from_numpy(vectors["face_proj_f64"])               # (B, N, 2), y up, centres at integers
    depth = torch.from_numpy(vectors["face_vertex_f64"])[..., 2:]   # camera depth
    pixels = torch.stack([proj[..., 0] + 0.5, SIZE - 1 - proj[..., 1] + 0.5], -1)
    triangles = torch.from_numpy(model["tri"]).long() - 1           # MATLAB 1-based -> 0-based
    return torch.cat([pixels, depth], -1), triangles


def signed_area2(screen, triangles):
    v = screen[:, triangles]                                        # (B, F, 3, 3)
    return ((v[..., 1, 0] - v[..., 0, 0]) * (v[..., 2, 1] - v[..., 0, 1])
            - (v[..., 2, 0] - v[..., 0, 0]) * (v[..., 1, 1] - v[..., 0, 1]))


def test_reference_faces_are_front_facing_with_negative_area(conformance):
    screen, triangles = reference_screen(conformance)
    assert (signed_area2(screen, triangles)[0] < 0).all()          # frontal mean face


def test_visible_vertices_render_where_the_reference_projects_them(conformance):
    screen, triangles = reference_screen(conformance)
    batch, count = screen.shape[:2]
    raster = rasterize(screen, triangles, (SIZE, SIZE))
    position = interpolate(screen, raster, triangles)               # (B, H, W, 3): x, y, depth
    col, row = screen[..., 0].floor().long(), screen[..., 1].floor().long()
    b = torch.arange(batch)[:, None].expand(-1, count)
    # not on a silhouette: the 3 x 3 pixels around the vertex are covered and its triangles face us
    covered = torch.nn.functional.max_pool2d((~raster.mask).double()[:, None], 3, 1, 1)[:, 0] == 0
    back = (signed_area2(screen, triangles) >= 0).double().repeat_interleave(3, 1)
    backs = torch.zeros(batch, count, dtype=torch.float64).index_add_(1, triangles.reshape(-1), back)
    interior = covered[b, row, col] & (backs == 0)
    surface = raster.depth[b, row, col]
    visible = interior & (surface >= screen[..., 2] - 0.02)
    assert visible.float().mean() > 0.6, "most vertices of a face are visible"
    here = position[b, row, col]
    assert ((here[..., :2] - screen[..., :2]).norm(dim=-1)[visible] <= 0.71).all()
    # the pixel is drawn by one of the vertex's own triangles (rare exceptions: folds of the random
    # shapes whose triangles are thinner than the 0.7 px from vertex to pixel centre) ...
    own = (triangles[raster.triangle_id[b, row, col].clamp(min=0)] == torch.arange(count)[:, None]).any(-1)
    assert own[visible].float().mean() > 0.99
    # ... and then the depth there is the vertex's, up to the slope over that 0.7 px
    assert ((here[..., 2] - screen[..., 2]).abs()[visible & own] < 0.07).all()
    # a vertex whose surface is clearly nearer is hidden, e.g. behind the nose of turned faces
    hidden = interior & (surface < screen[..., 2] - 0.05)
    assert hidden[1:].any() and not hidden[0].any()


def test_backends_agree_on_the_reference_faces(conformance):
    screen, triangles = reference_screen(conformance)
    fast = rasterize(screen, triangles, (SIZE, SIZE), backend="numba")
    vectorised = rasterize(screen, triangles, (SIZE, SIZE), backend="torch")
    assert torch.equal(fast.triangle_id, vectorised.triangle_id)
    torch.testing.assert_close(fast.barycentrics, vectorised.barycentrics, atol=1e-12, rtol=0)
    naive = rasterize(screen[3:4], triangles, (SIZE, SIZE), backend="reference")
    assert torch.equal(naive.triangle_id, fast.triangle_id[3:4])
