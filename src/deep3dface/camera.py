"""Cameras: Deep3D's crop camera as OpenCV intrinsics, projection, and crop ↔ photo.

Frames, defined once here:

* **Model (world) space**: posed face in model units, x to image right, y up, +z towards the camera
  (``morphable.data``).  The camera sits at (0, 0, ``distance``) looking down −z.
* **Camera space** (OpenCV): x right, y down, z forward (depth).  ``X_cam = FLIP · (p − (0, 0, d))``
  with the fixed axis flip ``FLIP = diag(1, −1, −1)``, i.e. ``X_cam = (x, −y, d − z)``.
* **Pixels**: x right, y down, origin at the top-left *corner* of the top-left pixel (its centre is
  (0.5, 0.5)); ``u = K · X_cam / Z``.

Deep3D's crop camera: f = 1015, distance 10, 224×224 crop.  The reference projects to
``(1015·x/(10 − z) + 112, 1015·y/(10 − z) + 112)`` with pixel centres at integers and y up
(row = 223 − y); in our pixels that is ``cx = 112.5`` and ``cy = 224 − 112 − 0.5 = 111.5``.

An Alignment maps photo pixels to crop pixels with a 3×3 matrix A (last row 0, 0, 1); the same
face then projects into the photo with ``K_photo = A⁻¹ · K_crop``.  For a scale-and-translation crop
(crop = s·photo + t) that is focal f/s and principal point (c − t)/s, the value the seed port's
``estimate_intrinsic`` converges to.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CROP_SIZE = 224
CROP_FOCAL = 1015.0
CAMERA_DISTANCE = 10.0
AXIS_FLIP = (1.0, -1.0, -1.0)  # model frame (y up, looking down -z) -> OpenCV frame (y down, +z forward)


def crop_intrinsics(size: int = CROP_SIZE, focal: float = CROP_FOCAL, dtype=torch.float64) -> torch.Tensor:
    """(3, 3) K of Deep3D's crop camera in corner-origin, y-down pixels."""
    centre = size / 2
    return torch.tensor([[focal, 0.0, centre + 0.5], [0.0, focal, centre - 0.5], [0.0, 0.0, 1.0]], dtype=dtype)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at (0, 0, distance) of model space; K is (3, 3) or per face (B, 3, 3)."""

    K: torch.Tensor
    width: int
    height: int
    distance: float = CAMERA_DISTANCE

    @classmethod
    def crop(cls, size: int = CROP_SIZE, focal: float = CROP_FOCAL, distance: float = CAMERA_DISTANCE,
             dtype=torch.float32, device=None) -> "Camera":
        return cls(crop_intrinsics(size, focal).to(dtype=dtype, device=device), size, size, distance)

    def for_photo(self, photo_to_crop: torch.Tensor, width: int, height: int) -> "Camera":
        """The camera that images the same face into the photo: ``K_photo = A⁻¹ · K``.

        ``photo_to_crop`` (3, 3) or (B, 3, 3) maps photo pixels to this camera's pixels."""
        A = torch.as_tensor(photo_to_crop, dtype=torch.float64, device=self.K.device)
        K = self.K.to(torch.float64)
        # matching batch shapes: solve((3, 3, 3), (3, 3)) would read K as a batch of three vectors
        K = torch.linalg.solve(A, K.expand(*A.shape[:-2], 3, 3) if A.ndim > K.ndim else K)
        return Camera(K.to(self.K.dtype), width, height, self.distance)

    def to_camera_space(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) model-space points -> (B, N, 3) OpenCV camera space (z = depth)."""
        flip = vertices.new_tensor(AXIS_FLIP)
        offset = vertices.new_tensor((0.0, 0.0, self.distance))
        return (vertices - offset) * flip

    def _K(self, like: torch.Tensor) -> torch.Tensor:
        K = self.K.to(dtype=like.dtype, device=like.device)
        return K if K.ndim == 3 else K.expand(like.shape[0], 3, 3)

    def project_camera_space(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) camera-space points -> (B, N, 2) pixels."""
        homogeneous = points @ self._K(points).transpose(1, 2)
        return homogeneous[..., :2] / homogeneous[..., 2:3]

    def project(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) model-space points -> (B, N, 2) pixels (corner origin, y down)."""
        return self.project_camera_space(self.to_camera_space(vertices))

    def screen(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) model-space points -> (B, N, 3) (u, v, depth): the rasteriser's input."""
        points = self.to_camera_space(vertices)
        return torch.cat([self.project_camera_space(points), points[..., 2:3]], dim=-1)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) pixels and (B, M) depths -> (B, M, 3) camera-space points."""
        ones = torch.ones_like(pixels[..., :1])
        rays = torch.cat([pixels, ones], -1) @ torch.linalg.inv(self._K(pixels)).transpose(1, 2)
        return rays * depth[..., None]


def project_with_jacobian(vertices: torch.Tensor, K: torch.Tensor, distance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3) model-space points, (B, 3, 3) intrinsics -> ((B, N, 2) pixels as ``Camera.project``,
    (B, N, 2, 3) their derivative d pixels / d vertices = (K[:2] − uv ⊗ K[2]) / h_z · FLIP):
    the closed-form Jacobians of the landmark fits start here."""
    flip = vertices.new_tensor(AXIS_FLIP)
    h = ((vertices - vertices.new_tensor((0.0, 0.0, distance))) * flip) @ K.transpose(1, 2)
    uv = h[..., :2] / h[..., 2:3]
    return uv, (K[:, None, :2, :] - uv[..., None] * K[:, None, 2:3, :]) / h[..., 2:3, None] * flip


def apply_homography(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map (..., N, 2) points with a (3, 3) or (B, 3, 3) matrix."""
    matrix = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
    ones = torch.ones_like(points[..., :1])
    mapped = torch.cat([points, ones], -1) @ matrix.transpose(-1, -2)
    return mapped[..., :2] / mapped[..., 2:3]
