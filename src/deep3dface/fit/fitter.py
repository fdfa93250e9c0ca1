"""The analysis-by-synthesis fitter: stages declared as data, run in order on a batch of faces.

Everything here works in the 224×224 crop of Deep3D's alignment and its camera (``Camera.crop()``),
so the coefficients mean what the reference's mean: the photo camera follows from the Alignment.

Stages (each can be switched off by setting it to ``None`` in ``FitConfig``):

1. ``LandmarkStage``: pose, identity and expression from 2D landmarks by regularised
   Levenberg–Marquardt (``landmark_fit``), in rounds.  After each round the jaw-line points whose
   model vertices face away from the camera get ``hidden_contour_weight``: a 2D landmarker puts
   them on the visible outline, while the 3D point they name is hidden behind the face.  The fitted
   3D jaw, projected, is then the answer there ("3D-style" landmarks, as AFLW2000-3D annotates).
   Faces the fit finds turned beyond ``yaw_knee`` get one more round with a prior on a larger
   yaw: 2D landmarks see a turned face as turned less than it is (``LandmarkStage.yaw_gain``).
   The 68 model vertices stay fixed: sliding the visible jaw's to the silhouette ("landmark
   marching") measured worse on 25 AFLW2000-3D dev photos (NME 2.93 / 5.62 % at |yaw| 0-30 / 30-60
   against 2.85 / 5.35), since AFLW2000-3D annotates the fixed vertices' projection.
2. ``AppearanceStage``: SH lighting and albedo in closed form (``appearance``): the albedo basis
   where the model has one, else a regularised per-vertex albedo; alternated a few rounds.
3. ``PhotometricStage``: all of it refined together by Adam on the paper's loss (photometric over
   the rendered face region weighted by skin attention, landmarks, regularisation, gamma), rendered
   with the differentiable rasteriser.  Off unless ``iterations > 0``.

Every stage is batched over faces, deterministic and guarded: non-finite results fall back to
the previous stage's values and are reported in ``FitResult.flags``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..camera import Camera
from ..morphable.model import MorphableModel
from ..morphable.shading import irradiance
from ..threads import torch_threads
from ..types import Coefficients
from .appearance import albedo_normal_equations, estimate_albedo, estimate_lighting, sample_photo, solve_with_prior
from .landmark_fit import (DENSE_WEIGHT, LAMBDA_EXP, LAMBDA_ID, LAMBDA_SYMMETRY, YAW_GAIN, YAW_KNEE, YAW_PRIOR_WEIGHT,
                           fit_landmarks, identity_precision, yaw_prior)
from .keypoint_residuals import JAW, facing_camera
from .losses import LANDMARK_WEIGHTS
from .vertex_evidence import albedo_operators, albedo_weights, skin_weights, vertex_weights


@dataclass(frozen=True)
class LandmarkStage:
    """Pose + identity + expression from landmarks (LM; see ``landmark_fit``)."""

    iterations: int = 12           # LM iterations per round
    rounds: int = 3                # refits after re-weighting hidden contour points
    hidden_contour_weight: float = 0.0
    visible_cosine: float = 0.15   # cos(normal, view) above which a jaw point counts as visible
    lambda_id: float = LAMBDA_ID
    lambda_exp: float = LAMBDA_EXP
    lambda_symmetry: float = LAMBDA_SYMMETRY  # the identity prior's extra weight on asymmetry (``landmark_fit``)
    dense_weight: float = DENSE_WEIGHT  # weight of the dense points (their weights sum to 68) against the 68
    contour_max_yaw: float = 30.0  # dense outline points count only while the fitted |yaw| is below this
    # the landmarks' yaw compression corrected for faces turned beyond ``yaw_knee`` (``landmark_fit.yaw_prior``,
    # where the defaults are measured) in ``yaw_rounds`` more rounds for those faces only; 0 switches it off
    yaw_gain: float = YAW_GAIN
    yaw_knee: float = YAW_KNEE
    yaw_prior_weight: float = YAW_PRIOR_WEIGHT
    yaw_rounds: int = 1            # 2 gave the same NME (30-60: 4.47, 60-90: 11.84)


@dataclass(frozen=True)
class AppearanceStage:
    """SH lighting and albedo from the photo, geometry fixed (closed form)."""

    rounds: int = 2
    smoothness: float = 0.5
    symmetry: float = 0.5
    prior_weight: float = 0.02
    grazing_cosine: float = 0.2    # vertices seen more obliquely than this get no data weight


@dataclass(frozen=True)
class PhotometricStage:
    """Joint refinement on the paper's loss with the differentiable renderer (Adam)."""

    iterations: int = 0
    # Adam moves every coefficient by ~lr per early step; at 0.01 the first ~10 steps raised the
    # loss from the landmark + closed-form start (0.0658 -> 0.0785 on a dev photo) and short runs
    # returned the start unchanged; at 0.001 it fell from the first steps.  At 40 iterations both
    # gave the same NME (84 AFLW2000-3D dev photos, balanced 4.962 / 4.959, 4.973 without the stage)
    learning_rate: float = 0.001
    photometric: float = 1.92
    landmark: float = 1.6e-3
    regularisation: float = 3e-4
    gamma: float = 10.0
    reflectance: float = 5.0   # flattens a basis albedo over the skin (a per-vertex albedo is held here)


@dataclass(frozen=True)
class FitConfig:
    landmarks: LandmarkStage | None = field(default_factory=LandmarkStage)
    appearance: AppearanceStage | None = field(default_factory=AppearanceStage)
    photometric: PhotometricStage | None = field(default_factory=PhotometricStage)


@dataclass(frozen=True, eq=False)
class FitTargets:
    """What the fitter fits to, in crop pixels (corner-origin, y down) of the 224 crop.

    crops:          (B, 3, 224, 224) float RGB in [0, 1]
    landmarks:      (B, 68, 2) iBUG-68 points (2D-style: on the visible outline for profiles)
    dense:          (B, K, 2) extra points with model vertex ids ``dense_vertex_ids`` (K,), or None
    dense_weights:  (B, K) per point weights (0 excludes), or None
    dense_contour:  (K,) bool, points on the face outline (they slide over the surface as the head
                    turns: used only while the fit's |yaw| < ``LandmarkStage.contour_max_yaw``)
    landmark_weights: (B, 68) per-point weights replacing the paper's ``LANDMARK_WEIGHTS``, or None
                    (e.g. ``five_point_targets``' for a face the landmarker lost)
    """

    crops: torch.Tensor
    landmarks: torch.Tensor
    dense: torch.Tensor | None = None
    dense_vertex_ids: torch.Tensor | None = None
    dense_weights: torch.Tensor | None = None
    dense_contour: torch.Tensor | None = None
    landmark_weights: torch.Tensor | None = None


#: iBUG-68 rows that stand in for a detector's 5 points (MTCNN order: image-left eye centre,
#: image-right eye centre, nose tip, mouth corners): both corners of an eye aim at its centre, so
#: their midpoint lands there.
FIVE_POINT_ROWS = ((36, 0), (39, 0), (42, 1), (45, 1), (30, 2), (48, 3), (54, 4))


def five_point_targets(five: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(5, 2) detector points (crop pixels) -> (68, 2) targets and (68,) weights (1 on the seven
    stand-in rows, 0 elsewhere): the fallback when the landmarker has not found the face."""
    targets = torch.zeros(68, 2, dtype=five.dtype)
    weights = torch.zeros(68, dtype=five.dtype)
    for row, point in FIVE_POINT_ROWS:
        targets[row] = five[point]
        weights[row] = 1.0
    return targets, weights


#: iBUG-68 rows that stand in for BlazeFace's first four keypoints (``detect.blazeface``: the
#: subject's right eye, which is image left, left eye, nose tip, mouth centre).
BLAZEFACE_ROWS = ((36, 0), (39, 0), (42, 1), (45, 1), (30, 2), (62, 3), (66, 3))


def detector_targets(five: torch.Tensor, blazeface: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``five_point_targets``, and with BlazeFace's keypoints (4, 2) (crop pixels) for the same
    face their stand-in rows too, the two detectors' points averaged where both give one (the eyes
    and the nose tip).  Each detector errs on its own on a profile the landmarker loses: on the 13
    such AFLW2000-3D dev faces both detectors find, the fitted NME is 18.5 % with MTCNN's points,
    15.8 with BlazeFace's, 14.6 with their average (11 of 13 better than MTCNN's alone)."""
    targets, weights = five_point_targets(five)
    if blazeface is None:
        return targets, weights
    sums, counts = targets * weights[:, None], weights.clone()
    for row, point in BLAZEFACE_ROWS:
        sums[row] += blazeface[point].to(sums)
        counts[row] += 1.0
    seen = counts > 0
    targets = torch.where(seen[:, None], sums / counts.clamp(min=1.0)[:, None], targets)
    return targets, seen.to(weights)


def _base_weights(targets: FitTargets) -> torch.Tensor:
    batch = targets.landmarks.shape[0]
    if targets.landmark_weights is not None:
        return targets.landmark_weights.to(targets.landmarks).clone()
    return LANDMARK_WEIGHTS.to(targets.landmarks).expand(batch, -1).clone()


@dataclass(frozen=True, eq=False)
class FitResult:
    coefficients: Coefficients        # (B) rows, crop camera
    albedo: torch.Tensor | None       # (B, N, 3) per-vertex albedo (models without a basis), else None
    landmark_error: torch.Tensor      # (B,) mean distance in crop pixels to the weighted targets
    landmark_weights: torch.Tensor    # (B, 68) the weights the last landmark round used
    flags: tuple[tuple[str, ...], ...]  # per face: what went wrong and was recovered from


def fit_faces(model: MorphableModel, targets: FitTargets, config: FitConfig = FitConfig(),
              initial: Coefficients | None = None, threads: int = 1) -> FitResult:
    """Run the configured stages on a batch of faces; ``initial`` (e.g. R-Net's answer) seeds them.
    ``threads``: torch threads while fitting (see ``deep3dface.threads``)."""
    with torch_threads(threads):
        return _fit_faces(model, targets, config, initial)


def _fit_faces(model, targets, config, initial) -> FitResult:
    camera = Camera.crop()
    batch = targets.landmarks.shape[0]
    flags: list[list[str]] = [[] for _ in range(batch)]
    coeffs = initial if initial is not None else model.zero_coefficients(batch)
    weights68 = _base_weights(targets)
    albedo = None
    if config.landmarks is not None:
        coeffs, weights68 = _landmark_stage(model, targets, config.landmarks, camera, initial, flags)
    if config.appearance is not None:
        coeffs, albedo = _appearance_stage(model, targets, config.appearance, camera, coeffs, flags)
    if config.photometric is not None and config.photometric.iterations > 0:
        from .photometric import refine_photometric  # the renderer-based stage; imported on demand
        coeffs, albedo = refine_photometric(model, targets, config.photometric, camera, coeffs, albedo,
                                            weights68, flags)
        if config.appearance is not None:  # the geometry moved: colours belong to other vertices now
            coeffs, albedo = _appearance_stage(model, targets, config.appearance, camera, coeffs, flags)
    error = landmark_error(model, coeffs, targets.landmarks, weights68, camera)
    return FitResult(coeffs, albedo, error, weights68, tuple(tuple(f) for f in flags))


# -- stages ---------------------------------------------------------------------------------------

def _landmark_stage(model, targets, stage, camera, initial, flags):
    weights68 = _base_weights(targets)
    coeffs = initial
    fitted = None
    for _ in range(max(stage.rounds, 1)):
        fitted, weights68 = _landmark_round(model, targets, weights68, stage, camera, coeffs, flags)
        coeffs = fitted
    if stage.yaw_gain > 0 and stage.yaw_rounds > 0:
        # faces are independent: only the turned ones are refitted
        turned = torch.nonzero(torch.rad2deg(fitted.angle[:, 1].double().abs()) > stage.yaw_knee)[:, 0]
        if len(turned):
            sub, sub_flags = _select(targets, turned), [flags[i] for i in turned.tolist()]
            sub_fit, sub_w68 = fitted[turned], weights68[turned]
            sub_prior = yaw_prior(sub_fit.angle[:, 1], stage.yaw_gain, stage.yaw_knee, stage.yaw_prior_weight)
            for _ in range(stage.yaw_rounds):
                sub_fit, sub_w68 = _landmark_round(model, sub, sub_w68, stage, camera, sub_fit, sub_flags, sub_prior)
            vector = fitted.to_vector().index_copy(0, turned, sub_fit.to_vector().to(fitted.id))
            fitted = Coefficients.from_vector(vector, fitted.layout)
            weights68 = weights68.index_copy(0, turned, sub_w68.to(weights68))
    return fitted, weights68


def _select(targets: FitTargets, index: torch.Tensor) -> FitTargets:
    """The faces ``index`` of a batch of targets (shared fields stay shared)."""
    pick = lambda t: None if t is None else t[index]  # noqa: E731
    return replace(targets, crops=targets.crops[index], landmarks=targets.landmarks[index], dense=pick(targets.dense),
                   dense_weights=pick(targets.dense_weights), landmark_weights=pick(targets.landmark_weights))


def _landmark_round(model, targets, weights68, stage, camera, coeffs, flags, prior=None):
    """One LM fit from ``coeffs`` with the 68 points' ``weights68``, then those weights anew:
    the jaw keypoints the fit shows hidden get ``hidden_contour_weight``."""
    batch = targets.landmarks.shape[0]
    pixels, vertex_ids, weights = _landmark_system(model, targets, weights68, stage, coeffs)
    fitted = fit_landmarks(model, pixels, camera, weights, vertex_ids, stage.iterations,
                           stage.lambda_id, stage.lambda_exp, initial=coeffs, angle_prior=prior,
                           id_precision=identity_precision(model, stage.lambda_symmetry))
    fitted = _keep_finite(fitted, coeffs if coeffs is not None else model.zero_coefficients(batch), flags,
                          "landmark fit diverged")
    visible = facing_camera(model, fitted, stage.visible_cosine)
    weights68 = _base_weights(targets)
    weights68[:, JAW] = torch.where(visible[:, JAW], weights68[:, JAW],
                                    torch.full_like(weights68[:, JAW], stage.hidden_contour_weight))
    return fitted, weights68


def _landmark_system(model, targets, weights68, stage, coeffs):
    """Targets, vertex ids and weights of the 68 points plus the dense points, concatenated.
    Dense outline points are left out until a fit (``coeffs``) shows the face is near-frontal."""
    pixels, ids, weights = targets.landmarks, model.keypoints, weights68  # fixed vertices: the module note says why
    if targets.dense is not None and stage.dense_weight > 0:
        dense_w = targets.dense_weights if targets.dense_weights is not None else torch.ones_like(targets.dense[..., 0])
        if targets.dense_contour is not None:
            contour = targets.dense_contour.to(dense_w.device)
            if coeffs is None:
                frontal = torch.zeros(len(dense_w), dtype=torch.bool)
            else:
                frontal = coeffs.angle[:, 1].abs() * (180 / torch.pi) < stage.contour_max_yaw
            keep = ~contour[None] | frontal[:, None].to(contour.device)
            dense_w = dense_w * keep.to(dense_w)
        pixels = torch.cat([pixels, targets.dense], 1)
        ids = torch.cat([ids, targets.dense_vertex_ids.to(ids)])
        weights = torch.cat([weights, stage.dense_weight * dense_w], 1)
    return pixels, ids, weights


def _appearance_stage(model, targets, stage, camera, coeffs, flags):
    dtype = model.mean_shape.dtype
    with torch.no_grad():
        geometry = model(coeffs.to(dtype))
        screen = camera.screen(geometry.vertices)
        visibility = vertex_weights(model, geometry, screen, targets.crops.shape[-2:], stage.grazing_cosine)
        observed = sample_photo(targets.crops.to(dtype), screen[..., :2])
        skin = skin_weights(targets.crops, screen, visibility)
        weights = visibility * skin                           # the light: skin only
        albedo_data = albedo_weights(model, visibility, skin)  # the albedo: skin, and the eyes
        albedo = geometry.albedo
        gamma = coeffs.gamma
        tex = coeffs.tex
        for _ in range(max(stage.rounds, 1)):
            gamma = estimate_lighting(observed, albedo, geometry.normals, weights)
            light = irradiance(geometry.normals, gamma)
            if model.has_albedo_basis:
                tex = solve_with_prior(*albedo_normal_equations(model.albedo_basis, model.mean_albedo, observed,
                                                                light, albedo_data))
                albedo = model.albedo(tex)
            else:
                extras = albedo_operators(model.data)
                albedo = estimate_albedo(observed, light, albedo_data, extras.laplacian, extras.mirror,
                                         model.mean_albedo[None], stage.smoothness, stage.symmetry,
                                         stage.prior_weight).clamp(0.0, 1.0)
        fitted = coeffs.replace(gamma=gamma.to(coeffs.gamma), tex=tex.to(coeffs.tex))
        fitted = _keep_finite(fitted, coeffs, flags, "lighting estimate diverged")
        if model.has_albedo_basis:  # the albedo is model.albedo(tex), kept finite with tex above
            return fitted, None
        broken = ~torch.isfinite(albedo).flatten(1).all(1)
        albedo = torch.where(torch.isfinite(albedo), albedo, model.mean_albedo)
        for b in torch.nonzero(broken)[:, 0].tolist():  # that face's flag only
            flags[b].append("albedo estimate not finite; mean albedo used")
    return fitted, albedo


def landmark_error(model, coeffs, landmarks, weights, camera) -> torch.Tensor:
    """(B,) mean crop-pixel distance of the projected keypoints to the landmarks of weight > 0."""
    with torch.no_grad():
        projected = camera.project(model.posed_vertices(coeffs.to(model.mean_shape.dtype), model.keypoints))
        distance = (projected - landmarks.to(projected)).norm(dim=-1)
        w = (weights > 0).to(distance)
    return (distance * w).sum(1) / w.sum(1).clamp(min=1)


def _keep_finite(new: Coefficients, old: Coefficients, flags, message) -> Coefficients:
    vector, previous = new.to_vector(), old.to_vector().to(new.to_vector())
    ok = torch.isfinite(vector).all(1) & (vector.abs() < 1e4).all(1)
    if bool(ok.all()):
        return new
    for b in torch.nonzero(~ok)[:, 0].tolist():
        flags[b].append(message)
    return Coefficients.from_vector(torch.where(ok[:, None], vector, previous), new.layout)
