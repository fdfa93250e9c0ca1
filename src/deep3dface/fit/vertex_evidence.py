"""What the photo says about each vertex: whether it is seen, how much its pixel looks like skin,
and the model's operators for a per-vertex albedo.  Shared by the single-photo fit (``fitter``)
and the image set's shared albedo (``shared_albedo``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..caching import per_object
from ..camera import Camera
from ..morphable.data import ModelData
from ..morphable.topology import graph_laplacian, mirror_vertex_map
from ..render import rasterize
from .appearance import sample_photo
from .skin import skin_probability


def vertex_weights(model, geometry, screen, size, grazing_cosine):
    """(B, N) visibility × view-cosine weight: a vertex counts where the rendered surface at its
    pixel is the vertex's own (z-buffer test) and it faces the camera."""
    raster = rasterize(screen, model.triangles, tuple(size))
    height, width = size
    px = screen[..., 0].floor().long().clamp(0, width - 1)
    py = screen[..., 1].floor().long().clamp(0, height - 1)
    batch = torch.arange(screen.shape[0])[:, None]
    depth_at = raster.depth[batch, py, px]
    inside = (screen[..., 0] >= 0) & (screen[..., 0] < width) & (screen[..., 1] >= 0) & (screen[..., 1] < height)
    tolerance = 0.02 * screen[..., 2].mean(1, keepdim=True) / Camera.crop().distance  # 2 % of a decimetre
    visible = inside & (screen[..., 2] <= depth_at + tolerance)
    view = torch.tensor([0.0, 0.0, Camera.crop().distance], dtype=geometry.vertices.dtype) - geometry.vertices
    cosine = (geometry.normals * torch.nn.functional.normalize(view, dim=-1)).sum(-1)
    ramp = ((cosine - grazing_cosine) / (1 - grazing_cosine)).clamp(0, 1)
    return visible.to(cosine.dtype) * ramp


def skin_weights(crops, screen, vertex_weights):
    """Skin attention sampled at the vertices, its colour model adapted to the visible cheeks."""
    size = crops.shape[-2:]
    sample = torch.zeros(crops.shape[0], 1, *size, dtype=torch.bool)
    px = screen[..., 0].floor().long().clamp(0, size[1] - 1)
    py = screen[..., 1].floor().long().clamp(0, size[0] - 1)
    for b in range(crops.shape[0]):
        seen = vertex_weights[b] > 0.5
        sample[b, 0, py[b][seen], px[b][seen]] = True
    probability = skin_probability(crops.float(), sample)
    return sample_photo(probability.to(screen.dtype), screen[..., :2])[..., 0]


#: iBUG-68 contours of the two eye openings (0-based: 36-41 and 42-47)
EYE_CONTOURS = (tuple(range(36, 42)), tuple(range(42, 48)))


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of (N, 2) points lie inside the closed (K, 2) polygon (even-odd rule)."""
    inside = np.zeros(len(points), dtype=bool)
    x, y = points[:, 0], points[:, 1]
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


@per_object()
def eye_vertices(data: ModelData) -> torch.Tensor:
    """(N,) bool: the vertices inside the eye openings (the two eye contours of the 68 keypoints,
    seen from the front on the mean shape).  The skin attention leaves out the iris and much of
    the white, so the albedo there came from the priors: a pale, featureless eye in every render."""
    mean, keypoints = np.asarray(data.mean_shape), np.asarray(data.keypoints)
    inside = np.zeros(len(mean), dtype=bool)
    for contour in EYE_CONTOURS:
        inside |= inside_polygon(mean[:, :2], mean[keypoints[list(contour)], :2])
    return torch.from_numpy(inside)


def albedo_weights(model, visibility: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """(B, N) data weights of the per-vertex albedo: visibility × skin attention, but the photo
    itself inside the eye openings (a hand or hair there is rare; the iris is not skin)."""
    eyes = eye_vertices(model.data).to(skin.device)
    return visibility * torch.where(eyes, torch.ones_like(skin), skin)


@dataclass(frozen=True, eq=False)
class AlbedoOperators:
    laplacian: object        # (N, N) sparse graph Laplacian of the mesh (smoothness prior)
    mirror: np.ndarray       # (N,) each vertex's mirror image across the face's x = 0 plane


@per_object()
def albedo_operators(data: ModelData) -> AlbedoOperators:
    """Per-model sparse operators for the per-vertex albedo (built once per model)."""
    laplacian = graph_laplacian(data.triangles, data.mean_shape.shape[0])
    mirror, _ = mirror_vertex_map(data.mean_shape)
    return AlbedoOperators(laplacian, mirror)
