"""Rigid pose from 2D landmarks: a closed-form start, then Gauss–Newton under full perspective.

Given the model's 3D keypoints X (model space, unposed) and their pixels p in a camera's image,
find angles and translation such that ``camera.project(R·X + t) ≈ p``.  The start is the scaled
orthographic (POS-style) solution: with the camera at distance d, a face near the optical axis
projects like ``f·s·(R X + t)_xy / d`` with s = d / (d − t_z); an affine least-squares fit gives
R's first two rows (re-orthonormalised) and s, hence t.  Six-parameter Gauss–Newton (Levenberg
damping) then removes the orthographic error.  Batched; float64 internally for stability.
"""
from __future__ import annotations

import torch

from ..camera import Camera
from ..morphable.geometry import angles_from_rotation, rotation_matrix


def _orthographic_start(points: torch.Tensor, pixels: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    K = camera._K(points)
    focal = K[:, 0, 0]
    # back to the model frame's image plane: x right, y up, in model units at the camera distance
    x = (pixels[..., 0] - K[:, None, 0, 2]) / focal[:, None] * camera.distance
    y = -(pixels[..., 1] - K[:, None, 1, 2]) / focal[:, None] * camera.distance
    design = torch.cat([points, torch.ones_like(points[..., :1])], -1)  # (B, K, 4)
    target = torch.stack([x, y], -1)  # (B, K, 2)
    affine = torch.linalg.lstsq(design, target).solution  # (B, 4, 2)
    r1, r2 = affine[:, :3, 0], affine[:, :3, 1]
    scale = (r1.norm(dim=1) + r2.norm(dim=1)) / 2
    # nearest rotation to [r1; r2; r1×r2] by SVD
    approx = torch.stack([r1, r2, torch.linalg.cross(r1, r2)], 1)
    u, _, vh = torch.linalg.svd(approx)
    fix = torch.ones_like(scale).unsqueeze(-1).repeat(1, 3)
    fix[:, 2] = torch.sign(torch.linalg.det(u @ vh))
    rotation = u @ torch.diag_embed(fix) @ vh
    tz = camera.distance - camera.distance / scale
    trans = torch.stack([affine[:, 3, 0] / scale, affine[:, 3, 1] / scale, tz], -1)
    return angles_from_rotation(rotation), trans


def _residuals(params: torch.Tensor, points, pixels, weights, camera) -> torch.Tensor:
    rotation = rotation_matrix(params[:, :3])
    posed = points @ rotation.transpose(1, 2) + params[:, None, 3:]
    return ((camera.project(posed) - pixels) * weights[..., None].sqrt()).flatten(1)


def solve_pose(points: torch.Tensor, pixels: torch.Tensor, camera: Camera, weights: torch.Tensor | None = None,
               iterations: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 3) model points, (B, K, 2) pixels -> angles (B, 3), trans (B, 3) in the input dtype.

    ``weights`` (B, K) ≥ 0 let hidden or unreliable points count less.  Valid for |yaw| < 90°."""
    dtype = points.dtype
    points, pixels = points.double(), pixels.double()
    cam = Camera(camera.K.double(), camera.width, camera.height, camera.distance)
    weights = torch.ones(pixels.shape[:2], dtype=torch.float64) if weights is None else weights.double()
    angles, trans = _orthographic_start(points, pixels, cam)
    params = torch.cat([angles, trans], 1)
    damping = torch.full((params.shape[0], 1, 1), 1e-3, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)
    for _ in range(iterations):
        residual = _residuals(params, points, pixels, weights, cam)
        jac = torch.func.vmap(torch.func.jacrev(
            lambda p, x, q, w: _residuals(p[None], x[None], q[None], w[None], cam)[0]))(params, points, pixels, weights)
        jtj = jac.transpose(1, 2) @ jac
        step = torch.linalg.solve(jtj + damping * (eye * jtj.diagonal(dim1=1, dim2=2)[:, None, :] + 1e-9 * eye),
                                  -(jac.transpose(1, 2) @ residual[..., None]))[..., 0]
        candidate = params + step
        better = (_residuals(candidate, points, pixels, weights, cam) ** 2).sum(1) < (residual ** 2).sum(1)
        params = torch.where(better[:, None], candidate, params)
        damping = torch.where(better[:, None, None], damping * 0.3, damping * 10)
    return params[:, :3].to(dtype), params[:, 3:].to(dtype)
