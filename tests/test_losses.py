"""The paper's losses: values on known inputs, masks honoured, gradients checked in float64."""
from __future__ import annotations

import pytest
import torch

from deep3dface.fit.losses import (LANDMARK_WEIGHTS, coefficient_regularisation, gamma_loss, landmark_loss,
                                   photometric_loss, reflectance_loss)
from deep3dface.types import CoefficientLayout, Coefficients

g = torch.Generator().manual_seed(0)


def test_photometric_loss_ignores_zero_weight_pixels():
    photo = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    render = photo.clone()
    weight = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    weight[:, :, 2:6, 2:6] = 1
    render[:, :, 0, 0] = 5.0  # an occluder outside the weighted region
    assert photometric_loss(render, photo, weight).item() == pytest.approx(0.0, abs=1e-3)
    render[:, 0, 3, 3] += 0.5  # one weighted pixel off by 0.5 in red
    expected = (0.5 + 15 * 1e-4) / 16  # sqrt(eps) floor on the other 15 pixels
    assert photometric_loss(render, photo, weight).item() == pytest.approx(expected, rel=1e-3)
    # as the reference: divided by max(Σ w, 1), so a faint mask (Σ w = 0.16) is not blown up 6x
    expected = (0.5 * 0.01 + 15 * 1e-4 * 0.01) / 1.0
    assert photometric_loss(render, photo, weight * 0.01).item() == pytest.approx(expected, rel=1e-3)


def test_photometric_loss_gradcheck():
    photo = torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64)
    render = torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r: photometric_loss(r, photo, weight), (render,))


def test_landmark_loss_weights_and_visibility():
    target = torch.zeros(1, 68, 2)
    predicted = target.clone()
    predicted[0, 29, 0] = 1.0  # a nose point: weight 20
    heavy = torch.zeros(68, dtype=torch.bool)
    heavy[28:31] = heavy[60:68] = True  # the nose (0-based 28-30) and the inner mouth (60-67), as Deep3D's
    assert torch.equal(LANDMARK_WEIGHTS, torch.where(heavy, 20.0, 1.0))
    assert landmark_loss(predicted, target).item() == pytest.approx(20 / 68)  # the reference divides by the points
    visibility = torch.ones(1, 68)
    visibility[0, 29] = 0
    assert landmark_loss(predicted, target, visibility=visibility).item() == 0.0
    predicted = torch.randn(2, 68, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: landmark_loss(p, target.double()), (predicted,))


def test_regularisation_handles_a_model_without_albedo_basis():
    coeffs = Coefficients.zeros(CoefficientLayout(id=4, exp=2, tex=0), batch_size=2)
    coeffs = coeffs.replace(id=torch.ones(2, 4), exp=torch.ones(2, 2))
    assert coefficient_regularisation(coeffs).item() == pytest.approx(4 * 1.0 + 2 * 0.8)


def test_gamma_loss_is_zero_for_white_light():
    white = torch.randn(1, 9, generator=g).repeat(1, 3)
    assert gamma_loss(white).item() == pytest.approx(0.0, abs=1e-12)
    tinted = white.clone()
    tinted[0, 0] += 1.0
    assert gamma_loss(tinted).item() > 0


def test_reflectance_loss_only_looks_at_skin():
    albedo = torch.full((1, 10, 3), 0.6, dtype=torch.float64)
    skin = torch.zeros(10, dtype=torch.float64)
    skin[:5] = 1
    albedo[0, 7] = 0.1  # an eye vertex, not skin
    assert reflectance_loss(albedo, skin).item() == pytest.approx(0.0, abs=1e-15)
    albedo[0, 2] = 0.1
    assert reflectance_loss(albedo, skin).item() > 0
    leaf = albedo.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: reflectance_loss(a, skin), (leaf,))
