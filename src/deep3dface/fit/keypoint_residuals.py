"""Where fitted keypoints land: residuals, RMS and visibility of the 68 (or any) model points.

Shared by the image-set fit (``fit.image_set``), the video path and the identity benchmark.
Points are crop pixels (corner origin, y down; DESIGN.md §2), coefficients in Deep3D's crop camera.
"""
from __future__ import annotations

import torch

from ..camera import Camera
from ..morphable.geometry import rotation_matrix
from ..morphable.model import MorphableModel
from ..types import Coefficients

JAW = slice(0, 17)


def landmark_rms(model: MorphableModel, coeffs: Coefficients, pixels: torch.Tensor, camera: Camera,
                 weights: torch.Tensor) -> torch.Tensor:
    """(P,) weighted RMS distance (pixels) between the fitted keypoints and the targets."""
    squared = (point_residuals(model, coeffs, pixels, camera) ** 2).sum(-1)
    w = weights.double()
    return ((squared * w).sum(1) / w.sum(1).clamp_min(1e-12)).sqrt()


def point_residuals(model: MorphableModel, coeffs: Coefficients, pixels: torch.Tensor, camera: Camera,
                    vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(P, K, 2) projected fitted vertices ``vertex_ids`` (default: the 68 keypoints) minus their
    (P, K, 2) targets, pixels."""
    with torch.no_grad():
        shape = _vertex_shape(model, coeffs, model.keypoints if vertex_ids is None else vertex_ids)
        posed = shape @ rotation_matrix(coeffs.angle.double()).transpose(1, 2) + coeffs.trans.double()[:, None]
        cam = Camera(camera.K.double(), camera.width, camera.height, camera.distance)
        return cam.project(posed) - pixels.double()


def visible_points(model: MorphableModel, coeffs: Coefficients, min_cosine: float = 0.0) -> torch.Tensor:
    """(P, 68) 1 for points to fit, 0 for jaw points whose vertex normal faces away from the camera.

    Only the triangles around the keypoints are evaluated (the model's normals are the normalised
    sum of the adjacent unit face normals, ``geometry.vertex_normals``)."""
    with torch.no_grad():
        ring = model.point_buf[model.keypoints]                         # (68, V), padded with F
        valid = ring < len(model.triangles)
        corners = model.triangles[ring.clamp_max(len(model.triangles) - 1)]  # (68, V, 3)
        used, local = torch.unique(corners, return_inverse=True)
        shape = _vertex_shape(model, coeffs, used)[:, local]           # (P, 68, V, 3, 3)
        v0, v1, v2 = shape.unbind(-2)
        face = torch.nn.functional.normalize(torch.linalg.cross(v0 - v1, v1 - v2, dim=-1), dim=-1, eps=1e-12)
        normals = torch.nn.functional.normalize((face * valid[..., None]).sum(2), dim=-1, eps=1e-12)
        normals = normals @ rotation_matrix(coeffs.angle.double()).transpose(1, 2)
    visible = torch.ones(normals.shape[:2], dtype=torch.float64)
    visible[:, JAW] = (normals[:, JAW, 2] > min_cosine).double()
    return visible


def _vertex_shape(model: MorphableModel, coeffs: Coefficients, vertex_ids: torch.Tensor) -> torch.Tensor:
    """(P, V, 3) float64 unposed shape at the given vertices only."""
    rows = (3 * vertex_ids[:, None] + torch.arange(3)).reshape(-1)
    offset = coeffs.id.double() @ model.id_basis[rows].double().T + coeffs.exp.double() @ model.exp_basis[rows].double().T
    return model.mean_shape[vertex_ids].double() + offset.view(coeffs.batch_size, -1, 3)
