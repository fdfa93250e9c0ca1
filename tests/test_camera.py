"""Crop camera, photo intrinsics through an Alignment matrix, and their round trips."""
from __future__ import annotations

import math

import pytest
import torch

from deep3dface.camera import CAMERA_DISTANCE, CROP_FOCAL, Camera, apply_homography, crop_intrinsics


def _random_faces(batch, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([1.8, 1.8, 1.2], dtype=dtype)


def test_crop_projection_is_the_deep3d_formula(dtype):
    points = _random_faces(2, 50, dtype)
    pixels = Camera.crop(dtype=dtype).project(points)
    x, y, z = points.unbind(-1)
    depth = CAMERA_DISTANCE - z
    # reference: (1015 x/d + 112, 1015 y/d + 112), pixel centres at integers, y up
    ref_x, ref_y = CROP_FOCAL * x / depth + 112, CROP_FOCAL * y / depth + 112
    expected = torch.stack([ref_x + 0.5, 223 - ref_y + 0.5], -1)
    torch.testing.assert_close(pixels, expected)


def test_face_centre_projects_to_the_crop_centre():
    pixel = Camera.crop(dtype=torch.float64).project(torch.zeros(1, 1, 3, dtype=torch.float64))
    # the reference's (112, 112) with y up is row 111 counted from the top, whose centre is 111.5
    torch.testing.assert_close(pixel, torch.tensor([[[112.5, 111.5]]], dtype=torch.float64))


def test_screen_depth_and_unproject_round_trip(dtype):
    camera = Camera.crop(dtype=dtype)
    points = _random_faces(3, 40, dtype)
    screen = camera.screen(points)
    torch.testing.assert_close(screen[..., 2], CAMERA_DISTANCE - points[..., 2])
    back = camera.unproject(screen[..., :2], screen[..., 2])
    torch.testing.assert_close(back, camera.to_camera_space(points), atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)


def _similarity(scale, angle, tx, ty):
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return torch.tensor([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("angle", [0.0, 0.3])
def test_photo_intrinsics_round_trip(angle, dtype):
    """Projecting with K_photo = A⁻¹·K_crop equals projecting in the crop and mapping back by A⁻¹."""
    A = _similarity(0.37, angle, -41.2, 13.7)
    crop = Camera.crop(dtype=dtype)
    photo = crop.for_photo(A, width=900, height=700)
    points = _random_faces(2, 30, dtype, seed=1)
    in_crop = crop.project(points)
    expected = apply_homography(torch.linalg.inv(A), in_crop)
    atol = 2e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(photo.project(points), expected, atol=atol, rtol=0)
    torch.testing.assert_close(apply_homography(A, photo.project(points)), in_crop, atol=atol, rtol=0)


def test_photo_intrinsics_closed_form():
    """For crop = s·photo + t the photo camera has focal f/s and principal point (c − t)/s."""
    s, tx, ty = 0.45, -30.0, 12.5
    K = Camera.crop(dtype=torch.float64).for_photo(_similarity(s, 0.0, tx, ty), 640, 480).K
    c = crop_intrinsics()
    expected = torch.tensor([[CROP_FOCAL / s, 0, (c[0, 2] - tx) / s], [0, CROP_FOCAL / s, (c[1, 2] - ty) / s], [0, 0, 1]],
                            dtype=torch.float64)
    torch.testing.assert_close(K, expected)


def test_per_face_photo_cameras():
    A = torch.stack([_similarity(0.5, 0.0, 3.0, 4.0), _similarity(0.25, 0.1, -8.0, 2.0)])
    crop = Camera.crop(dtype=torch.float64)
    photo = crop.for_photo(A, 800, 600)
    points = _random_faces(2, 10, torch.float64)
    expected = apply_homography(torch.linalg.inv(A), crop.project(points))
    torch.testing.assert_close(photo.project(points), expected)


def test_project_with_jacobian_matches_project_and_autodiff():
    """The pixels equal ``Camera.project``'s; the derivative equals autograd's, per point."""
    from deep3dface.camera import project_with_jacobian

    camera = Camera.crop()
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    K = camera.K.double().expand(2, 3, 3)
    uv, d_uv = project_with_jacobian(points, K, camera.distance)
    torch.testing.assert_close(uv, camera.project(points), rtol=1e-12, atol=1e-9)
    full = torch.autograd.functional.jacobian(lambda p: camera.project(p), points)  # (2, 5, 2, 2, 5, 3)
    per_point = torch.stack([torch.stack([full[b, n, :, b, n] for n in range(5)]) for b in range(2)])
    torch.testing.assert_close(d_uv, per_point, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_photo_intrinsics_of_a_batch_equal_each_faces(batch):
    """Regression: with exactly 3 faces, torch.linalg.solve((3, 3, 3), (3, 3)) took the crop K for
    a batch of three vectors, and every face of a 3-face photo got a wrong photo camera."""
    crop = Camera.crop(dtype=torch.float64)
    matrices = torch.stack([_similarity(0.3 + 0.1 * k, 0.0, -40.0 + 7 * k, 13.0 - 5 * k) for k in range(batch)])
    together = crop.for_photo(matrices, 640, 480).K
    assert together.shape == (batch, 3, 3)
    for k in range(batch):
        assert torch.allclose(together[k], crop.for_photo(matrices[k], 640, 480).K)
