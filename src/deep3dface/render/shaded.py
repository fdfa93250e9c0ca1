"""Shaded renders of a posed face and their overlay on a photo (no gradients needed here).

``render_colours`` draws per-vertex colours through any ``Camera`` at that camera's image size;
``overlay`` blends such a render onto the photo.  Images follow DESIGN.md §2: (3, H, W) float RGB.
"""
from __future__ import annotations

import torch

from ..camera import Camera
from .interpolate import interpolate
from .raster import rasterize


def render_colours(vertices: torch.Tensor, colours: torch.Tensor, triangles: torch.Tensor,
                   camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3) posed model-space vertices and (B, N, 3) colours -> images (B, 3, H, W) and
    masks (B, 1, H, W) at the camera's size; empty pixels are 0."""
    with torch.no_grad():
        screen = camera.screen(vertices)
        raster = rasterize(screen, triangles, (camera.height, camera.width))
        image = interpolate(colours.to(screen.dtype), raster, triangles)  # (B, H, W, 3)
        mask = raster.mask[..., None].to(image.dtype)
    return (image * mask).permute(0, 3, 1, 2).clamp(0, 1), mask.permute(0, 3, 1, 2)


def overlay(photo: torch.Tensor, renders: torch.Tensor, masks: torch.Tensor, opacity: float = 1.0) -> torch.Tensor:
    """Composite renders (B, 3, H, W) over one photo (3, H, W); later faces are drawn over earlier ones."""
    out = photo.clone()
    for render, mask in zip(renders, masks):
        alpha = mask * opacity
        out = out * (1 - alpha) + render.to(out) * alpha
    return out
