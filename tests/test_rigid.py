"""Rigid pose from landmarks recovers known poses of the conformance face model."""
from __future__ import annotations

import numpy as np
import pytest
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


def test_fit_landmarks_explains_a_synthetic_face(conformance):
    from deep3dface.fit.landmark_fit import fit_landmarks

    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    coeffs = model.zero_coefficients(3).replace(
        id=torch.randn(3, 80, generator=generator, dtype=torch.float64),
        exp=0.8 * torch.randn(3, 64, generator=generator, dtype=torch.float64),
        angle=torch.tensor([[0.1, 0.4, 0.0], [-0.2, -0.6, 0.1], [0.0, 0.0, 0.3]], dtype=torch.float64),
        trans=torch.tensor([[0.02, -0.03, 0.2], [0.0, 0.0, -0.3], [0.05, 0.0, 0.0]], dtype=torch.float64))
    camera = Camera.crop(dtype=torch.float64)
    target = camera.project(model(coeffs).landmarks)
    fitted = fit_landmarks(model, target, camera)
    error = (camera.project(model(fitted).landmarks) - target).norm(dim=-1).mean(1)
    rigid_only = fitted.replace(id=torch.zeros_like(fitted.id), exp=torch.zeros_like(fitted.exp))
    rigid_error = (camera.project(model(rigid_only).landmarks) - target).norm(dim=-1).mean(1)
    assert (error < 1.0).all() and (error < 0.3 * rigid_error).all()
    # pitch trades off against identity with landmarks alone; yaw and roll are well determined
    torch.testing.assert_close(fitted.angle[:, 1:], coeffs.angle[:, 1:], atol=0.06, rtol=0)
    torch.testing.assert_close(fitted.angle[:, 0], coeffs.angle[:, 0], atol=0.1, rtol=0)


def test_fit_landmarks_batch_equals_one_face_at_a_time(conformance):
    """Faces are independent: a batch gives each face the answer it gets alone (the Jacobian is
    taken per face under vmap, so no face's data leaks into another's step)."""
    from deep3dface.fit.landmark_fit import fit_landmarks

    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    generator = torch.Generator().manual_seed(11)
    coeffs = model.zero_coefficients(4).replace(
        id=torch.randn(4, 80, generator=generator, dtype=torch.float64),
        exp=0.8 * torch.randn(4, 64, generator=generator, dtype=torch.float64),
        angle=0.4 * torch.randn(4, 3, generator=generator, dtype=torch.float64))
    camera = Camera.crop(dtype=torch.float64)
    target = camera.project(model(coeffs).landmarks)
    target = target + 0.5 * torch.randn(target.shape, generator=generator, dtype=torch.float64)
    batched = fit_landmarks(model, target, camera, iterations=6).to_vector()
    alone = torch.cat([fit_landmarks(model, target[i:i + 1], camera, iterations=6).to_vector() for i in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-8, rtol=0)


def test_fit_landmarks_angle_prior_holds_the_pose_it_is_given(conformance):
    """A pose belief from elsewhere: a strong prior on yaw wins over the landmarks, a zero-weight
    prior changes nothing, and pitch and roll stay free."""
    from deep3dface.fit.landmark_fit import fit_landmarks

    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    truth = model.zero_coefficients(1).replace(angle=torch.tensor([[0.1, 0.6, -0.05]], dtype=torch.float64))
    camera = Camera.crop(dtype=torch.float64)
    target = camera.project(model(truth).landmarks)
    plain = fit_landmarks(model, target, camera, iterations=15)
    believed = torch.tensor([[0.0, 0.8, 0.0]], dtype=torch.float64)
    held = fit_landmarks(model, target, camera, iterations=15,
                         angle_prior=(believed, torch.tensor([[0.0, 1e8, 0.0]], dtype=torch.float64)))
    free = fit_landmarks(model, target, camera, iterations=15, angle_prior=(believed, torch.zeros(1, 3, dtype=torch.float64)))
    assert abs(float(held.angle[0, 1]) - 0.8) < 2e-3
    assert abs(float(plain.angle[0, 1]) - 0.6) < 0.03
    torch.testing.assert_close(free.to_vector(), plain.to_vector(), atol=1e-9, rtol=0)
    assert abs(float(held.angle[0, 2]) + 0.05) < 0.1  # roll still fitted, not pulled to the prior's 0


@pytest.mark.parametrize("per_face_ids, prior, precision", [(False, False, False), (False, True, False),
                                                            (True, True, False), (False, False, True)])
def test_landmark_problem_jacobian_equals_autodiff(conformance, per_face_ids, prior, precision):
    """The closed-form Jacobian fit_landmarks uses equals forward-mode autodiff of its residuals
    (shared and per-face vertex ids, with and without an angle prior, with a full identity prior
    matrix), at random parameters; the prior rows' squared norm is λ_id·idᵀ·P·id + λ_exp‖exp‖²."""
    from deep3dface.fit.landmark_fit import landmark_problem
    from deep3dface.fit.solve import autodiff_jacobian

    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    batch, n = 3, model.id_basis.shape[1] + model.exp_basis.shape[1]
    ids = model.keypoints
    if per_face_ids:
        ids = torch.stack([torch.randperm(model.num_vertices, generator=generator)[:40] for _ in range(batch)])
    k = ids.shape[-1]
    pixels = 112 + 30 * torch.randn(batch, k, 2, generator=generator, dtype=torch.float64)
    weights = torch.rand(batch, k, generator=generator, dtype=torch.float64)
    angle_prior = (0.3 * torch.randn(batch, 3, generator=generator, dtype=torch.float64),
                   torch.rand(batch, 3, generator=generator, dtype=torch.float64) * 1e3) if prior else None
    n_id = model.id_basis.shape[1]
    root = torch.randn(n_id, n_id, generator=generator, dtype=torch.float64)
    id_precision = torch.eye(n_id, dtype=torch.float64) + root @ root.T if precision else None
    problem = landmark_problem(model, pixels, Camera.crop(), weights, ids, 12.75, 10.2, angle_prior, id_precision)
    params = torch.cat([0.4 * torch.randn(batch, 3, generator=generator, dtype=torch.float64),
                        0.05 * torch.randn(batch, 3, generator=generator, dtype=torch.float64),
                        torch.randn(batch, n, generator=generator, dtype=torch.float64)], 1)
    closed = problem.jacobian(params, *problem.data)
    reference = autodiff_jacobian(problem.residuals)(params, *problem.data)
    assert closed.shape == reference.shape == (batch, 2 * k + n + (3 if prior else 0), 6 + n)
    assert torch.allclose(closed, reference, rtol=1e-10, atol=1e-10 * float(reference.abs().max()))
    identity, expression = params[:, 6:6 + n_id], params[:, 6 + n_id:]
    matrix = torch.eye(n_id, dtype=torch.float64) if id_precision is None else id_precision
    prior_rows = problem.residuals(params, *problem.data)[:, 2 * k:2 * k + n]
    torch.testing.assert_close((prior_rows ** 2).sum(1), 12.75 * ((identity @ matrix) * identity).sum(1)
                               + 10.2 * (expression ** 2).sum(1), rtol=1e-10, atol=0)


def test_identity_precision_measures_the_identity_asymmetry():
    """idᵀ(P − I)id / λ_symmetry is the identity's left-right asymmetry, computed here the naive way
    from whole meshes: each vertex's offset against its mirror vertex's (x flipped), halved, summed
    squared, over the most asymmetric direction's; a mirror-symmetric identity costs nothing more."""
    import numpy as np

    from deep3dface.fit.landmark_fit import identity_precision
    from deep3dface.morphable.topology import mirror_vertex_map

    model = load_model("default", dtype=torch.float64)
    extra = (identity_precision(model, 2.0) - torch.eye(model.layout.id, dtype=torch.float64)) / 2.0
    mirror, _ = mirror_vertex_map(model.mean_shape.double().numpy())
    zero_exp = torch.zeros(1, model.layout.exp, dtype=torch.float64)

    def asymmetry(identity):
        offset = (model.shape(identity[None].to(model.mean_shape), zero_exp.to(model.mean_shape))[0].double()
                  - model.mean_shape.double()).numpy()
        return float((((offset - offset[mirror] * np.array([-1.0, 1.0, 1.0])) / 2) ** 2).sum())

    values, vectors = torch.linalg.eigh(extra)
    assert abs(float(values[-1]) - 1.0) < 1e-9 and float(values[0]) >= -1e-12
    scale = asymmetry(vectors[:, -1])  # the most asymmetric unit identity
    generator = torch.Generator().manual_seed(5)
    for identity in torch.randn(3, model.layout.id, generator=generator, dtype=torch.float64):
        assert abs(float(identity @ extra @ identity) - asymmetry(identity) / scale) < 1e-4 * (1 + asymmetry(identity) / scale)
    assert float(vectors[:, 0] @ extra @ vectors[:, 0]) < 1e-3  # the least asymmetric direction: near free
    torch.testing.assert_close(identity_precision(model, 0.0), torch.eye(model.layout.id, dtype=torch.float64))
    with pytest.raises(ValueError, match="lambda_symmetry must be a finite number >= 0"):
        identity_precision(model, -1.0)


def test_identity_precision_of_a_model_without_identity_components():
    """A model with no identity basis (expression only) failed in the asymmetry (a reshape of 0
    columns to -1); its identity prior is the empty matrix and a landmark fit still runs."""
    import dataclasses

    from deep3dface.fit.landmark_fit import fit_landmarks, identity_precision
    from deep3dface.morphable.model import MorphableModel

    model = load_model("default")
    data = dataclasses.replace(model.data, id_basis=np.zeros((model.data.id_basis.shape[0], 0)))
    no_identity = MorphableModel(data)
    assert identity_precision(no_identity, 4.0).shape == (0, 0)
    pixels = torch.tensor([[112.0, 112.0]]) + 40 * torch.randn(1, 68, 2, generator=torch.Generator().manual_seed(0))
    fitted = fit_landmarks(no_identity, pixels, Camera.crop(), iterations=2)
    assert fitted.id.shape == (1, 0) and bool(torch.isfinite(fitted.exp).all())


def test_pose_jacobian_equals_autodiff():
    """solve_pose's closed-form Jacobian equals forward-mode autodiff of its residuals, at random
    poses, points, weights and per-face focal lengths."""
    from deep3dface.fit.rigid import reprojection_jacobian, reprojection_residuals
    from deep3dface.fit.solve import autodiff_jacobian

    generator = torch.Generator().manual_seed(5)
    batch, k = 4, 30
    points = torch.randn(batch, k, 3, generator=generator, dtype=torch.float64)
    pixels = 112 + 40 * torch.randn(batch, k, 2, generator=generator, dtype=torch.float64)
    root = torch.rand(batch, k, generator=generator, dtype=torch.float64)
    params = torch.cat([0.5 * torch.randn(batch, 3, generator=generator, dtype=torch.float64),
                        0.3 * torch.randn(batch, 3, generator=generator, dtype=torch.float64)], 1)
    scales = torch.tensor([1.0, 1.1, 0.9, 1.2], dtype=torch.float64)[:, None, None]
    per_face = torch.cat([Camera.crop().K.double()[:2].expand(batch, 2, 3) * scales,
                          torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(batch, 1, 3)], 1)
    closed = reprojection_jacobian(params[:, :3], params[:, 3:], points, pixels, root, Camera(per_face, 224, 224, 10.0))
    assert closed.shape == (batch, 2 * k, 6)
    for b in range(batch):   # the oracle runs one face at a time: one camera each
        camera = Camera(per_face[b], 224, 224, 10.0)
        reference = autodiff_jacobian(lambda p, x, q, w: reprojection_residuals(p[:, :3], p[:, 3:], x, q, w, camera))(
            params[b:b + 1], points[b:b + 1], pixels[b:b + 1], root[b:b + 1])[0]
        assert torch.allclose(closed[b], reference, rtol=1e-10, atol=1e-10 * float(reference.abs().max()))


SOLVE_AFTER_SET_THREADS = """
import torch
from deep3dface.fit.solve import solve_positive_definite
torch.set_num_threads(2)
generator = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    A = torch.randn(3, 150, 150, generator=generator, dtype=dtype)
    system = A @ A.mT + 150 * torch.eye(150, dtype=dtype)
    rhs = torch.randn(3, 150, 1, generator=generator, dtype=dtype)
    x = solve_positive_definite(system, rhs)
    print(float(((system @ x - rhs).norm() / rhs.norm())))
"""


def test_batched_solve_of_150_unknowns_returns_after_set_num_threads():
    """The BFM's shape fit solves batches of 150 x 150 systems.  With torch's MKL batched LU, two
    threads set by ``torch.set_num_threads`` made those never return on AMD CPUs (what the whole
    suite hit after a render test restored its thread count): the solver must return, and solve."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", SOLVE_AFTER_SET_THREADS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    residuals = [float(line) for line in result.stdout.split()]
    assert len(residuals) == 2 and residuals[0] < 1e-4 and residuals[1] < 1e-10


def test_solve_positive_definite_falls_back_per_face_when_not_positive_definite():
    from deep3dface.fit.solve import solve_positive_definite

    generator = torch.Generator().manual_seed(1)
    A = torch.randn(2, 6, 6, generator=generator, dtype=torch.float64)
    system = torch.stack([A[0] @ A[0].T + torch.eye(6, dtype=torch.float64), A[1] + A[1].T])  # 2nd indefinite
    rhs = torch.randn(2, 6, 2, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(system @ solve_positive_definite(system, rhs), rhs)
