"""The 68 output points: the model's keypoints, with the points a turned face hides moved to
where people annotate them.

The fit matches ``MorphableModel.keypoints`` to the landmarker's 68 points, and the outputs
(``FaceReconstruction.landmarks68``, the sets' and videos' points) project model vertices: 3D-style
points, a hidden jaw point where the 3D point lies.  Where a face is turned beyond ~30 deg,
AFLW2000-3D's 3D-style annotation puts the hidden points (far jaw, far brow and eye corner, far
mouth corner) elsewhere than those keypoints project: on the dev photos the far jaw of the fitted
face sat ~12 % of the face size higher than annotated, and nearer the nose.  Moving the *fit's*
keypoints does not help (the fit moves the face to put them back on the landmarker's points);
moving the *output's* does.  ``data/annotation_keypoints.json`` (scripts/build_annotation_keypoints.py,
with its provenance and held-out validation) names, per point, the vertex whose projection matched
the annotation on the dev photos where the point was hidden.  A point is output as

    (1 - h) * posed keypoint + h * posed hidden vertex,   h = ramp(cosine) * ramp(|yaw|),

``cosine`` between the keypoint's vertex normal and the direction to the camera, ramps linear
between ``HIDDEN_COSINE`` and ``HIDDEN_YAW``: continuous, so a video's points do not jump as the
head turns, and exactly the keypoints on faces turned less than ``HIDDEN_YAW[0]``.

Models other than the default get the vertices by transfer (``detect.correspondence.transfer``:
the file stores the vertices' and keypoints' positions on the default mean shape).
Conventions: model space and coefficients as ``morphable.model``; the camera at
(0, 0, ``CAMERA_DISTANCE``) of model space (DESIGN.md §2).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from ..camera import CAMERA_DISTANCE
from ..morphable.model import MorphableModel
from ..types import Coefficients

ANNOTATION_FILE = "annotation_keypoints.json"
HIDDEN_COSINE = (0.1, -0.1)  # cos(normal, view): a point's first factor goes 0 -> 1 between these
HIDDEN_YAW = (25.0, 35.0)    # |yaw| in degrees: the second factor goes 0 -> 1 between these


def hidden_weights(model: MorphableModel, coeffs: Coefficients) -> torch.Tensor:
    """(B, 68) in [0, 1]: how hidden each keypoint is (1: facing away on a face turned beyond
    ``HIDDEN_YAW[1]``; 0: facing the camera, or any point of a face turned less than ``HIDDEN_YAW[0]``)."""
    from .keypoint_residuals import keypoint_geometry  # the keypoints' one-ring: exact vertex normals, cheaply

    with torch.no_grad():
        points, normals = keypoint_geometry(model, coeffs)
        view = torch.nn.functional.normalize(points.new_tensor((0.0, 0.0, CAMERA_DISTANCE)) - points, dim=-1)
        cosine = (normals * view).sum(-1)
        yaw = torch.rad2deg(coeffs.angle[:, 1].to(points).abs())
    return _ramp(cosine, *HIDDEN_COSINE) * _ramp(yaw, *HIDDEN_YAW)[:, None]


def output_keypoints(model: MorphableModel, coeffs: Coefficients, hidden_vertices: torch.Tensor | None) -> torch.Tensor:
    """(B, 68, 3) posed model-space points the outputs project: ``model.posed_vertices`` at the
    keypoints, blended towards ``hidden_vertices`` (68,) by ``hidden_weights``; the keypoints
    alone where ``hidden_vertices`` is None (``annotation_vertices`` of a model without them)."""
    coeffs = coeffs.to(model.mean_shape.dtype)
    with torch.no_grad():
        keypoints = model.posed_vertices(coeffs, model.keypoints)
        if hidden_vertices is None:
            return keypoints
        hidden = model.posed_vertices(coeffs, hidden_vertices.to(model.keypoints.device))
        weight = hidden_weights(model, coeffs)[..., None].to(keypoints)
    return keypoints + weight * (hidden - keypoints)


def annotation_vertices(model: MorphableModel) -> torch.Tensor:
    """(68,) int64 vertex ids of ``model``: each point's vertex where it is hidden (the packaged
    file's for the default model, transferred for any other)."""
    data = _packaged()
    if model.name == data["model"] and model.num_vertices == data["num_vertices"]:
        return torch.as_tensor(data["hidden_vertices"], dtype=torch.int64)
    from ..detect.correspondence import transfer

    return transfer(torch.as_tensor(data["hidden_positions"], dtype=torch.float64),
                    torch.as_tensor(data["keypoint_positions"], dtype=torch.float64),
                    model.mean_shape.detach().cpu().double(), model.keypoints.cpu())


def load_annotation(text: str | None = None) -> dict:
    """The data file's JSON (package data unless ``text`` is given), checked."""
    if text is None:
        text = resources.files("deep3dface").joinpath("data", ANNOTATION_FILE).read_text()
    data = json.loads(text)
    for key, shape in (("hidden_vertices", (68,)), ("hidden_positions", (68, 3)), ("keypoint_positions", (68, 3))):
        if tuple(torch.as_tensor(data[key]).shape) != shape:
            raise ValueError(f"{ANNOTATION_FILE}: {key} must have shape {shape}")
    ids = torch.as_tensor(data["hidden_vertices"])
    if int(ids.min()) < 0 or int(ids.max()) >= data["num_vertices"]:
        raise ValueError(f"{ANNOTATION_FILE}: vertex ids outside 0..{data['num_vertices'] - 1}")
    return data


@lru_cache(maxsize=1)
def _packaged() -> dict:
    return load_annotation()


def _ramp(x: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """0 at ``start``, 1 at ``end``, linear between, clamped (start > end for a falling variable)."""
    return ((x - start) / (end - start)).clamp(0.0, 1.0)
