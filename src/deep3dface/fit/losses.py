"""The losses of Deng et al. (2019), as pure functions of tensors (no options objects).

Weights live with the fitter's stages; these functions return unweighted per-batch means.
Images are (B, 3, H, W) in [0, 1]; landmarks are pixels (corner origin, y down).
"""
from __future__ import annotations

import torch

#: Deep3D's landmark weights: 20 on the nose (0-based 28–30) and the inner mouth (60–67), else 1.
LANDMARK_WEIGHTS = torch.ones(68)
LANDMARK_WEIGHTS[28:31] = 20.0
LANDMARK_WEIGHTS[60:68] = 20.0

#: The paper's regularisation weights on identity, expression and albedo coefficients.
REG_WEIGHTS = {"id": 1.0, "exp": 0.8, "tex": 0.017}


def photometric_loss(rendered: torch.Tensor, photo: torch.Tensor, weight: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Skin-weighted L2,1 colour error: Σ w·‖render − photo‖₂ / Σ w, averaged over the batch.

    rendered, photo (B, 3, H, W); weight (B, 1, H, W) ≥ 0 (render mask × skin attention).  The square
    root per pixel (not a squared error) is the paper's choice: robust to occluders and outliers."""
    distance = torch.sqrt(((rendered - photo) ** 2).sum(dim=1, keepdim=True) + eps)
    per_face = (distance * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    return per_face.mean()


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                  visibility: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's landmark loss: Σ_k w_k·d_k² / K in pixels², (B, K, 2) each, averaged over
    the batch (divided by the number of points, not by the weights' sum, as Deep3D does).

    ``weights`` (K,) default to Deep3D's for K = 68; ``visibility`` (B, K) in [0, 1] drops points the
    landmarker could not see (a missing point contributes nothing)."""
    squared = ((predicted - target) ** 2).sum(-1)
    if weights is None:
        weights = LANDMARK_WEIGHTS if predicted.shape[1] == 68 else torch.ones(predicted.shape[1])
    w = weights.to(squared)[None].expand_as(squared)
    if visibility is not None:
        w = w * visibility.to(squared)
    return ((squared * w).sum(1) / squared.shape[1]).mean()


def coefficient_regularisation(coeffs, weights: dict[str, float] = REG_WEIGHTS) -> torch.Tensor:
    """Σ_g w_g·‖coeffs.g‖² averaged over the batch (coefficients are a priori N(0, 1))."""
    total = 0.0
    for group, w in weights.items():
        values = getattr(coeffs, group)
        if values.shape[1]:
            total = total + w * (values ** 2).sum(1)
    if isinstance(total, float):
        return coeffs.id.new_zeros(())
    return total.mean()


def gamma_loss(gamma: torch.Tensor) -> torch.Tensor:
    """Pushes the SH lighting towards monochrome: variance of the 9 bands across the 3 channels."""
    light = gamma.reshape(-1, 3, 9)
    return ((light - light.mean(dim=1, keepdim=True)) ** 2).mean()


def reflectance_loss(albedo: torch.Tensor, skin_mask: torch.Tensor) -> torch.Tensor:
    """Flattens albedo over the skin: squared deviation from the skin's mean albedo.

    albedo (B, N, 3); skin_mask (N,) in [0, 1]."""
    mask = skin_mask.to(albedo)[None, :, None]
    total = mask.sum().clamp_min(1.0)
    mean = (albedo * mask).sum(1, keepdim=True) / total
    return (((albedo - mean) * mask) ** 2).sum((1, 2)).mean() / total
