"""Where fitted keypoints land: residuals, RMS and visibility of the 68 (or any) model points.

Shared by the single-photo fitter, the image-set fit (``fit.image_set``), the video path, the
annotation keypoints and the identity benchmark; ``keypoint_geometry`` evaluates only the keypoints'
one-ring, so asking every round is cheap.
Points are crop pixels (corner origin, y down; DESIGN.md §2), coefficients in Deep3D's crop camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..caching import per_object
from ..camera import Camera
from ..morphable.data import ModelData
from ..morphable.geometry import rotation_matrix, vertex_normals
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


def facing_camera(model: MorphableModel, coeffs: Coefficients, min_cosine: float = 0.0,
                  perspective: bool = True) -> torch.Tensor:
    """(B, 68) bool: the keypoint's vertex normal faces the crop camera by a cosine above
    ``min_cosine``: towards the camera centre (``perspective``) or along the optical axis."""
    with torch.no_grad():
        points, normals = keypoint_geometry(model, coeffs)
        if not perspective:
            return normals[..., 2] > min_cosine
        view = torch.tensor([0.0, 0.0, Camera.crop().distance], dtype=points.dtype) - points
        facing = (normals * torch.nn.functional.normalize(view, dim=-1)).sum(-1)
    return facing > min_cosine


def visible_points(model: MorphableModel, coeffs: Coefficients, min_cosine: float = 0.0) -> torch.Tensor:
    """(P, 68) float64: 1 for points to fit, 0 for jaw points whose normal does not face along the
    optical axis (``facing_camera`` without perspective: for set fits it gives more consistent
    identities than the single-photo fitter's perspective rule, identity ratio 0.500 vs 0.517)."""
    visible = torch.ones(len(coeffs.id), 68, dtype=torch.float64)
    visible[:, JAW] = facing_camera(model, coeffs, min_cosine, perspective=False)[:, JAW].double()
    return visible


def _vertex_shape(model: MorphableModel, coeffs: Coefficients, vertex_ids: torch.Tensor) -> torch.Tensor:
    """(P, V, 3) float64 unposed shape at the given vertices only."""
    rows = (3 * vertex_ids[:, None] + torch.arange(3)).reshape(-1)
    offset = coeffs.id.double() @ model.id_basis[rows].double().T + coeffs.exp.double() @ model.exp_basis[rows].double().T
    return model.mean_shape[vertex_ids].double() + offset.view(coeffs.batch_size, -1, 3)


def keypoint_geometry(model: MorphableModel, coeffs: Coefficients) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 68, 3) posed keypoints and their unit normals in camera-facing model space, equal to
    ``model(coeffs)``'s ``vertices`` and ``normals`` at ``model.keypoints``, from the keypoints'
    one-ring only (a few hundred of the model's vertices: the fit asks this every round)."""
    ring = _keypoint_ring(model.data)
    dtype = model.mean_shape.dtype
    coeffs = coeffs.to(dtype)
    shape = model.shape_at(coeffs.id, coeffs.exp, ring.vertices)
    normals = vertex_normals(shape, ring.triangles, ring.point_buf)[:, ring.keypoints]
    rotation = rotation_matrix(coeffs.angle)
    points = shape[:, ring.keypoints] @ rotation.transpose(1, 2) + coeffs.trans[:, None]
    return points, normals @ rotation.transpose(1, 2)


@dataclass(frozen=True, eq=False)
class _Ring:
    vertices: torch.Tensor   # (U,) model vertex ids of the keypoints' triangles
    triangles: torch.Tensor  # (T, 3) those triangles, indexing ``vertices``
    point_buf: torch.Tensor  # (U, V) each local vertex's triangles among them, padded with T
    keypoints: torch.Tensor  # (68,) the keypoints, indexing ``vertices``


@per_object()
def _keypoint_ring(data: ModelData) -> _Ring:
    faces = data.point_buf[data.keypoints]
    faces = np.unique(faces[faces < len(data.triangles)])
    vertices, local = np.unique(data.triangles[faces], return_inverse=True)
    triangles = local.reshape(-1, 3)
    point_buf = np.full((len(vertices), data.point_buf.shape[1]), len(triangles))
    fill = np.zeros(len(vertices), dtype=np.int64)
    for t, corners in enumerate(triangles):  # keypoints get all their triangles; others a subset
        for v in corners:
            point_buf[v, fill[v]] = t
            fill[v] += 1
    keypoints = np.searchsorted(vertices, data.keypoints)
    as_long = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731
    return _Ring(as_long(vertices), as_long(triangles), as_long(point_buf), as_long(keypoints))
