"""Rotated square crops of a photo: the geometry (pure functions) and the resampling.

Conventions (the project's, DESIGN.md §2): x right, y down, origin at the top-left *corner* of the
top-left pixel, so pixel (row i, column j) has its centre at (j + 0.5, i + 0.5); this holds in the
photo and in the crop alike.  Images are float32 RGB (3, H, W) in [0, 1].

A ``SquareRoi`` is a square of side ``size`` photo pixels centred at ``center`` whose x axis makes
the angle ``angle`` (radians, clockwise on screen because y points down) with the photo's x axis.
The crop of side ``n`` maps crop point u to photo point  c + (size / n) · R(angle) · (u − n / 2):
a crop of a roll-rotated face shows the face upright when ``angle`` is the face's roll.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SquareRoi:
    """A rotated square in photo pixels (corner convention)."""

    cx: float
    cy: float
    size: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        if not (self.size > 0 and math.isfinite(self.size)):
            raise ValueError(f"a crop needs a positive finite size, got {self.size}")


def roi_from_box(box, scale: float = 1.0, shift_y: float = 0.0, angle: float = 0.0) -> SquareRoi:
    """Square around an axis-aligned box x0, y0, x1, y1: side = scale · max(w, h) (MediaPipe's
    SQUARE_LONG), rotated by ``angle``, centre moved by ``shift_y`` · side along the square's own
    y axis (down the face: a detector's box may sit high or low on it)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"a box needs x1 > x0 and y1 > y0, got {[x0, y0, x1, y1]}")
    side = scale * max(x1 - x0, y1 - y0)
    shift = shift_y * side
    return SquareRoi(0.5 * (x0 + x1) - shift * math.sin(angle), 0.5 * (y0 + y1) + shift * math.cos(angle), side, angle)


def roi_from_points(points: torch.Tensor, scale: float, angle: float = 0.0, shift_y: float = 0.0) -> SquareRoi:
    """Square around points (K, 2) measured in the frame rotated by ``angle`` (so a rolled face gets
    a tight box, unlike MediaPipe's axis-aligned one), enlarged by ``scale``; ``shift_y`` moves the
    centre along the rotated frame's y axis by that fraction of the side."""
    p = points.double()
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    local = p @ rot  # rows are R(angle)^T p: coordinates in the rotated frame
    lo, hi = local.min(0).values, local.max(0).values
    side = scale * float((hi - lo).max())
    mid = 0.5 * (lo + hi) + torch.tensor([0.0, shift_y * side], dtype=torch.float64)
    centre = rot @ mid
    return SquareRoi(float(centre[0]), float(centre[1]), side, angle)


def crop_to_photo(roi: SquareRoi, n: int) -> torch.Tensor:
    """3x3 float64 matrix mapping crop pixels (side n) to photo pixels, both corner convention."""
    k = roi.size / n
    c, s = math.cos(roi.angle), math.sin(roi.angle)
    a = torch.tensor([[k * c, -k * s], [k * s, k * c]], dtype=torch.float64)
    t = torch.tensor([roi.cx, roi.cy], dtype=torch.float64) - a @ torch.tensor([n / 2, n / 2], dtype=torch.float64)
    m = torch.eye(3, dtype=torch.float64)
    m[:2, :2], m[:2, 2] = a, t
    return m


def apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 affine matrix to (K, 2) points (float64 inside, input dtype out)."""
    p = points.double()
    return (p @ matrix[:2, :2].T + matrix[:2, 2]).to(points.dtype)


def _prefilter(image: torch.Tensor, roi: SquareRoi, n: int) -> tuple[torch.Tensor, float, float, float, float]:
    """The photo region under the ROI, shrunk (antialiased) so its pixels are about as large as the
    crop's: bilinear sampling of a much larger image would alias.  Returns the patch and the photo
    rectangle (x0, y0, sx, sy) it covers: patch pixel corner (u, v) is photo (x0 + sx u, y0 + sy v)."""
    _, h, w = image.shape
    half = roi.size * (abs(math.cos(roi.angle)) + abs(math.sin(roi.angle))) / 2 + 2
    x0, x1 = max(0, math.floor(roi.cx - half)), min(w, math.ceil(roi.cx + half))
    y0, y1 = max(0, math.floor(roi.cy - half)), min(h, math.ceil(roi.cy + half))
    if x1 <= x0 or y1 <= y0:  # the ROI lies entirely outside the photo
        return image.new_zeros(3, 1, 1), 0.0, 0.0, 1.0, 1.0
    patch = image[:, y0:y1, x0:x1]
    factor = roi.size / n  # photo pixels per crop pixel
    if factor > 1:
        ph, pw = max(1, round((y1 - y0) / factor)), max(1, round((x1 - x0) / factor))
        patch = F.interpolate(patch[None], size=(ph, pw), mode="bilinear", align_corners=False, antialias=True)[0]
    return patch, float(x0), float(y0), (x1 - x0) / patch.shape[-1], (y1 - y0) / patch.shape[-2]


def crop(image: torch.Tensor, roi: SquareRoi, n: int) -> torch.Tensor:
    """(3, H, W) float photo -> (3, n, n) crop of the ROI; outside the photo is black (as MediaPipe's
    zero border and the project's aligner)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    patch, x0, y0, sx, sy = _prefilter(image.float(), roi, n)
    centres = torch.arange(n, dtype=torch.float64) + 0.5
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    photo = apply(crop_to_photo(roi, n), grid)
    # grid_sample with align_corners=False puts -1 and +1 at the patch's outer pixel corners.
    px = (photo[:, 0] - x0) / sx / patch.shape[-1] * 2 - 1
    py = (photo[:, 1] - y0) / sy / patch.shape[-2] * 2 - 1
    g = torch.stack([px, py], -1).reshape(1, n, n, 2).float()
    return F.grid_sample(patch[None], g, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
