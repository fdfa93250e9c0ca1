"""A photo handed to the library: a checked (3, H, W) float tensor, or anything ``read_image`` reads.

Conventions (DESIGN.md §2): float RGB (3, H, W) in [0, 1] on the CPU, where the landmarks, the
alignment and the fit run (networks take their own copy to their device).
"""
from __future__ import annotations

import torch

from deep3dface.io.images import read_image


def checked_photo(photo: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) float RGB tensor in [0, 1], as given; a clear error for anything else (a 0-255
    float image otherwise failed deep inside the detector, and NaN pixels silently hid faces).
    Detached: nothing here is differentiable through the photo, and a photo that required grad
    failed deep in the landmarker (``Tensor.numpy()``).  On the CPU: the landmarks, the alignment
    and the fit run there (the networks get their own copy on their device); a CUDA photo failed
    in the landmarker's crop."""
    photo = photo.detach()
    if photo.is_meta:
        raise ValueError("the photo is a 'meta' tensor: it has a shape but no pixels")
    if photo.ndim != 3 or photo.shape[0] != 3 or not photo.is_floating_point():
        raise ValueError(f"expected a float (3, H, W) RGB photo in [0, 1], got {photo.dtype} {tuple(photo.shape)}"
                         + _photo_recipe(photo))
    if photo.numel() == 0:
        raise ValueError(f"the photo is empty: {tuple(photo.shape)}")
    if not bool(torch.isfinite(photo).all()):
        raise ValueError("the photo has NaN or infinite values")
    low, high = float(photo.min()), float(photo.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"expected photo values in [0, 1], got {low:g} to {high:g}"
                         + (" (divide 0-255 values by 255)" if high <= 255.5 else ""))
    return photo.cpu()


def _photo_recipe(photo: torch.Tensor) -> str:
    """How to turn a common wrong photo tensor into a (3, H, W) float one in [0, 1]."""
    shape, steps = tuple(photo.shape), []
    if len(shape) == 4 and shape[0] == 1:
        steps.append("photo[0] (one photo, not a batch)")
        shape = shape[1:]
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] not in (1, 3):
        steps.append("photo[..., :3].permute(2, 0, 1) (channels first)")
    elif len(shape) == 2 or (len(shape) == 3 and shape[0] == 1):
        steps.append("photo.expand(3, -1, -1) (grey to RGB)")
    if not photo.is_floating_point():
        steps.append("photo.float() / 255")
    return f"; try {', then '.join(steps)}" if steps else ""


def photo_tensor(source) -> torch.Tensor:
    """A photo as a (3, H, W) float tensor in [0, 1]: a tensor checked (``checked_photo``), anything
    else read (``io.read_image``: a path, bytes, a PIL image)."""
    return checked_photo(source) if isinstance(source, torch.Tensor) else read_image(source)
