"""Image sets: photos of one person -> one identity, with per-photo pose and expression.

    observer = SetObserver.create()                       # MTCNN + landmarker (+ dlib descriptor)
    photos = [observer.observe(path) for path in paths]
    result = reconstruct_identity(load_model("default"), photos)
    result.identity, result.neutral, result.used, result.dropped, result.summary()

Steps, each a function below:

1. ``SetObserver.observe``: every face of a photo (MTCNN box, landmarks and the landmarker's own
   points, e.g. MediaPipe's 468, Deep3D alignment, landmarks in the 224 crop) and, when dlib and ``face-recognition-models`` are installed, dlib's 128-D face
   descriptor (the wheel's ``dlib_face_recognition_resnet_model_v1.dat``, aligned by its
   ``shape_predictor_5_face_landmarks.dat``; located by path, the package is never imported).
2. ``select_faces`` (deep3dface.set_selection): one face per photo, the one most consistent with the other photos (most
   descriptor neighbours, then the smallest median distance; without descriptors the largest
   face, with a note in ``IdentityReconstruction.notes``); photos outside the largest group of mutually consistent photos are dropped as
   "another person".  Measured on the shared sets: same person 0.05–0.52, different people ≥ 0.64, so
   dlib's own threshold 0.6 separates them.
3. ``reconstruct_identity``: drops failed landmarks (landmarker score, single-photo fit residual),
   fits the robust joint model (``fit.image_set.fit_identity``, with the dense points; with a
   checkpoint, ``reconstruct_set`` starts it from the average of R-Net's answers), drops photos the
   shared identity cannot explain (excess residual far beyond the others'), refits, and builds the result.

Photos are named by the caller (the file stem for the CLI); points follow DESIGN.md §2 (corner
origin, y down), coefficients live in Deep3D's crop camera and ``PhotoFit.camera`` images them into
the photo.  The neutral mesh is the shared identity with zero expression in the canonical (unposed)
model frame, in model units (decimetres for the shipped models), the model's vertex order.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .align import Alignment, alignment_for, apply_matrix
from .camera import Camera
from .detect.types import Detection
from .fit.annotation import annotation_vertices, output_keypoints
from .fit.image_set import DensePoints, SetFit, SetFitConfig, fit_identity
from .detect.landmarks import landmarks_of
from .image_set_inputs import photo_list, photo_names, read_photos
from .io.images import to_uint8
from .morphable.model import MorphableModel
from .set_selection import outlier_reasons, select_faces  # noqa: F401 (public here too)
from .types import Coefficients, Mesh

DESCRIPTOR_FILES = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat")


@dataclass(frozen=True)
class SetConfig:
    """How a set is cleaned and fitted; every field is a measured default, not a magic constant."""

    same_person: float = 0.6        # dlib descriptor distance below which two faces are one person
    min_landmark_score: float = 0.5  # landmarker confidence below which a face's landmarks failed
    max_rms: float = 6.0            # crop px: a single-photo fit worse than this means failed landmarks
    max_excess: float = 3.0         # crop px RMS a photo may fit the shared identity worse than its own
    dense: bool = True              # fit MediaPipe's 468 points too (through detect.correspondence) when present
    annotation_keypoints: bool = True  # output 68: hidden points where people annotate them (fit.annotation)
    fit: SetFitConfig = field(default_factory=SetFitConfig)


@dataclass(frozen=True, eq=False)
class FaceObservation:
    """One face in one photo: detector, landmarker and alignment outputs (photo pixels)."""

    detection: Detection
    landmarks68: torch.Tensor       # (68, 2) photo pixels
    landmark_score: float
    alignment: Alignment
    descriptor: np.ndarray | None   # (128,) dlib face descriptor, or None without dlib
    points: torch.Tensor | None = None  # (K, 2) photo pixels: the landmarker's own points (468: MediaPipe)

    @property
    def crop_landmarks(self) -> torch.Tensor:
        return self.alignment.to_crop(self.landmarks68.double())


@dataclass(frozen=True, eq=False)
class PhotoObservation:
    name: str
    image_size: tuple[int, int]     # (W, H)
    faces: tuple[FaceObservation, ...]


@dataclass(frozen=True)
class DroppedPhoto:
    name: str
    reason: str


@dataclass(frozen=True, eq=False)
class PhotoFit:
    """One used photo of the set: its face, coefficients (one row, crop camera, the shared id) and
    the camera that images them into the photo."""

    name: str
    image_size: tuple[int, int]
    face: FaceObservation
    coefficients: Coefficients
    camera: Camera
    weight: float                   # the photo's confidence in the joint fit, [0, 1]
    rms: float                      # RMS landmark residual under the shared identity, crop px
    landmarks68: torch.Tensor       # (68, 2) fitted 68 points projected into the photo (fit.annotation)
    landmarks68_model: torch.Tensor | None = None  # (68, 3) those points, posed, model space

    @property
    def angles_deg(self) -> tuple[float, float, float]:
        return tuple(math.degrees(float(a)) for a in self.coefficients.angle[0])

    def __repr__(self) -> str:  # short: the generated one prints every tensor
        return (f"PhotoFit(name={self.name!r}, weight={self.weight:.3f}, rms={self.rms:.2f}, "
                f"angles_deg={tuple(round(a, 1) for a in self.angles_deg)})")


@dataclass(frozen=True, eq=False)
class IdentityReconstruction:
    """One person from a set of photos."""

    model: MorphableModel
    identity: torch.Tensor          # (K_id,) shared identity coefficients
    neutral: Mesh                   # shared identity, zero expression, canonical pose, model units
    photos: tuple[PhotoFit, ...]    # used photos, in input order
    dropped: tuple[DroppedPhoto, ...]
    fit: SetFit | None
    faces: tuple = ()               # per used photo: pipeline.FaceReconstruction (appearance fitted)
    albedo: torch.Tensor | None = None  # (N, 3) the person's one albedo (fit.shared_albedo), if fitted
    notes: tuple[str, ...] = ()     # what the caller should know and may act on (a face chosen unchecked)

    def __repr__(self) -> str:  # short: the generated one prints the mesh, every photo's tensors
        return (f"IdentityReconstruction(model={self.model.name!r}, used={self.used!r}, "
                f"dropped={tuple(d.name for d in self.dropped)!r}, notes={len(self.notes)})")

    @property
    def used(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.photos)

    @property
    def weights(self) -> dict[str, float]:
        return {p.name: p.weight for p in self.photos}

    def summary(self) -> dict:
        """JSON-ready description (what ``fit-set`` writes as summary.json)."""
        return {
            "model": self.model.name, "unit": self.model.unit,
            "identity": [round(float(v), 6) for v in self.identity],
            "used": [{"photo": p.name, "weight": round(p.weight, 4), "rms_crop_px": round(p.rms, 3),
                      "angles_deg": [round(a, 2) for a in p.angles_deg]} for p in self.photos],
            "dropped": [{"photo": d.name, "reason": d.reason} for d in self.dropped],
            "notes": list(self.notes),
        }


class FaceDescriber:
    """dlib's 128-D face descriptor (``face_recognition``'s model) for a detected face."""

    def __init__(self) -> None:
        import dlib

        folder = _descriptor_folder()
        self._recogniser = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_FILES[0]))
        self._predictor = dlib.shape_predictor(str(folder / DESCRIPTOR_FILES[1]))
        self._rectangle = dlib.rectangle

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("dlib") is not None and _descriptor_folder() is not None

    def __call__(self, rgb: np.ndarray, box: torch.Tensor) -> np.ndarray:
        """(H, W, 3) uint8 photo, MTCNN box -> (128,) float64 descriptor."""
        from .detect.dlib68 import dlib_box

        # dlib's 5-point predictor expects its HOG detector's box, as the 68-point one does
        shape = self._predictor(rgb, self._rectangle(*dlib_box(box)))
        return np.asarray(self._recogniser.compute_face_descriptor(rgb, shape), dtype=np.float64)


class SetObserver:
    """Detector + landmarker (+ descriptor) that turn photos into ``PhotoObservation``s."""

    def __init__(self, detector, landmarker, describer: FaceDescriber | None = None) -> None:
        self.detector, self.landmarker, self.describer = detector, landmarker, describer

    @classmethod
    def create(cls, landmarker: str = "mediapipe", descriptors: bool = True) -> "SetObserver":
        from .detect import MTCNN
        from .detect.finder import FaceFinder
        from .detect.landmarks import create_landmarker

        describer = FaceDescriber() if descriptors and FaceDescriber.available() else None
        marker = create_landmarker(landmarker)
        return cls(FaceFinder.create(MTCNN.pretrained(), marker), marker, describer)

    def observe(self, image: str | Path | torch.Tensor, name: str | None = None) -> PhotoObservation:
        if name is None:
            name = Path(image).stem if not isinstance(image, torch.Tensor) else "photo"
        from .io.photos import photo_tensor  # a tensor checked as reconstruct checks it

        photo = photo_tensor(image)
        return self.observe_detections(name, photo, self.detector.detect(photo))

    def observe_detections(self, name: str, photo: torch.Tensor, detections: list[Detection]) -> PhotoObservation:
        """The faces of given detections (e.g. a tracked box in a video frame) of one photo."""
        height, width = photo.shape[-2:]
        rgb = to_uint8(photo) if self.describer is not None and detections else None
        faces = []
        for detection in detections:
            marks = landmarks_of(self.landmarker, photo, detection)
            alignment = alignment_for(detection.landmarks5.double().numpy(), (width, height))
            descriptor = None if rgb is None else self.describer(rgb, detection.box)
            faces.append(FaceObservation(detection, marks.ibug68, float(marks.score), alignment, descriptor, marks.points))
        return PhotoObservation(name, (width, height), tuple(faces))


def reconstruct_identity(model: MorphableModel, observations: list[PhotoObservation],
                         config: SetConfig = SetConfig(),
                         answers: dict[str, Coefficients] | None = None) -> IdentityReconstruction:
    """One identity from the observed photos of one person (see the module notes for the steps).
    ``answers``: per photo name, a network's coefficients for each of its faces (rows in the
    order of ``PhotoObservation.faces``, crop camera): the joint fit starts from them."""
    dropped: list[DroppedPhoto] = []
    # each face's answer, keyed by the face object itself (eq=False hashes it by identity): the
    # faces are filtered and re-collected below
    answer_of = {} if answers is None else {f: answers[o.name][i] for o in observations if o.name in answers
                                             for i, f in enumerate(o.faces)}
    usable = []
    for obs in observations:
        faces = tuple(f for f in obs.faces if f.landmark_score >= config.min_landmark_score)
        if not obs.faces:
            dropped.append(DroppedPhoto(obs.name, "no face found"))
        elif not faces:
            dropped.append(DroppedPhoto(obs.name, f"landmarks failed (landmarker score < {config.min_landmark_score})"))
        else:
            usable.append(PhotoObservation(obs.name, obs.image_size, faces))
    chosen, rejected = select_faces([[f.descriptor for f in o.faces] for o in usable],
                                    [[_face_size(f) for f in o.faces] for o in usable], config.same_person)
    dropped += [DroppedPhoto(usable[i].name, reason) for i, reason in rejected.items()]
    # several faces and no descriptor: the largest is taken on trust (a group photo may give a stranger's)
    notes = tuple(f"{o.name}: {len(o.faces)} faces and no face descriptor to tell whose (pip install dlib-bin "
                  "face-recognition-models), so the largest was used unchecked"
                  for o in usable if len(o.faces) > 1 and any(f.descriptor is None for f in o.faces))
    photos = [(o, o.faces[chosen[i]]) for i, o in enumerate(usable) if i in chosen]
    camera = Camera.crop(dtype=torch.float64)
    while photos:
        pixels = torch.stack([face.crop_landmarks for _, face in photos])
        scores = torch.tensor([face.landmark_score for _, face in photos], dtype=torch.float64)
        dense = dense_points(model, [face for _, face in photos]) if config.dense else None
        initial = None if answers is None else _stacked([answer_of[face] for _, face in photos])
        fit = fit_identity(model, pixels, camera, scores, config=config.fit, dense=dense, initial=initial)
        reasons = outlier_reasons(fit.single_rms, fit.excess, config.max_rms, config.max_excess)
        if not reasons:
            return replace(_result(model, photos, fit, dropped, camera, config.annotation_keypoints), notes=notes)
        # drop the worst photo only, then refit: an outlier distorts the others' residuals
        worst = max(reasons, key=lambda i: (float(fit.single_rms[i]) > config.max_rms, float(fit.excess[i])))
        dropped.append(DroppedPhoto(photos[worst][0].name, reasons[worst]))
        photos = [p for i, p in enumerate(photos) if i != worst]
    identity = torch.zeros(model.layout.id, dtype=torch.float64)
    return IdentityReconstruction(model, identity, neutral_mesh(model, identity), (), tuple(dropped), None,
                                  notes=notes)


def reconstruct_set(reconstructor, photos: list, names: list[str] | None = None,
                    config: SetConfig = SetConfig(), appearance: bool = True) -> IdentityReconstruction:
    """``Reconstructor.reconstruct_set``: photos (paths or (3, H, W) tensors) of one person -> one
    identity, and per used photo a ``FaceReconstruction`` whose geometry keeps the shared identity
    and the person's one albedo (``fit.shared_albedo``) under the photo's own light (``albedo``).
    ``appearance=False`` skips the appearance (the model's mean albedo, no light): geometry only,
    and much faster (the per-vertex albedo solve dominates a set's time on CPU)."""

    from .align import align
    from .fit.fitter import FitConfig, FitTargets, fit_faces, landmark_error
    from .fit.photometric import refine_photometric
    from .pipeline import FaceReconstruction

    photos = photo_list(photos)
    names = photo_names(photos, names)
    describer = FaceDescriber() if FaceDescriber.available() else None
    observer = SetObserver(reconstructor.detector, reconstructor.landmarker, describer)
    observations, crops, unreadable = [], {}, []
    for name, image in read_photos(photos, names, lambda name, reason: unreadable.append(DroppedPhoto(name, reason))):
        observations.append(observer.observe(image, name))
        crops[name] = [align(image, face.detection.landmarks5)[0] for face in observations[-1].faces]
    answers = None
    if reconstructor.rnet is not None:  # each face's network answer starts the joint fit
        answers = {o.name: reconstructor.network_answers(torch.stack(crops[o.name])) for o in observations if o.faces}
    result = reconstruct_identity(reconstructor.model, observations, config, answers)
    if unreadable:
        result = replace(result, dropped=tuple(unreadable) + result.dropped)
    if not result.photos:
        return result
    chosen = [crops[p.name][next(i for i, f in enumerate(o.faces) if f is p.face)]
              for p in result.photos for o in observations if o.name == p.name]
    targets = FitTargets(crops=torch.stack(chosen),
                         landmarks=torch.stack([p.face.crop_landmarks for p in result.photos]).float())
    coeffs = result.fit.coefficients.to(torch.float32)
    # the appearance is the person's (one albedo, a light per photo), not each photo's: fit_faces
    # runs no stage here (it would fit an albedo per photo, thrown away), and the photometric stage
    # runs below with the identity held (fit_faces would refine each photo's identity on its own)
    stage = reconstructor.config.fit.appearance if appearance else None
    photometric = reconstructor.config.fit.photometric if appearance else None
    model = reconstructor.model
    fitted = fit_faces(model, targets, FitConfig(landmarks=None, appearance=None, photometric=None), coeffs)
    coeffs, albedo, shared = fitted.coefficients, None, None
    if stage is not None:
        coeffs, albedo, shared = _shared_appearance(model, targets, coeffs, result.fit.photo_weights, stage)
    if photometric is not None and photometric.iterations > 0:
        flags, camera = [list(f) for f in fitted.flags], Camera.crop()
        coeffs, _ = refine_photometric(model, targets, photometric, camera, coeffs, albedo, fitted.landmark_weights,
                                       flags, fixed=("id", "tex"))
        error = landmark_error(model, coeffs, targets.landmarks, fitted.landmark_weights, camera)
        fitted = replace(fitted, landmark_error=error, flags=tuple(tuple(f) for f in flags))
        if stage is not None:  # the geometry moved: each photo's light and the albedo again
            coeffs, albedo, shared = _shared_appearance(model, targets, coeffs, result.fit.photo_weights, stage)
        # each photo's pose and expression moved: its reported angles and 68 points follow
        refined = coeffs.to(result.fit.coefficients.id)
        points = _points68(model, refined, [p.camera for p in result.photos], config.annotation_keypoints)
        result = replace(result, photos=tuple(
            replace(p, coefficients=refined[i], landmarks68=points[i][0], landmarks68_model=points[i][1])
            for i, p in enumerate(result.photos)))
    faces = []
    for i, p in enumerate(result.photos):
        faces.append(FaceReconstruction(
            model=reconstructor.model, image_size=p.image_size, detection=p.face.detection,
            alignment=p.face.alignment, landmarks=_landmark_result(p.face), coefficients=coeffs[i],
            albedo=None if albedo is None else albedo[i], camera=p.camera,
            landmarks68=p.landmarks68, landmarks68_model=p.landmarks68_model, landmark_error=float(fitted.landmark_error[i]),
            flags=fitted.flags[i]))
    shared_albedo = None if shared is None else shared.albedo
    return replace(result, faces=tuple(faces), albedo=shared_albedo,
                   neutral=neutral_mesh(reconstructor.model, result.identity, shared_albedo))


def _stacked(rows: list[Coefficients]) -> Coefficients:
    return Coefficients.from_vector(torch.cat([r.to_vector() for r in rows]), rows[0].layout)


def _shared_appearance(model, targets, coeffs, photo_weights, stage):
    """(coefficients with each photo's light and the shared tex, per-photo albedo rows (None for a
    model with an albedo basis: tex is the albedo), the ``SharedAppearance``): one albedo for the
    person, one light per photo."""
    from .fit.shared_albedo import fit_shared_appearance

    shared = fit_shared_appearance(model, targets.crops, coeffs, photo_weights, stage)
    coeffs = coeffs.replace(gamma=shared.gamma.to(coeffs.gamma), tex=shared.tex.to(coeffs.tex).expand_as(coeffs.tex))
    albedo = None if model.has_albedo_basis else shared.albedo.to(coeffs.gamma).expand(len(coeffs.id), -1, -1)
    return coeffs, albedo, shared


def _landmark_result(face: FaceObservation):
    from .detect.landmarks import LandmarkResult
    return LandmarkResult(face.landmarks68, None, face.landmark_score, face.landmarks68, backend="set")


def dense_points(model: MorphableModel, faces: list, matrices: torch.Tensor | None = None) -> DensePoints | None:
    """The faces' MediaPipe points (``.points``, photo pixels) in their crops with the model's
    dense correspondence, or None where a face lacks them (another landmarker) or the model has no
    correspondence.  The crops are the faces' own ``.alignment``s, or ``matrices`` (P, 3, 3) photo
    -> crop (a video's one clip-wide camera)."""
    from .detect.correspondence import NUM_POINTS
    from .pipeline import _dense_correspondence  # the pipeline's one lookup (None without data)

    if not faces or any(f.points is None or len(f.points) != NUM_POINTS for f in faces):
        return None
    correspondence = _dense_correspondence(model)
    if correspondence is None:
        return None
    if matrices is None:
        matrices = [f.alignment.matrix for f in faces]
    pixels = torch.stack([apply_matrix(m, f.points.double()) for m, f in zip(matrices, faces)])
    return DensePoints(pixels, correspondence.vertex_ids, correspondence.weights, correspondence.contour)


def neutral_mesh(model: MorphableModel, identity: torch.Tensor, albedo: torch.Tensor | None = None) -> Mesh:
    """The identity with zero expression, canonical pose, model units and vertex order; ``albedo``
    (N, 3) in [0, 1] becomes the vertex colours."""
    with torch.no_grad():
        ident = identity.to(model.mean_shape)[None]
        shape = model.shape(ident, torch.zeros(1, model.layout.exp, dtype=ident.dtype))
        normals = model.normals(shape)
    colours = None if albedo is None else albedo.detach().double().clamp(0, 1).numpy()
    return Mesh(shape[0].double().numpy(), model.triangles.numpy(), colours, normals[0].double().numpy(), model.unit)


def _result(model, photos, fit: SetFit, dropped, camera: Camera, annotation_keypoints: bool) -> IdentityReconstruction:
    cameras = [camera.for_photo(face.alignment.matrix, *obs.image_size) for obs, face in photos]
    points = _points68(model, fit.coefficients, cameras, annotation_keypoints)
    fits = tuple(PhotoFit(obs.name, obs.image_size, face, fit.coefficients[i], cameras[i], float(fit.photo_weights[i]),
                          float(fit.rms[i]), *points[i]) for i, (obs, face) in enumerate(photos))
    identity = fit.identity.double()
    return IdentityReconstruction(model, identity, neutral_mesh(model, identity), fits, tuple(dropped), fit)


def _points68(model, coeffs: Coefficients, cameras: list[Camera],
              annotation_keypoints: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per photo (one row of ``coeffs`` each), the 68 output points (``fit.annotation.output_keypoints``;
    hidden points where people annotate them with ``SetConfig.annotation_keypoints``) projected into
    the photo (68, 2) and posed in model space (68, 3): ``PhotoFit.landmarks68(_model)``."""
    hidden = annotation_vertices(model) if annotation_keypoints else None
    landmarks = output_keypoints(model, coeffs, hidden).double()
    return [(cam.project(landmarks[i:i + 1])[0].float(), landmarks[i].float()) for i, cam in enumerate(cameras)]


def _descriptor_folder() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if all((folder / f).is_file() for f in DESCRIPTOR_FILES) else None


def _face_size(face: FaceObservation) -> float:
    return face.detection.eye_distance
