"""Rigid pose from landmarks recovers known poses of the conformance face model."""
from __future__ import annotations

import numpy as np
import torch

from deep3dface.camera import Camera
from deep3dface.fit.rigid import solve_pose
from deep3dface.morphable import load_model
from deep3dface.morphable.geometry import rotation_matrix


def test_solve_pose_recovers_random_poses(conformance):
    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    batch = 6
    angles = (torch.rand(batch, 3, generator=generator, dtype=torch.float64) - 0.5) * torch.tensor([0.8, 1.6, 0.8],
                                                                                                   dtype=torch.float64)
    trans = (torch.rand(batch, 3, generator=generator, dtype=torch.float64) - 0.5) * torch.tensor([0.2, 0.2, 1.0],
                                                                                                  dtype=torch.float64)
    # a different face for every pose, so each face's Jacobian must use its own points
    shapes = model.shape(torch.randn(batch, 80, generator=generator, dtype=torch.float64),
                         torch.randn(batch, 64, generator=generator, dtype=torch.float64))
    points = shapes[:, model.keypoints]
    camera = Camera.crop(dtype=torch.float64)
    pixels = camera.project(points @ rotation_matrix(angles).transpose(1, 2) + trans[:, None])
    got_angles, got_trans = solve_pose(points, pixels, camera)
    torch.testing.assert_close(got_angles, angles, atol=1e-7, rtol=0)
    torch.testing.assert_close(got_trans, trans, atol=1e-7, rtol=0)


def test_solve_pose_is_robust_to_noise_and_uses_weights(conformance):
    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    points = model.mean_shape[model.keypoints][None]
    camera = Camera.crop(dtype=torch.float64)
    angles = torch.tensor([[0.1, -0.5, 0.05]], dtype=torch.float64)
    pixels = camera.project(points @ rotation_matrix(angles).transpose(1, 2))
    noisy = pixels + torch.randn(pixels.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    noisy[0, :5] += 40.0  # five gross outliers ...
    weights = torch.ones(1, 68, dtype=torch.float64)
    weights[0, :5] = 0.0  # ... that the weights remove
    got, _ = solve_pose(points, noisy, camera, weights)
    assert np.degrees((got - angles).abs().max().item()) < 1.0
