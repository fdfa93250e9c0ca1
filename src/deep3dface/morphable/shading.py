"""Spherical-harmonics lighting of Deep3D: 9 bands per colour channel, Lambertian, no shadows.

gamma (B, 27) is read as [channel, band] = (3, 9); ``DEFAULT_AMBIENT`` (0.8) is added to band 0 of
every channel, so zero lighting coefficients mean a plain white ambient light.  For a unit normal
(x, y, z) the basis is, in band order (constants are the reference's products of SH.a and SH.c):

    Y0 = 0.8862269255         Y1 = −1.7724538509·y   Y2 = +1.7724538509·z   Y3 = −1.7724538509·x
    Y4 = 2.4270323907·x·y     Y5 = −2.4270323907·y·z Y6 = 0.7006239020·(3z² − 1)
    Y7 = −2.4270323907·x·z    Y8 = 1.2135161953·(x² − y²)

(band k of a Lambertian kernel a_l times the real-SH normalisation c_l: a = (π, 2π/√3, 2π/√8),
c = (1/√(4π), √3/√(4π), 3√5/√(12π)); Y6 and Y8 carry the extra 1/(2√3) and 1/2 of their harmonics.)

colour = albedo × Σ_k Y_k·gamma[c, k]; nothing is clamped.
"""
from __future__ import annotations

import math

import torch

DEFAULT_AMBIENT = 0.8
NUM_BANDS = 9

_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))
_C0 = _A[0] * _C[0]
_C1 = _A[1] * _C[1]
_C2 = _A[2] * _C[2]
_C3 = _C2 * 0.5 / math.sqrt(3.0)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) SH basis values in the reference's band order and signs."""
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, _C0),
            -_C1 * y,
            _C1 * z,
            -_C1 * x,
            _C2 * x * y,
            -_C2 * y * z,
            _C3 * (3 * z * z - 1),
            -_C2 * x * z,
            _C2 / 2 * (x * x - y * y),
        ],
        dim=-1,
    )


def lighting_matrix(gamma: torch.Tensor) -> torch.Tensor:
    """(B, 27) lighting coefficients -> (B, 3, 9) per-channel SH weights with the ambient added."""
    light = gamma.reshape(-1, 3, NUM_BANDS)
    ambient = torch.zeros_like(light)
    ambient[..., 0] = DEFAULT_AMBIENT
    return light + ambient


def irradiance(normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) unit normals, (B, 27) -> (B, N, 3) per-channel irradiance (RGB)."""
    return torch.einsum("bnk,bck->bnc", sh_basis(normals), lighting_matrix(gamma))


def shade(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Lit colour = albedo × irradiance, (B, N, 3), not clamped."""
    return albedo * irradiance(normals, gamma)
