"""The Reconstructor: photo in, 3D faces out.  The one object most users need.

    from deep3dface import Reconstructor
    faces = Reconstructor().reconstruct("photo.jpg")       # list[FaceReconstruction], most prominent first
    faces[0].landmarks68, faces[0].mesh(), faces[0].overlay(photo)

Per photo: MTCNN finds faces (box, score, 5 points; where it finds none, MediaPipe's BlazeFace
confirmed by the landmarker, ``detect.finder``) → Deep3D alignment → 224 crop and its
Alignment → the landmarker's points → (R-Net when a checkpoint is given) → the fitter (landmark,
appearance and optional photometric stages, ``fit.fitter``) → coefficients in Deep3D's crop camera.
The photo camera follows exactly from the Alignment (``Camera.for_photo``), so projections and
renders lie on the uncropped photo.  Points are photo pixels, corner origin, y down (DESIGN.md §2).
"""
from __future__ import annotations

import contextlib
import os
import math
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .caching import per_object
from .align import Alignment, align
from .camera import Camera
from .detect import MTCNN, Detection, MTCNNConfig
from .detect.correspondence import point_weights
from .detect.finder import FaceFinder, FinderConfig
from .detect.landmarks import LandmarkResult, create_landmarker, landmarks_of
from .devices import resolve_device
from .fit.annotation import annotation_vertices, output_keypoints
from .fit.fitter import FitConfig, FitResult, FitTargets, detector_targets, fit_faces
from .fit.losses import LANDMARK_WEIGHTS
from .io.photos import checked_photo, photo_tensor  # noqa: F401 (checked_photo: part of this module's API)
from .morphable import load_model
from .morphable.model import MorphableModel
from .morphable.shading import shade
from .render.shaded import overlay, render_colours
from .threads import torch_threads
from .types import Coefficients, FaceGeometry, Mesh


#: ``FaceReconstruction.texture`` sizes: a chart of a few texels a side is no texture (size 1
#: crashed the gutter fill), and above 8192 the float maps alone pass 1.5 GB
MIN_TEXTURE_SIZE, MAX_TEXTURE_SIZE = 16, 8192
#: SH lighting of the "geometry" render: ambient plus a light from the camera and slightly above
#: (bands 1 and 2 of ``morphable.shading``: −y·γ1 and +z·γ2), the same for every channel.
GEOMETRY_LIGHT = torch.tensor([[-0.3, -0.25, 0.45, 0.0, 0, 0, 0, 0, 0] * 3], dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class FaceReconstruction:
    """One face of one photo, reconstructed.

    coefficients: one row, Deep3D's crop camera (``Camera.crop()``); ``camera`` images the same
    face into the photo.  ``albedo`` is the per-vertex albedo for models without an albedo basis.
    ``landmarks68`` are the fitted model's keypoints projected into the photo (3D-style: a hidden
    jaw point is where the 3D point projects; on a turned face the hidden points are the vertices
    where people annotate them, ``fit.annotation``), ``landmarks68_model`` those 3D points (posed,
    model space); ``landmarks`` is what the 2D landmarker found.
    ``angles_deg`` = (pitch, yaw, roll) of the model rotation R = Rz·Ry·Rx, degrees.
    """

    model: MorphableModel
    image_size: tuple[int, int]             # (W, H) of the photo
    detection: Detection
    alignment: Alignment
    landmarks: LandmarkResult
    coefficients: Coefficients
    albedo: torch.Tensor | None
    camera: Camera
    landmarks68: torch.Tensor               # (68, 2) photo pixels
    landmark_error: float                   # mean distance to the landmarker's points, crop pixels
    flags: tuple[str, ...] = ()
    landmarks68_model: torch.Tensor | None = None  # (68, 3) the posed model-space points landmarks68 images

    def __repr__(self) -> str:  # the generated one printed ~29,000 characters (albedo, 468 points, ...)
        box = [round(float(v), 1) for v in self.detection.box]
        angles = tuple(round(a, 1) for a in self.angles_deg)
        return (f"FaceReconstruction(box={box}, score={self.detection.score:.3f}, detector={self.detection.detector!r}, "
                f"angles_deg={angles}, landmark_error={self.landmark_error:.2f}, flags={self.flags!r}, "
                f"model={self.model.name!r})")

    @property
    def angles_deg(self) -> tuple[float, float, float]:
        return tuple(math.degrees(float(a)) for a in self.coefficients.angle[0])

    def geometry(self) -> FaceGeometry:
        albedo = None if self.albedo is None else self.albedo[None]
        with torch.no_grad():
            return self.model(self.coefficients.to(self.model.mean_shape.dtype), albedo=albedo)

    def mesh(self, posed: bool = False, colour: str = "shaded", geometry: FaceGeometry | None = None) -> Mesh:
        """The face as a Mesh in model units.  ``posed=False``: the canonical (unposed) shape, as
        the reference saves it; ``posed=True``: R·shape + t in model space (camera at z = 10
        looking down −z).  ``colour``: one of ``COLOURS`` (``face_colours``).  ``geometry``:
        ``self.geometry()`` when the caller has it (here and below: it costs ~20 ms a call)."""
        if not isinstance(posed, (bool, np.bool_)):  # "no" or None would pick a pose silently
            raise TypeError(f"posed must be True or False, got {posed!r}")
        g = self.geometry() if geometry is None else geometry
        vertices = (g.vertices if posed else g.shape)[0]
        normals = (g.normals if posed else g.normals_model)[0]
        colours = face_colours(g, colour)[0].clamp(0, 1)
        return Mesh(vertices.double().numpy(), self.model.triangles.numpy(), colours.double().numpy(),
                    normals.double().numpy(), self.model.unit)

    def render(self, colour: str = "shaded", geometry: FaceGeometry | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Render (3, H, W) and mask (1, H, W) at the photo's size, through the photo camera.
        ``colour``: one of ``COLOURS`` (``face_colours``)."""
        g = self.geometry() if geometry is None else geometry
        image, mask = render_colours(g.vertices, face_colours(g, colour), self.model.triangles, self.camera)
        return image[0], mask[0]

    def overlay(self, photo, opacity: float = 1.0, colour: str = "shaded") -> torch.Tensor:
        """The render blended over ``photo``: the photo this face was fitted to, as a (3, H, W)
        tensor or anything ``io.read_image`` reads (a path, bytes, a PIL image)."""
        photo = self._own_photo(photo)
        try:  # a number (a 0-d tensor too) in [0, 1]; not NaN, and a str or None is no opacity
            usable = not isinstance(opacity, (str, bytes, bool)) and 0.0 <= float(opacity) <= 1.0
        except (TypeError, ValueError, RuntimeError):
            usable = False
        if not usable:
            raise ValueError(f"opacity must be a number in [0, 1], got {opacity!r}")
        image, mask = self.render(colour)
        return overlay(photo, image[None], mask[None], opacity)

    def _own_photo(self, photo) -> torch.Tensor:
        """``photo`` as a checked (3, H, W) tensor of the size this face was fitted to."""
        photo = photo_tensor(photo)
        if tuple(photo.shape[-2:]) != (self.image_size[1], self.image_size[0]):
            raise ValueError(f"the photo is {photo.shape[-1]}x{photo.shape[-2]}; this face was fitted to a "
                             f"{self.image_size[0]}x{self.image_size[1]} one")
        return photo

    # -- UV texture (conventions: texture.uv, texture.bake) ----------------------------------------
    @property
    def has_uv(self) -> bool:
        """Whether the model has a UV chart: the default model's, or a Deep3D model's when
        ``BFM_UV.mat`` and the full-BFM vertex ids lie beside its ``BFM_model_front.mat``."""
        return self.uv_chart(self.model) is not None

    def texture(self, photo, size: int = 1024, geometry: FaceGeometry | None = None):
        """Bake ``photo``, the photo this face was fitted to ((3, H, W) tensor in [0, 1] or anything
        ``io.read_image`` reads), into ``size``² UV maps (``texture.TextureMaps``): photo colours
        through the photo camera divided by the fitted light, hidden texels from the mirror side,
        then from the fitted albedo."""
        from .morphable.shading import irradiance
        from .texture import bake_texture, view_directions

        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not MIN_TEXTURE_SIZE <= size <= MAX_TEXTURE_SIZE:
            raise ValueError(f"texture size must be an integer in [{MIN_TEXTURE_SIZE}, {MAX_TEXTURE_SIZE}], got {size!r}")
        size = int(size)  # numpy's integers too
        photo = self._own_photo(photo)
        chart = self.uv_chart(self.model)
        if chart is None:
            raise ValueError(f"model {self.model.name!r} has no UV chart (a Deep3D model needs "
                             "BFM_UV.mat and select_vertex_id.mat, or BFM_UV.mat, BFM_front_idx.mat and "
                             "BFM_exp_idx.mat, beside BFM_model_front.mat)")
        uv, mirror = chart
        g = self.geometry() if geometry is None else geometry
        screen = self.camera.screen(g.vertices.to(self.camera.K.dtype))[0]
        light = irradiance(g.normals, self.coefficients.gamma.to(g.normals))[0]
        return bake_texture(photo, screen, g.normals[0], self.model.triangles, uv, g.albedo[0], light, size,
                            mirror=mirror, view=view_directions(g.vertices[0], self.camera.distance),
                            texels=self.chart_texels(self.model, size))

    @staticmethod
    @per_object(maxsize=2)
    def chart_texels(model: MorphableModel, size: int):
        """``texture.uv_texels`` of the model's chart at ``size``² (~25 MB at 1024²), kept for the
        next face: the chart's rasterisation cost ~50 ms a bake."""
        from .texture.bake import uv_texels

        uv, _ = FaceReconstruction.uv_chart(model)
        return uv_texels(uv.to(torch.float32), model.triangles, size)

    @staticmethod
    @per_object(maxsize=1)
    def uv_chart(model: MorphableModel) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(uv (N, 2), mirror vertex map (N,)) of a model, or None; cached per model object (the
        mirror map's k-d tree query costs ~0.1 s)."""
        from .morphable.formats.deep3d import model_file
        from .morphable.topology import mirror_vertex_map
        from .texture.uv import UV_SOURCES, model_kind, uv_coordinates

        kind, source = model_kind(model.data), model_file(model.data)
        bfm_uv = None if source is None else source.parent / "BFM_UV.mat"
        if kind not in UV_SOURCES or (kind == "deep3d" and (bfm_uv is None or not bfm_uv.is_file()
                                                            or model.data.source_vertex_ids is None)):
            return None
        uv = torch.as_tensor(uv_coordinates(model.data, bfm_uv=bfm_uv))
        return uv, torch.as_tensor(mirror_vertex_map(model.data.mean_shape)[0])


#: what a face's mesh and render can be coloured with (``face_colours``)
COLOURS = ("shaded", "albedo", "geometry")


def face_colours(g: FaceGeometry, colour: str) -> torch.Tensor:
    """(B, N, 3) vertex colours: "shaded" (fitted albedo × fitted light), "albedo", or "geometry"
    (grey clay under a fixed light from the upper front: shows the shape, not the photo's colours)."""
    if colour == "shaded":
        return g.colour
    if colour == "albedo":
        return g.albedo
    if colour == "geometry":
        return shade(torch.full_like(g.albedo, 0.75), g.normals, GEOMETRY_LIGHT.to(g.normals).expand(len(g.normals), -1))
    raise ValueError(f"colour must be one of {', '.join(COLOURS)}, got {colour!r}")


@dataclass(frozen=True)
class ReconstructorConfig:
    max_faces: int | None = None
    landmarker: str = "mediapipe"
    # torch threads while reconstructing (None: torch's default).  One thread: on a 2-core machine
    # with anything else running, two spin-waiting OpenMP threads made detection 7x, landmarks 20x
    # and the fit 5x slower than one (measured; deep3dface.threads)
    threads: int | None = 1
    dense: bool = True  # fit the landmarker's 468 points too, through the dense correspondence
    # below this landmarker score (MediaPipe's face flag) the face is fitted to the detector's 5
    # points instead: on AFLW2000-3D dev, the 21 faces under 0.05 (17 of them |yaw| > 60) had
    # the mesh off the face (NME 31.6 % fitted to it, 23.0 % to the 5 points); above 0.2 the
    # mesh is on the face (mean NME 3.3 % for the 462 faces over 0.9)
    min_landmark_score: float = 0.05
    # output 68: the points a turned face hides where people annotate them (fit.annotation); off:
    # the model's keypoints, as the reference projects them
    annotation_keypoints: bool = True
    # R-Net's precision (nets.prepare_for_inference): "auto" is bfloat16 on CPUs that compute it
    # natively (AMX ~2.5x, AVX512-BF16 ~1.6-2x faster, ~0.5 % off float32; the fit refines the
    # answer), "float32" forces float32
    rnet_precision: str = "auto"
    detector: MTCNNConfig = field(default_factory=MTCNNConfig)
    # MediaPipe's BlazeFace (detect.finder): for photos where MTCNN finds no face (confirmed by the
    # landmarker), and a second look at faces the landmarker loses at MTCNN's box
    finder: FinderConfig = field(default_factory=FinderConfig)
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        # checked here, not where used: a float max_faces failed as a slice index after detection, a
        # NaN min_landmark_score compared False with every score (no lost face ever fell back to the
        # detector's points), and threads=0 silently meant torch's default, -1 a torch error per photo
        for name, value in (("max_faces", self.max_faces), ("threads", self.threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                what = "all faces" if name == "max_faces" else "torch's default"
                raise ValueError(f"{name} must be None ({what}) or an integer of at least 1, got {value!r}")
        score = self.min_landmark_score
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not 0.0 <= score <= 1.0:  # also NaN
            raise ValueError(f"min_landmark_score must be a number in [0, 1] (a landmarker score), got {score!r}")


class Reconstructor:
    """Detect, align, fit.  ``model``: "default" (embedded), a path to ``BFM_model_front.mat`` (or
    its folder), or a MorphableModel; ``checkpoint``: an R-Net checkpoint (either published format),
    whose answer the fitter then refines; ``device``: where the networks run (MTCNN, R-Net); the
    landmarker, the alignment and the fit run on the CPU, so a given MorphableModel must be there."""

    def __init__(self, model: str | Path | MorphableModel = "default", checkpoint: str | Path | None = None,
                 device: str | torch.device = "cpu", config: ReconstructorConfig = ReconstructorConfig()):
        if not isinstance(config, ReconstructorConfig):
            raise TypeError(f"config must be a ReconstructorConfig, got {type(config).__name__}")
        if not isinstance(model, (str, os.PathLike, MorphableModel)):
            raise TypeError(f"model must be 'default', a path to a face model or a MorphableModel, got "
                            f"{type(model).__name__}")
        self.device = resolve_device(device)
        if self.device.type == "mps":
            raise ValueError(f"{device}: MTCNN's float64 summed-area tables cannot run on MPS (it has no float64); "
                             "use cpu")
        if isinstance(model, MorphableModel) and model.mean_shape.device.type != "cpu":
            raise ValueError(f"the fit runs on the CPU, and this model is on {model.mean_shape.device}: pass model.cpu() "
                             "(device= places the networks)")
        self.config = config
        self.model = model if isinstance(model, MorphableModel) else load_model(model)
        self.model_name = model.name if isinstance(model, MorphableModel) else str(model)
        self.landmarker = create_landmarker(config.landmarker)
        self.detector = FaceFinder.create(MTCNN.pretrained(config.detector).to(self.device), self.landmarker,
                                          config.finder)
        self.dense = _dense_correspondence(self.model) if config.landmarker == "mediapipe" else None
        self.hidden_vertices = annotation_vertices(self.model) if config.annotation_keypoints else None
        self.rnet = None
        if checkpoint is not None:
            from .nets import load_rnet, prepare_for_inference
            rnet = load_rnet(checkpoint, device=self.device)
            if rnet.layout != self.model.layout:
                raise ValueError(f"checkpoint {checkpoint} predicts coefficients {rnet.layout}, but model "
                                 f"{self.model_name!r} has {self.model.layout}; pass the matching model file")
            self.rnet = prepare_for_inference(rnet, precision=config.rnet_precision)

    def reconstruct(self, image: str | Path | torch.Tensor) -> list[FaceReconstruction]:
        """All faces of one photo (a path, a (3, H, W) float tensor in [0, 1], or what ``io.read_image``
        reads: a PIL image, bytes, a uint8 array), most prominent (largest,
        most central) first (``MTCNNConfig.rank_by``)."""
        with self._threads():
            return self._reconstruct(image)

    def _threads(self):
        return torch_threads(self.config.threads) if self.config.threads else contextlib.nullcontext()

    def _reconstruct(self, image) -> list[FaceReconstruction]:
        photo = photo_tensor(image)
        detections = self.detector.detect(photo.to(self.device))
        if self.config.max_faces is not None:
            detections = detections[: self.config.max_faces]
        if not detections:
            return []
        return self._reconstruct_detections(photo, detections)

    def reconstruct_set(self, photos: list, names: list[str] | None = None, config=None, appearance: bool = True):
        """Photos of one person -> ``image_set.IdentityReconstruction`` (one shared identity).
        ``config`` (``image_set.SetConfig``) defaults to one with this reconstructor's
        ``annotation_keypoints``."""
        from .image_set import SetConfig, reconstruct_set
        config = config or SetConfig(annotation_keypoints=self.config.annotation_keypoints)
        with self._threads():  # as reconstruct: the config's thread count
            return reconstruct_set(self, photos, names, config, appearance)

    def network_answers(self, crops: torch.Tensor) -> Coefficients:
        """R-Net's coefficients (float32, CPU) for (B, 3, 224, 224) aligned crops; needs a checkpoint."""
        if self.rnet is None:
            raise ValueError("no R-Net: pass checkpoint=PATH to Reconstructor")
        with torch.no_grad():
            return self.rnet(crops.to(self.device)).to("cpu", torch.float32)

    def reconstruct_detections(self, photo: torch.Tensor, detections: list[Detection]) -> list[FaceReconstruction]:
        """Fit the given detections of one photo (a batch of faces; the photo as ``reconstruct``
        takes it); [] for no detections."""
        photo = photo_tensor(photo)  # checked as reconstruct checks it: a 0-255 photo failed deep inside
        detections = [detections] if isinstance(detections, Detection) else list(detections)
        if not all(isinstance(d, Detection) for d in detections):
            raise TypeError("detections must be a list of Detection (e.g. Reconstructor.detector.detect(photo))")
        if not detections:
            return []
        with self._threads():
            return self._reconstruct_detections(photo, detections)

    def _reconstruct_detections(self, photo, detections) -> list[FaceReconstruction]:
        height, width = photo.shape[-2:]
        marks = [landmarks_of(self.landmarker, photo, detection) for detection in detections]
        look = self.detector.second_look(photo, detections, marks, self.config.min_landmark_score)
        detections, marks = look.detections, look.marks
        crops, alignments = [], []
        for detection in detections:
            crop, alignment, _ = align(photo, detection.landmarks5)
            crops.append(crop)
            alignments.append(alignment)
        crops = torch.stack(crops)
        landmarks = torch.stack([a.to_crop(m.ibug68.double()) for a, m in zip(alignments, marks)]).float()
        weights = None
        lost = [m.score < self.config.min_landmark_score for m in marks]
        if any(lost):
            weights = LANDMARK_WEIGHTS.expand(len(marks), -1).clone()
            for i in (i for i, is_lost in enumerate(lost) if is_lost):
                five = alignments[i].to_crop(detections[i].landmarks5.double()).float()
                proposal = look.proposals[i]
                blaze = None if proposal is None else alignments[i].to_crop(proposal.keypoints[:4].double()).float()
                landmarks[i], weights[i] = detector_targets(five, blaze)
        dense = {}
        if self.dense is not None and self.config.dense:
            # all points at yaw 0 (summing to 68); the fit drops the outline once it knows the yaw
            dense_weights = point_weights(self.dense, torch.zeros(len(marks))).float()
            dense = dict(dense=torch.stack([a.to_crop(m.points.double()) for a, m in zip(alignments, marks)]).float(),
                         dense_vertex_ids=self.dense.vertex_ids, dense_contour=self.dense.contour,
                         dense_weights=dense_weights * torch.tensor([0.0 if is_lost else 1.0 for is_lost in lost])[:, None])
        targets = FitTargets(crops=crops, landmarks=landmarks, landmark_weights=weights, **dense)
        initial = None if self.rnet is None else self.network_answers(crops)
        result: FitResult = fit_faces(self.model, targets, self.config.fit, initial)
        cameras = Camera.crop().for_photo(Alignment.stack(alignments), width, height)
        points68 = output_keypoints(self.model, result.coefficients, self.hidden_vertices)
        projected = cameras.project(points68)
        faces = []
        for i, (detection, alignment, mark) in enumerate(zip(detections, alignments, marks)):
            camera = Camera(cameras.K[i], width, height, cameras.distance)
            faces.append(FaceReconstruction(
                model=self.model, image_size=(width, height), detection=detection, alignment=alignment,
                landmarks=mark, coefficients=result.coefficients[i],
                albedo=None if result.albedo is None else result.albedo[i], camera=camera,
                landmarks68=projected[i], landmarks68_model=points68[i], landmark_error=float(result.landmark_error[i]),
                flags=result.flags[i] + _detector_flags(detection, look.found_again[i])
                + _landmark_flags(mark, lost[i], look.proposals[i] is not None)))
        return faces


def _detector_flags(detection: Detection, second_look: bool) -> tuple[str, ...]:
    if detection.detector != "mtcnn":
        return (f"found by the second detector ({detection.detector}; MTCNN found no face in the photo): "
                "box and 5 points from the landmarker",)
    if second_look:
        return ("landmarker lost the face at MTCNN's box and found it at the second detector's: "
                "5 points from the landmarker",)
    return ()


def _landmark_flags(mark: LandmarkResult, lost: bool, both_detectors: bool = False) -> tuple[str, ...]:
    """What a user should know about where a face's landmarks came from."""
    if lost:
        points = "MTCNN's 5 points and BlazeFace's 4, averaged" if both_detectors else "the detector's 5 points"
        return (f"landmarker lost the face (score {mark.score:.3f}): fitted to {points}",)
    if mark.stretch != 1.0:
        return (f"landmarks found on the photo stretched sideways ({mark.backend}, score {mark.score:.3f}): "
                "a strongly turned face",)
    return ()


def _dense_correspondence(model):
    """The MediaPipe-468 correspondence for ``model``, or None (with a warning: the fit is less
    accurate without it) where its packaged data file cannot be read."""
    try:
        from .detect.correspondence import dense_correspondence
        return dense_correspondence(model)
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        warnings.warn(f"the dense MediaPipe correspondence is unavailable ({type(exc).__name__}: {exc}); fitting "
                      "the 68 points only, less accurately (reinstall deep3dface)", stacklevel=3)
        return None
