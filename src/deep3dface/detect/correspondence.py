"""Dense correspondence: MediaPipe's 468 face-mesh points -> vertices of a morphable model.

Conventions: model space as in ``deep3dface.morphable.data`` (decimetres for the shipped models,
x to the subject's left, y up, z towards the camera); MediaPipe point i is the i-th row of
``LandmarkResult.points`` of the ``mediapipe`` landmarker.

For the default model the correspondence is package data, ``data/mediapipe_to_default.json``, built
by scripts/build_dense_correspondence.py from the AFLW2000-3D dev photos (the model fitted to the
ground-truth 68 points, its surface read under each MediaPipe point, medians across photos; the
file records the photos, the date and a held-out validation).  The file also stores where those
vertices and the 68 keypoints lie on the default mean shape, so that any other model (a user's
Deep3D BFM, another topology) gets the correspondence by transfer, without loading the default:
its mean shape is brought onto the default's by the similarity that best aligns the two models'
68 keypoints, and each MediaPipe point takes the nearest vertex.

``weights`` measure how consistently a point lands on the same surface spot across photos, and on
how many photos it lands on the mesh at all (1 for the best points; forehead-top points seen on
few photos get little); ``contour`` marks the face outline, which slides over the surface as
the head turns: ``point_weights`` drops it beyond a yaw.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import torch

CORRESPONDENCE_FILE = "mediapipe_to_default.json"
NUM_POINTS = 468
#: Beyond this |yaw| (degrees) ``point_weights`` drops the contour points.  Held-out validation
#: (the data file's provenance, 20 photos per yaw bin): NME of the fitted keypoints 2.38 / 3.94 /
#: 23.30 % (0-30 / 30-60 / 60-90) against 2.38 / 3.97 / 23.32 % keeping them, 2.42 / 4.56 / 23.95 %
#: with the 68 mapped points; the outline slides on turned faces.
CONTOUR_MAX_YAW = 30.0


class DenseCorrespondence(NamedTuple):
    """Per MediaPipe point: the model vertex, its reliability weight, whether it is on the outline."""

    vertex_ids: torch.Tensor  # (468,) int64, rows of the model's mean shape
    weights: torch.Tensor     # (468,) float64 in (0, 1]
    contour: torch.Tensor     # (468,) bool


class _Packaged(NamedTuple):
    correspondence: DenseCorrespondence
    positions: torch.Tensor           # (468, 3) float64: the vertices on the default mean shape
    keypoint_positions: torch.Tensor  # (68, 3) float64: the default's 68 keypoints on its mean shape
    model_name: str
    num_vertices: int


def dense_correspondence(model) -> DenseCorrespondence:
    """The correspondence for a ``MorphableModel``: the packaged one for the default model, a
    transferred one (see the module docstring) for any other."""
    packaged = _packaged()
    if model.name == packaged.model_name and model.num_vertices == packaged.num_vertices:
        return packaged.correspondence
    vertex_ids = transfer(packaged.positions, packaged.keypoint_positions,
                          model.mean_shape.detach().cpu().double(), model.keypoints.cpu())
    return DenseCorrespondence(vertex_ids, packaged.correspondence.weights, packaged.correspondence.contour)


def point_weights(correspondence: DenseCorrespondence, yaw_degrees: torch.Tensor,
                  contour_max_yaw: float = CONTOUR_MAX_YAW, total: float = 68.0) -> torch.Tensor:
    """(B,) yaw estimates (degrees) -> (B, 468) float64 fitting weights: the reliability weights,
    contour points dropped where |yaw| > ``contour_max_yaw``, each row scaled to sum ``total``
    (``fit_landmarks``' regularisation is calibrated for 68 points of weight 1)."""
    yaw = torch.as_tensor(yaw_degrees, dtype=torch.float64).reshape(-1, 1)
    w = correspondence.weights.to(torch.float64).expand(yaw.shape[0], -1)
    w = torch.where(correspondence.contour & (yaw.abs() > contour_max_yaw), torch.zeros_like(w), w)
    return w * (total / w.sum(1, keepdim=True))


def load_correspondence(text: str | None = None) -> dict:
    """The data file's JSON (package data unless ``text`` is given), checked."""
    if text is None:
        text = resources.files("deep3dface").joinpath("data", CORRESPONDENCE_FILE).read_text()
    data = json.loads(text)
    for key, shape in (("vertex_ids", (NUM_POINTS,)), ("weights", (NUM_POINTS,)), ("contour", (NUM_POINTS,)),
                       ("positions", (NUM_POINTS, 3)), ("keypoint_positions", (68, 3))):
        if tuple(torch.as_tensor(data[key]).shape) != shape:
            raise ValueError(f"{CORRESPONDENCE_FILE}: {key} must have shape {shape}")
    ids = torch.as_tensor(data["vertex_ids"])
    if int(ids.min()) < 0 or int(ids.max()) >= data["num_vertices"]:
        raise ValueError(f"{CORRESPONDENCE_FILE}: vertex ids outside 0..{data['num_vertices'] - 1}")
    weights = torch.as_tensor(data["weights"], dtype=torch.float64)
    if not bool(((weights > 0) & (weights <= 1)).all()):
        raise ValueError(f"{CORRESPONDENCE_FILE}: weights must lie in (0, 1]")
    return data


@lru_cache(maxsize=1)
def _packaged() -> _Packaged:
    data = load_correspondence()
    corr = DenseCorrespondence(torch.as_tensor(data["vertex_ids"], dtype=torch.int64),
                               torch.as_tensor(data["weights"], dtype=torch.float64),
                               torch.as_tensor(data["contour"], dtype=torch.bool))
    return _Packaged(corr, torch.as_tensor(data["positions"], dtype=torch.float64),
                     torch.as_tensor(data["keypoint_positions"], dtype=torch.float64),
                     data["model"], int(data["num_vertices"]))


# -- pure functions -------------------------------------------------------------------------------
def similarity(source: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Least-squares similarity (Umeyama 1991) mapping source (K, 3) onto target (K, 3):
    returns scale s, rotation R (3, 3), translation t (3,) with target ≈ s · source @ R.T + t."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = torch.linalg.svd(b.T @ a / len(a))
    d = torch.ones(3, dtype=source.dtype)
    d[2] = torch.sign(torch.det(u @ vt))  # a rotation, never a reflection
    rotation = u @ torch.diag(d) @ vt
    scale = float((sigma * d).sum() / a.pow(2).sum(1).mean())
    return scale, rotation, mu_t - scale * mu_s @ rotation.T


def transfer(positions: torch.Tensor, keypoint_positions: torch.Tensor, mean_shape: torch.Tensor,
             keypoints: torch.Tensor) -> torch.Tensor:
    """Vertex ids (468,) of a model (mean shape (N, 3), 68 keypoint ids) nearest to the default
    model's corresponding points ``positions`` (468, 3), after aligning the model's keypoints to
    the default's ``keypoint_positions`` (68, 3) by a similarity (units and frames may differ)."""
    scale, rotation, shift = similarity(mean_shape[keypoints], keypoint_positions)
    aligned = scale * mean_shape @ rotation.T + shift
    return torch.cdist(positions, aligned).argmin(1)
