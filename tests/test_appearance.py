"""Closed-form lighting and per-vertex albedo recover a synthetic face's appearance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deep3dface.fit.appearance import estimate_albedo, estimate_lighting, sample_photo
from deep3dface.morphable import load_model
from deep3dface.morphable.shading import irradiance
from deep3dface.morphable.topology import graph_laplacian, mirror_vertex_map
from deep3dface.types import Coefficients


@pytest.fixture(scope="module")
def face(conformance):
    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    vectors = np.load(conformance / "bfm_vectors.npz")
    coeffs = model.zero_coefficients(1).replace(
        tex=torch.as_tensor(vectors["coeffs_f64"][6:7, 144:224]),
        gamma=torch.as_tensor(vectors["coeffs_f64"][6:7, 227:254]),
        angle=torch.tensor([[0.0, 0.3, 0.0]], dtype=torch.float64))
    return model, coeffs, model(coeffs)


def test_sample_photo_reads_pixel_centres():
    image = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4).expand(1, 3, 3, 4).contiguous()
    pixels = torch.tensor([[[0.5, 0.5], [3.5, 2.5], [1.0, 0.5]]], dtype=torch.float64)
    np.testing.assert_allclose(sample_photo(image, pixels)[0, :, 0].numpy(), [0.0, 11.0, 0.5])


def test_lighting_is_recovered_from_known_albedo(face):
    model, coeffs, geometry = face
    facing = (geometry.normals[..., 2] > 0.1).double()
    gamma = estimate_lighting(geometry.colour, geometry.albedo, geometry.normals, facing, ridge=1e-8)
    torch.testing.assert_close(gamma, coeffs.gamma, atol=1e-5, rtol=0)


def test_albedo_is_recovered_and_symmetry_fills_the_hidden_side(face):
    model, coeffs, geometry = face
    mirror, distance = mirror_vertex_map(model.mean_shape.numpy())
    assert np.median(distance) < 1e-6  # the synthetic mean face is symmetric
    albedo = (geometry.albedo + geometry.albedo[:, mirror]) / 2  # a symmetric albedo to recover
    light = irradiance(geometry.normals, coeffs.gamma)
    observed = albedo * light
    visible = (model.mean_shape[:, 0] > 0.05).double()[None]  # the left half of the face is hidden
    laplacian = graph_laplacian(model.triangles.numpy(), model.num_vertices)
    prior = model.mean_albedo[None]
    estimate = estimate_albedo(observed, light, visible, laplacian, mirror, prior,
                               smoothness=0.01, symmetry=1.0, prior_weight=1e-4)
    error = (estimate - albedo).abs()[0]
    seen, hidden = visible[0] > 0, model.mean_shape[:, 0] < -0.05
    assert error[seen].mean() < 0.01
    assert error[hidden].mean() < 0.02
    assert error[hidden].mean() < 0.3 * (prior[0] - albedo[0]).abs()[hidden].mean()


def test_albedo_solver_equals_exact_sparse_solves(face):
    """estimate_albedo's batched conjugate gradients (all faces and channels at once) give each
    face and channel the solution of its own normal equations, solved exactly by scipy."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    model, coeffs, geometry = face
    n = model.num_vertices
    generator = torch.Generator().manual_seed(5)
    mirror, _ = mirror_vertex_map(model.mean_shape.numpy())
    laplacian = graph_laplacian(model.triangles.numpy(), n)
    light = irradiance(geometry.normals, coeffs.gamma).expand(2, -1, -1) * torch.tensor([[[1.0]], [[0.7]]],
                                                                                        dtype=torch.float64)
    observed = torch.rand(2, n, 3, generator=generator, dtype=torch.float64)
    weights = (torch.rand(2, n, generator=generator, dtype=torch.float64) > 0.4).double()
    weights[1, :] = 0.0  # a face with no data at all: the prior and the smoothness alone
    weights[1, :5] = 1.0
    prior = model.mean_albedo[None]
    estimate = estimate_albedo(observed, light, weights, laplacian, mirror, prior, 0.5, 0.5, 0.02)
    m = sp.csr_matrix((np.ones(n), (np.arange(n), mirror)), shape=(n, n))
    symmetric = (sp.identity(n) - m).T @ (sp.identity(n) - m)
    for b in range(2):
        for c in range(3):
            data = (weights[b] * light[b, :, c] ** 2).numpy()
            scale = max(data[data > 0].mean(), 1e-6)
            system = sp.diags(data) + scale * (0.5 * laplacian + 0.5 * symmetric + 0.02 * sp.identity(n))
            rhs = (weights[b] * light[b, :, c] * observed[b, :, c]).numpy() + scale * 0.02 * prior[0, :, c].numpy()
            exact = spla.spsolve(system.tocsc(), rhs)
            np.testing.assert_allclose(estimate[b, :, c].numpy(), exact, atol=2e-3 * np.abs(exact).max())


def test_shared_operator_is_kept_per_operator_objects(face):
    """The albedo solves' shared operator is built once per (laplacian, mirror, weights) and equals
    μ·L + σ·(I − M)ᵀ(I − M) + π·I."""
    import scipy.sparse as sp

    from deep3dface.fit.appearance import _shared_operator

    model, _, _ = face
    n = model.num_vertices
    mirror, _ = mirror_vertex_map(model.mean_shape.numpy())
    laplacian = graph_laplacian(model.triangles.numpy(), n)
    first = _shared_operator(laplacian, mirror, 0.5, 0.5, 0.02)
    assert _shared_operator(laplacian, mirror, 0.5, 0.5, 0.02) is first
    assert _shared_operator(laplacian, mirror, 0.5, 0.25, 0.02) is not first
    assert _shared_operator(graph_laplacian(model.triangles.numpy(), n), mirror, 0.5, 0.5, 0.02) is not first
    m = sp.csr_matrix((np.ones(n), (np.arange(n), mirror)), shape=(n, n))
    expected = 0.5 * laplacian + 0.5 * (sp.identity(n) - m).T @ (sp.identity(n) - m) + 0.02 * sp.identity(n)
    assert abs(first.csr - expected).max() < 1e-12


def test_float32_albedo_solver_meets_its_tolerance_in_float64():
    """The float32 conjugate gradients are refined against the float64 residual: on a hard system
    (a 150x150 grid, 20 observed vertices, almost no prior: a float32-only CG drifted to ~1e-3) every
    column ends within the tolerance of its right side, and the answer matches scipy's exact solve."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from deep3dface.fit.appearance import _SharedOperator, _solve_spd

    side = 150
    n = side * side
    grid = np.arange(n).reshape(side, side)
    edges = np.concatenate([np.stack([grid[:, :-1].ravel(), grid[:, 1:].ravel()], 1),
                            np.stack([grid[:-1].ravel(), grid[1:].ravel()], 1)])
    adjacency = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    adjacency = (adjacency + adjacency.T).tocsr()
    laplacian = sp.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency
    mirror = grid[:, ::-1].ravel()
    m = sp.csr_matrix((np.ones(n), (np.arange(n), mirror)), shape=(n, n))
    operator = (0.5 * laplacian + 0.5 * (sp.identity(n) - m).T @ (sp.identity(n) - m) + 1e-8 * sp.identity(n)).tocsr()
    rng = np.random.default_rng(0)
    data = np.zeros((n, 3))
    data[rng.choice(n, 20, replace=False)] = rng.uniform(0.5, 1.5, size=(20, 3))
    scale = np.array([1.0, 1.0, 1.0])
    rhs = data * rng.uniform(0.2, 0.8, size=(n, 3)) + 1e-8 * 0.5
    x = _solve_spd(_SharedOperator(operator), data, scale, rhs, np.full((n, 3), 0.5))
    for j in range(3):
        system = sp.diags(data[:, j]) + scale[j] * operator
        assert np.linalg.norm(rhs[:, j] - system @ x[:, j]) <= 1e-4 * np.linalg.norm(rhs[:, j])
        exact = spla.spsolve(system.tocsc(), rhs[:, j])
        np.testing.assert_allclose(x[:, j], exact, atol=2e-3 * np.abs(exact).max())


@pytest.fixture(scope="module")
def basis_photos(conformance):
    """The tiny conformance BFM (it has an albedo basis, as the paper's model) rendered under two
    plausible lights and poses: crops, the true coefficients, and the renders' masks."""
    from deep3dface.camera import Camera
    from deep3dface.render.shaded import render_colours

    model = load_model(conformance / "tiny_bfm")
    vector = torch.as_tensor(np.load(conformance / "bfm_vectors.npz")["coeffs_f64"][6:7]).float()
    truth = Coefficients.from_vector(vector.expand(2, -1), model.layout)
    gamma = torch.zeros(2, 27)
    gamma[0, [0, 9, 18]], gamma[0, [3, 12, 21]] = 0.1, 0.2    # brighter, lit from the side
    gamma[1, [0, 9, 18]], gamma[1, [1, 10, 19]] = -0.1, 0.25  # dimmer, lit from above
    truth = truth.replace(gamma=gamma, angle=torch.tensor([[0.05, 0.3, 0.0], [0.0, -0.4, 0.05]]), trans=torch.zeros(2, 3))
    geometry = model(truth)
    images, masks = render_colours(geometry.vertices, geometry.colour, model.triangles, Camera.crop())
    return model, truth, images * masks + 0.3 * (1 - masks), images, masks


def _render_error(model, coeffs, images, masks) -> torch.Tensor:
    """(B,) mean absolute colour error where both the truth and the estimate cover the pixel."""
    from deep3dface.camera import Camera
    from deep3dface.render.shaded import render_colours

    geometry = model(coeffs)
    render, covered = render_colours(geometry.vertices, geometry.colour, model.triangles, Camera.crop())
    both = masks * covered
    return ((render - images).abs() * both).sum((1, 2, 3)) / (3 * both.sum((1, 2, 3)))


def test_a_model_with_an_albedo_basis_gets_tex_coefficients(basis_photos):
    """The paper's model path (no per-vertex albedo): the appearance stage solves the basis
    coefficients, and the photo is explained far better than by the mean albedo under its light."""
    from deep3dface.fit.fitter import FitConfig, FitTargets, fit_faces

    model, truth, photos, images, masks = basis_photos
    start = truth.replace(tex=torch.zeros_like(truth.tex), gamma=torch.zeros_like(truth.gamma))
    result = fit_faces(model, FitTargets(photos, torch.zeros(2, 68, 2)), FitConfig(landmarks=None), start)
    fitted = result.coefficients
    assert result.albedo is None and result.flags == ((), ())  # the albedo is model.albedo(tex)
    error = _render_error(model, fitted, images, masks)
    mean_albedo = _render_error(model, fitted.replace(tex=torch.zeros_like(fitted.tex)), images, masks)
    assert (error < 0.6 * mean_albedo).all() and (error < 0.02).all()
    assert (torch.nn.functional.cosine_similarity(fitted.tex, truth.tex) > 0.3).all()


def test_one_person_s_photos_share_basis_tex_under_their_own_lights(basis_photos):
    """fit_shared_appearance with an albedo basis: one tex for both photos, each its own light,
    started (as reconstruct_set starts it) from the single-photo fits' lights."""
    from deep3dface.fit.fitter import AppearanceStage, FitConfig, FitTargets, fit_faces
    from deep3dface.fit.shared_albedo import fit_shared_appearance

    model, truth, photos, images, masks = basis_photos
    start = truth.replace(tex=torch.zeros_like(truth.tex), gamma=torch.zeros_like(truth.gamma))
    single = fit_faces(model, FitTargets(photos, torch.zeros(2, 68, 2)), FitConfig(landmarks=None), start).coefficients
    shared = fit_shared_appearance(model, photos, single, torch.ones(2), AppearanceStage(rounds=3))
    assert shared.tex.shape == (model.layout.tex,) and shared.gamma.shape == (2, 27)
    torch.testing.assert_close(shared.albedo, model.albedo(shared.tex[None])[0])
    coeffs = single.replace(tex=shared.tex.expand(2, -1).to(single.tex), gamma=shared.gamma.to(single.gamma))
    error = _render_error(model, coeffs, images, masks)
    mean_albedo = _render_error(model, coeffs.replace(tex=torch.zeros_like(coeffs.tex)), images, masks)
    assert (error < 0.6 * mean_albedo).all() and (error < 0.02).all()
    # two photos under two lights pin the albedo better than either alone
    alone = torch.nn.functional.cosine_similarity(single.tex, truth.tex)
    assert float(torch.nn.functional.cosine_similarity(shared.tex[None], truth.tex[:1])) > float(alone.max())


def test_a_broken_photo_is_flagged_alone_and_its_fit_stays_finite(basis_photos):
    """NaN pixels in one crop of a batch: that face's light falls back and is flagged; the other
    face's fit is untouched and unflagged (every face of the batch was flagged before)."""
    from deep3dface.camera import Camera
    from deep3dface.fit.fitter import FitConfig, FitTargets, fit_faces

    model, truth, photos, _, _ = basis_photos
    start = truth.replace(tex=torch.zeros_like(truth.tex), gamma=torch.zeros_like(truth.gamma))
    broken = photos.clone()
    broken[1, :, 100:120, 100:120] = float("nan")
    landmarks = Camera.crop().project(model(truth).landmarks)
    clean = fit_faces(model, FitTargets(photos, landmarks), FitConfig(landmarks=None), start)
    result = fit_faces(model, FitTargets(broken, landmarks), FitConfig(landmarks=None), start)
    assert result.flags == ((), ("lighting estimate diverged",))
    assert torch.isfinite(result.coefficients.to_vector()).all()
    torch.testing.assert_close(result.coefficients[0].to_vector(), clean.coefficients[0].to_vector())
    torch.testing.assert_close(result.coefficients[1].to_vector(), start[1].to_vector())  # the start kept
    # a per-vertex albedo (the default model): the clean face is unflagged, the broken face's albedo finite
    default = load_model("default")
    coeffs = default.zero_coefficients(2)
    geometry = default(coeffs)
    from deep3dface.render.shaded import render_colours

    images, masks = render_colours(geometry.vertices, geometry.colour, default.front_triangles, Camera.crop())
    crops = images * masks + 0.3 * (1 - masks)
    clean = fit_faces(default, FitTargets(crops, Camera.crop().project(geometry.landmarks)), FitConfig(landmarks=None),
                      coeffs)
    clean_crop = crops[1].clone()
    crops[1] = float("nan")
    result = fit_faces(default, FitTargets(crops, Camera.crop().project(geometry.landmarks)), FitConfig(landmarks=None),
                       coeffs)
    assert result.flags == ((), ("lighting estimate diverged",))
    assert torch.isfinite(result.albedo).all()
    torch.testing.assert_close(result.albedo[0], clean.albedo[0])
    # an albedo solve that comes back non-finite for one face: that face gets the mean albedo and the flag
    import deep3dface.fit.fitter as fitter

    solve = fitter.estimate_albedo

    def half_broken(*args, **kwargs):
        albedo = solve(*args, **kwargs).clone()
        albedo[1, :10] = float("nan")
        return albedo

    crops[1] = clean_crop
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fitter, "estimate_albedo", half_broken)
        result = fit_faces(default, FitTargets(crops, Camera.crop().project(geometry.landmarks)),
                           FitConfig(landmarks=None), coeffs)
    assert result.flags[0] == () and "albedo estimate not finite; mean albedo used" in result.flags[1]
    torch.testing.assert_close(result.albedo[1, :10], default.mean_albedo[:10])
    torch.testing.assert_close(result.albedo[0], clean.albedo[0])


def test_fit_faces_runs_the_photometric_stage_then_the_appearance_again(basis_photos):
    """With PhotometricStage.iterations > 0, fit_faces refines through the renderer and then
    re-estimates light and albedo on the moved geometry: its answer's appearance is exactly what the
    appearance stage alone gives on that geometry."""
    from deep3dface.camera import Camera
    from deep3dface.fit.fitter import FitConfig, FitTargets, PhotometricStage, fit_faces

    import deep3dface.fit.fitter as fitter

    model, truth, photos, images, masks = basis_photos
    start = truth.replace(tex=torch.zeros_like(truth.tex), gamma=torch.zeros_like(truth.gamma))
    targets = FitTargets(photos, Camera.crop().project(model(truth).landmarks))
    seen, appearance_stage = [], fitter._appearance_stage

    def spy(model, targets, stage, camera, coeffs, flags):
        seen.append(coeffs)
        return appearance_stage(model, targets, stage, camera, coeffs, flags)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fitter, "_appearance_stage", spy)
        refined = fit_faces(model, targets, FitConfig(landmarks=None, photometric=PhotometricStage(iterations=5)), start)
    assert refined.flags == ((), ()) and len(seen) == 2
    before, after = seen
    assert not torch.equal(after.angle, before.angle)  # the photometric stage moved the pose ...
    for name in ("id", "exp", "angle", "trans"):        # ... and the second appearance fit kept its geometry
        assert torch.equal(getattr(refined.coefficients, name), getattr(after, name))
    assert not torch.equal(refined.coefficients.gamma, after.gamma)  # with a new light
    assert (_render_error(model, refined.coefficients, images, masks) < 0.02).all()


def test_the_photometric_stage_has_the_paper_s_reflectance_term(basis_photos):
    """The reference's fifth loss (weight 5): with the other terms off, the stage flattens a basis
    albedo over the model's skin mask; at weight 0 it leaves tex where it was."""
    from deep3dface.camera import Camera
    from deep3dface.fit.fitter import FitTargets, PhotometricStage
    from deep3dface.fit.losses import reflectance_loss
    from deep3dface.fit.photometric import refine_photometric

    model, truth, photos, _, _ = basis_photos
    targets = FitTargets(photos, torch.zeros(2, 68, 2))
    only = dict(photometric=0.0, landmark=0.0, regularisation=0.0, gamma=0.0, iterations=8, learning_rate=0.05)
    flat, _ = refine_photometric(model, targets, PhotometricStage(**only), Camera.crop(), truth, None,
                                 torch.zeros(2, 68), [[], []])
    before, after = (float(reflectance_loss(model.albedo(c.tex), model.skin_mask)) for c in (truth, flat))
    assert after < 0.8 * before
    held, _ = refine_photometric(model, targets, PhotometricStage(**only, reflectance=0.0), Camera.crop(), truth,
                                 None, torch.zeros(2, 68), [[], []])
    torch.testing.assert_close(held.tex, truth.tex)
    assert PhotometricStage().reflectance == 5.0
