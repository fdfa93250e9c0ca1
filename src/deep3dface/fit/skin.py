"""Skin attention for the photometric loss: which pixels of the photo are skin.

The paper weights its photometric loss with a skin-probability map from a colour model in YCbCr,
so hair, glasses, hands and background do not pull the fit.  A fixed colour mixture is tuned to
the photos it was trained on; we instead fit a Gaussian in (Cb, Cr) chroma *to this photo's own
skin*, sampled in a region that is skin on every face (the cheeks and nose bridge below the eyes,
found from landmarks), shrunk towards a generic skin prior so that a few bad samples (a beard, a
hand on the cheek) cannot move it far.  Chroma ignores brightness, so shading does not matter;
very dark and saturated-white pixels carry no chroma and get a reduced weight.
"""
from __future__ import annotations

import torch

#: Generic skin chroma prior (Cb, Cr in 0–255 units): centre of the classic skin cluster
#: (Chai & Ngan 1999: Cb 77–127, Cr 133–173) and a spread covering it.
PRIOR_MEAN = (103.0, 152.0)
PRIOR_STD = (14.0, 11.0)
PRIOR_SAMPLES = 50.0  # the prior counts as this many pixel samples when blended with the photo's own


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) Y, Cb, Cr in 0–255 units (ITU-R BT.601, JPEG)."""
    r, g, b = (image * 255).unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr], 1)


def skin_probability(image: torch.Tensor, sample_mask: torch.Tensor | None = None, threshold: float = 3.0) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) skin weight in [0, 1].

    ``sample_mask`` (B, 1, H, W) bool marks pixels known to be skin (e.g. cheeks from landmarks);
    without it only the generic prior is used.  The weight is 1 inside the Mahalanobis distance
    ``threshold`` of the chroma model and falls off smoothly outside."""
    ycbcr = rgb_to_ycbcr(image)
    chroma = ycbcr[:, 1:].flatten(2).transpose(1, 2)  # (B, HW, 2)
    prior_mean = image.new_tensor(PRIOR_MEAN)
    prior_cov = torch.diag(image.new_tensor(PRIOR_STD) ** 2)
    means, covs = [], []
    for b in range(image.shape[0]):
        samples = chroma[b][sample_mask[b].flatten()] if sample_mask is not None else chroma[b][:0]
        n = samples.shape[0]
        if n >= 10:
            # trimmed statistics: drop the 20 % of samples farthest from the median (beard, shadow)
            median = samples.median(0).values
            keep = (samples - median).norm(dim=1).argsort()[: max(10, int(0.8 * n))]
            samples = samples[keep]
            n = samples.shape[0]
            mean = (samples.mean(0) * n + prior_mean * PRIOR_SAMPLES) / (n + PRIOR_SAMPLES)
            centred = samples - mean
            cov = (centred.T @ centred + prior_cov * PRIOR_SAMPLES) / (n + PRIOR_SAMPLES)
        else:
            mean, cov = prior_mean, prior_cov
        means.append(mean)
        covs.append(cov + torch.eye(2, dtype=image.dtype, device=image.device) * 4.0)  # ≥ 2 levels of JPEG noise
    mean, cov = torch.stack(means), torch.stack(covs)
    centred = chroma - mean[:, None]
    distance2 = (centred @ torch.linalg.inv(cov) * centred).sum(-1)
    weight = torch.exp(-0.5 * torch.clamp(distance2.sqrt() - threshold, min=0) ** 2)
    # pixels too dark or too bright to carry chroma: half weight
    luma = ycbcr[:, 0].flatten(1)
    weight = torch.where((luma < 25) | (luma > 245), weight * 0.5, weight)
    return weight.view(image.shape[0], 1, *image.shape[2:])
