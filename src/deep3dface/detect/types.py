"""What a face detector returns: one frozen ``Detection`` per face.

Pixel convention (the project's, see DESIGN.md §2): x right, y down, origin at the top-left corner
of the top-left pixel, so that pixel (i, j) has its centre at (j + 0.5, i + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Order of ``Detection.landmarks5``; "left" means image left (the subject's right).
LANDMARKS5 = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in one image.

    box:        (4,) float32 ``x0, y0, x1, y1`` (corner convention, x1 > x0, y1 > y0)
    score:      face probability in [0, 1]
    landmarks5: (5, 2) float32 ``x, y`` in the order of ``LANDMARKS5``
    detector:   which detector found it: "mtcnn", or "blazeface" (``detect.finder``'s second
                detector; its 5 points then come from the landmarker's 68)
    """

    box: torch.Tensor
    score: float
    landmarks5: torch.Tensor
    detector: str = "mtcnn"

    def __post_init__(self) -> None:
        if tuple(self.box.shape) != (4,) or tuple(self.landmarks5.shape) != (5, 2):
            raise ValueError(f"Detection needs box (4,) and landmarks5 (5, 2), got "
                             f"{tuple(self.box.shape)} and {tuple(self.landmarks5.shape)}")

    @property
    def eye_distance(self) -> float:
        """Distance between the two eye centres, in pixels (a face-size measure)."""
        return float(torch.linalg.vector_norm(self.landmarks5[1] - self.landmarks5[0]))
