"""One albedo for all photos of a person, one light per photo (closed form, geometry fixed).

The photos of an image set show one skin under several lights.  With each photo's geometry fixed
(the shared identity, its own pose and expression), the image formation ``colour = albedo ×
irradiance_p(normals)`` gives, for the shared per-vertex albedo ``a``, per channel,

    Σ_p c_p Σ_v w_pv (a_v e_pv − o_pv)²  +  μ·aᵀ L a + σ·‖a − a[mirror]‖² + π·‖a − prior‖²

(``e`` irradiance, ``o`` observed colour, ``w`` visibility × skin weight as in the single-photo
appearance stage, ``c_p`` the photo's confidence from the joint landmark fit): the single-photo
problem of ``appearance.estimate_albedo`` with the data terms of all photos added, so one call
solves it through the fused data ``Σ_p c_p w_pv e_pv²`` and ``Σ_p c_p w_pv e_pv o_pv``.  A vertex
one photo sees obliquely or not at all takes its colour from the photos that see it (and, where
none does, from the mirror side and the prior).  For a model with an albedo basis the shared
``tex`` coefficients solve the same sum in the basis.  Lighting and albedo alternate: each photo's
SH light (``appearance.estimate_lighting``) given the shared albedo, then the shared albedo given
the lights, ending with the lights so each photo's light matches the albedo it is drawn with.
Exposure differences between photos go into the lights (band 0 of each channel).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera import Camera
from ..morphable.model import MorphableModel
from ..morphable.shading import irradiance
from ..types import Coefficients
from .appearance import albedo_normal_equations, estimate_albedo, estimate_lighting, sample_photo, solve_with_prior
# the single-photo appearance stage's vertex weights and model operators: one definition of each
from .fitter import AppearanceStage
from .vertex_evidence import albedo_operators, albedo_weights, skin_weights, vertex_weights


@dataclass(frozen=True, eq=False)
class SharedAppearance:
    gamma: torch.Tensor             # (P, 27) each photo's SH light under the shared albedo
    tex: torch.Tensor               # (K_tex,) shared albedo coefficients (zeros without a basis)
    albedo: torch.Tensor            # (N, 3) the shared albedo in [0, 1]
    weights: torch.Tensor           # (P, N) data weight of each vertex in each photo (photo confidence included)


def fit_shared_appearance(model: MorphableModel, crops: torch.Tensor, coeffs: Coefficients,
                          photo_weights: torch.Tensor | None = None, stage: AppearanceStage = AppearanceStage(),
                          ) -> SharedAppearance:
    """(P, 3, 224, 224) crops of one person's photos, their fitted coefficients (P rows, crop
    camera: the geometry; their ``gamma`` and ``tex`` are not used) and (P,) photo confidences ->
    the shared albedo and per-photo lights: from the mean albedo, ``stage.rounds`` alternations of
    the lights and the albedo, as the single-photo stage, and the lights once more for the result."""
    dtype = model.mean_shape.dtype
    count = crops.shape[0]
    confidence = torch.ones(count, dtype=dtype) if photo_weights is None else torch.as_tensor(photo_weights).to(dtype)
    camera = Camera.crop()
    with torch.no_grad():
        geometry = model(coeffs.to(dtype))
        screen = camera.screen(geometry.vertices)
        visibility = vertex_weights(model, geometry, screen, crops.shape[-2:], stage.grazing_cosine)
        skin = skin_weights(crops, screen, visibility)
        weights = visibility * skin * confidence[:, None]                                 # the lights
        albedo_data = albedo_weights(model, visibility, skin) * confidence[:, None]       # the albedo
        observed = sample_photo(crops.to(dtype), screen[..., :2])
        normals = geometry.normals
        tex = torch.zeros(coeffs.tex.shape[1], dtype=dtype)
        albedo = model.albedo(tex[None])[0]  # the mean albedo: each round lights it, then solves it anew
        for _ in range(max(stage.rounds, 1)):
            gamma = estimate_lighting(observed, albedo.expand(count, -1, -1), normals, weights)
            light = irradiance(normals, gamma)
            if model.has_albedo_basis:
                tex = shared_basis_fit(model, observed, light, albedo_data)
                albedo = model.albedo(tex[None])[0]
            else:
                albedo = shared_vertex_albedo(model, observed, light, albedo_data, stage)
        gamma = estimate_lighting(observed, albedo.expand(count, -1, -1), normals, weights)  # for the final albedo
    return SharedAppearance(gamma, tex, albedo, weights)


def shared_vertex_albedo(model: MorphableModel, observed: torch.Tensor, light: torch.Tensor, weights: torch.Tensor,
                         stage: AppearanceStage = AppearanceStage()) -> torch.Tensor:
    """(P, N, 3) observed colours and irradiances, (P, N) weights -> (N, 3) per-vertex albedo in
    [0, 1] minimising the summed cost of the module notes (``estimate_albedo`` on fused data)."""
    data = (weights[..., None] * light ** 2).sum(0)                 # (N, 3) Σ w e²
    product = (weights[..., None] * light * observed).sum(0)        # (N, 3) Σ w e o
    total = weights.sum(0)                                          # (N,)
    seen = total > 0
    # one pseudo-photo with weight W = Σ w, irradiance sqrt(Σ w e² / W) and colour Σ w e o / (W e)
    fused_light = torch.where(seen[:, None], (data / total.clamp_min(1e-12)[:, None]).sqrt(), 0.0)
    fused_colour = torch.where(fused_light > 0, product / (total[:, None] * fused_light).clamp_min(1e-12), 0.0)
    extras = albedo_operators(model.data)
    albedo = estimate_albedo(fused_colour[None], fused_light[None], total[None], extras.laplacian, extras.mirror,
                             model.mean_albedo[None], stage.smoothness, stage.symmetry, stage.prior_weight)
    return albedo[0].clamp(0.0, 1.0)


def shared_basis_fit(model: MorphableModel, observed: torch.Tensor, light: torch.Tensor, weights: torch.Tensor,
                     ridge: float = 1.0) -> torch.Tensor:
    """(K_tex,) albedo coefficients explaining all photos at once: the summed normal equations of
    the single-photo basis fit, with its prior relative to the data."""
    lhs, rhs = albedo_normal_equations(model.albedo_basis, model.mean_albedo, observed, light, weights)
    return solve_with_prior(lhs.sum(0), rhs.sum(0), ridge)


__all__ = ["SharedAppearance", "fit_shared_appearance", "shared_basis_fit", "shared_vertex_albedo"]
