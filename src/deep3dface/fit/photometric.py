"""The photometric stage: the paper's full loss, minimised through the differentiable renderer.

Loss per face (Deng et al. 2019, reference weights):

    1.92·photometric + 1.6e-3·Σ w_i d_i² / 68 + 3e-4·(‖id‖² + 0.8‖exp‖² + 0.017‖tex‖²) + 10·gamma
        + 5·reflectance

photometric: skin-weighted L2,1 colour error over the rendered face region of the 224 crop
(``losses.photometric_loss``); d_i: crop-pixel distance of landmark i with the landmark stage's
weights (hidden contour points 0); reflectance: the albedo's squared deviation from its mean over
the model's skin mask (``losses.reflectance_loss``).  Adam over id, exp, tex, angle, trans and gamma.  A per-vertex
albedo (models without a basis) is held fixed here and re-estimated by the caller afterwards:
re-painting it every step would let colour absorb what the geometry should explain.
"""
from __future__ import annotations

import torch

from ..camera import Camera
from ..render import interpolate, rasterize
from ..types import GROUPS, Coefficients
from .losses import (REG_WEIGHTS, coefficient_regularisation, gamma_loss, landmark_loss, photometric_loss,
                     reflectance_loss)
from .skin import skin_probability


def refine_photometric(model, targets, stage, camera: Camera, coeffs: Coefficients, albedo, weights68, flags,
                       fixed: tuple[str, ...] = ()):
    """Adam on the paper's loss from ``coeffs``; returns (coefficients, albedo) with the best
    iterate per face (the loss is tracked per face, so one diverging face cannot spoil another).
    ``fixed``: coefficient groups held at their start (an image set's shared "id" and "tex")."""
    dtype = model.mean_shape.dtype
    crops = targets.crops.to(dtype)
    skin = skin_probability(crops)
    landmarks = targets.landmarks.to(dtype)
    w68 = weights68.to(dtype)
    start = coeffs.to(dtype)
    params = {g: getattr(start, g).clone().requires_grad_(True) for g in GROUPS
              if getattr(start, g).shape[1] and g not in fixed}
    optimiser = torch.optim.Adam(params.values(), lr=stage.learning_rate)
    best = {g: getattr(start, g).detach().clone() for g in GROUPS}
    best_loss = None
    triangles = model.front_triangles
    size = tuple(crops.shape[-2:])
    for _ in range(stage.iterations):
        current = start.replace(**params)
        geometry = model(current, albedo=albedo)
        screen = camera.screen(geometry.vertices)
        raster = rasterize(screen, triangles, size)
        rendered = interpolate(geometry.colour, raster, triangles).permute(0, 3, 1, 2)
        mask = raster.mask[:, None].to(dtype)
        per_face = (stage.photometric * _per_face_photometric(rendered, crops, mask * skin)
                    + stage.landmark * _landmark_term(camera.project(geometry.landmarks), landmarks, w68)
                    + stage.regularisation * _per_face_regularisation(current)
                    + stage.gamma * _per_face_gamma(current.gamma)
                    + stage.reflectance * _per_face_reflectance(geometry.albedo, model.skin_mask))
        with torch.no_grad():
            improved = torch.isfinite(per_face) if best_loss is None else torch.isfinite(per_face) & (per_face < best_loss)
            best_loss = per_face.detach().clone() if best_loss is None else torch.where(improved, per_face.detach(), best_loss)
            for g in GROUPS:
                value = getattr(current, g).detach()
                best[g] = torch.where(improved[:, None], value, best[g]) if value.shape[1] else best[g]
        if not bool(torch.isfinite(per_face).all()):
            for b in torch.nonzero(~torch.isfinite(per_face))[:, 0].tolist():
                flags[b].append("photometric stage produced a non-finite loss; best earlier iterate kept")
            per_face = torch.where(torch.isfinite(per_face), per_face, torch.zeros_like(per_face))
        optimiser.zero_grad()
        per_face.sum().backward()
        optimiser.step()
    return Coefficients(**best).to(coeffs.id.dtype), albedo


def _per_face_photometric(rendered, photo, weight):
    return torch.stack([photometric_loss(rendered[b:b + 1], photo[b:b + 1], weight[b:b + 1])
                        for b in range(len(rendered))])


def _landmark_term(predicted, target, weights):
    return torch.stack([landmark_loss(predicted[b:b + 1], target[b:b + 1], weights[b]) for b in range(len(predicted))])


def _per_face_regularisation(coeffs):
    return torch.stack([coefficient_regularisation(coeffs[b], REG_WEIGHTS) for b in range(coeffs.batch_size)])


def _per_face_gamma(gamma):
    return torch.stack([gamma_loss(gamma[b:b + 1]) for b in range(len(gamma))])


def _per_face_reflectance(albedo, skin_mask):
    return torch.stack([reflectance_loss(albedo[b:b + 1], skin_mask) for b in range(len(albedo))])
