"""Rotation, normals, adjacency and SH shading: the pure functions under the face model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from deep3dface.morphable import vertex_triangle_adjacency
from deep3dface.morphable.geometry import angles_from_rotation, face_normals, rotation_matrix, vertex_normals
from deep3dface.morphable.shading import DEFAULT_AMBIENT, irradiance, sh_basis


def test_rotation_is_rz_ry_rx(dtype):
    pitch, yaw, roll = 0.3, -0.5, 0.2
    R = rotation_matrix(torch.tensor([[pitch, yaw, roll]], dtype=dtype))[0]
    c, s = math.cos, math.sin
    rx = torch.tensor([[1, 0, 0], [0, c(pitch), -s(pitch)], [0, s(pitch), c(pitch)]], dtype=dtype)
    ry = torch.tensor([[c(yaw), 0, s(yaw)], [0, 1, 0], [-s(yaw), 0, c(yaw)]], dtype=dtype)
    rz = torch.tensor([[c(roll), -s(roll), 0], [s(roll), c(roll), 0], [0, 0, 1]], dtype=dtype)
    torch.testing.assert_close(R, rz @ ry @ rx)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=dtype))
    assert torch.linalg.det(R).item() == pytest.approx(1.0)


def test_positive_yaw_turns_the_nose_to_image_right():
    nose = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    R = rotation_matrix(torch.tensor([[0.0, 0.4, 0.0]], dtype=torch.float64))[0]
    assert (R @ nose.T)[0, 0] > 0  # +x is image right


def test_angles_round_trip():
    angles = (torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) - 0.5) * 2.4
    torch.testing.assert_close(angles_from_rotation(rotation_matrix(angles)), angles)


def test_rotation_gradcheck():
    angles = torch.tensor([[0.1, -0.7, 0.4]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_matrix, (angles,))


@pytest.fixture(scope="module")
def sphere():
    mesh = trimesh.creation.icosphere(subdivisions=3)
    return torch.as_tensor(mesh.vertices)[None], torch.as_tensor(mesh.faces, dtype=torch.int64)


def test_normals_point_outward_on_a_sphere(sphere):
    vertices, triangles = sphere
    point_buf = torch.as_tensor(vertex_triangle_adjacency(triangles.numpy(), vertices.shape[1]))
    normals = vertex_normals(vertices, triangles, point_buf)
    assert torch.allclose(normals.norm(dim=-1), torch.ones(1, dtype=torch.float64))
    assert (normals * vertices).sum(-1).min() > 0.99  # unit sphere: normal ≈ position
    assert (face_normals(vertices, triangles) * vertices[:, triangles].mean(2)).sum(-1).min() > 0


def test_adjacency_equals_deep3d_point_buf(conformance):
    vectors = np.load(conformance / "bfm_vectors.npz")
    triangles = vectors["model_face_buf"]
    ours = vertex_triangle_adjacency(triangles, vectors["model_point_buf"].shape[0])
    np.testing.assert_array_equal(ours, vectors["model_point_buf"])


def test_sh_basis_matches_the_reference_table():
    n = torch.tensor([[0.36, 0.48, 0.8]], dtype=torch.float64)
    x, y, z = 0.36, 0.48, 0.8
    expected = [0.8862269255, -1.7724538509 * y, 1.7724538509 * z, -1.7724538509 * x, 2.4270323907 * x * y,
                -2.4270323907 * y * z, 0.7006239020 * (3 * z * z - 1), -2.4270323907 * x * z,
                1.2135161953 * (x * x - y * y)]
    np.testing.assert_allclose(sh_basis(n)[0].numpy(), expected, atol=1e-9)


def test_zero_lighting_is_white_ambient():
    normals = torch.nn.functional.normalize(torch.randn(1, 20, 3, dtype=torch.float64), dim=-1)
    light = irradiance(normals, torch.zeros(1, 27, dtype=torch.float64))
    torch.testing.assert_close(light, torch.full_like(light, DEFAULT_AMBIENT * 0.8862269254527579))


def test_lighting_channels_are_r_g_b_blocks():
    gamma = torch.zeros(1, 27, dtype=torch.float64)
    gamma[0, 9 + 2] = 1.0  # green, band 2 (z): light from the camera side
    light = irradiance(torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64), gamma)[0, 0]
    assert light[1] > light[0] == light[2]
