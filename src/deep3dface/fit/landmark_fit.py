"""Pose, identity and expression from 2D landmarks by regularised Levenberg–Marquardt.

The cost per face is ``Σ_i w_i‖π(R·X_i(c) + t) − p_i‖² + λ_id·idᵀ·P·id + λ_exp‖exp‖²`` where X_i(c) are
the model's landmark vertices and P = I + λ_sym·AᵀA also weighs the identity's left-right asymmetric
part (``identity_precision``; P = I gives the paper's ‖id‖²).  Only those vertices are evaluated (a K×3 slice of the bases), so a
full solve costs milliseconds.  λ follows the paper's weights: landmark 1.6e-3 on
``Σ w_i d_i² / 68`` against regularisation 3e-4·(1·‖id‖² + 0.8·‖exp‖²) gives λ_id = 12.75 and
λ_exp = 10.2 per unit of Σ w_i d_i² (pixels of the 224 crop).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..caching import per_object
from ..camera import Camera, project_with_jacobian
from ..morphable.geometry import rotation_derivatives, rotation_matrix
from ..morphable.data import ModelData
from ..morphable.model import MorphableModel
from ..morphable.topology import mirror_vertex_map
from ..types import Coefficients
from .rigid import solve_pose
from .solve import levenberg_marquardt

LAMBDA_ID = 3e-4 * 68 / 1.6e-3 * 1.0
LAMBDA_EXP = 3e-4 * 68 / 1.6e-3 * 0.8
#: Total weight of MediaPipe's dense points (through ``detect.correspondence``) against the 68
#: (weight 68 in all).  Fit-only on the AFLW2000-3D dev photos' cached landmarks, NME 0-30 / 30-60 /
#: 60+ (even / odd photos): 1.0 gave 2.29 / 2.37, 3.41 / 3.67, 9.34 / 10.64; 3.0 gives 2.23 / 2.31,
#: 3.40 / 3.61, 9.32 / 10.67 (2.0: 2.25 / 2.33, 3.39 / 3.62; 5.0 and 10.0 better at 0-30, worse at
#: 30-60).  On the same-person photos (benchmarks/identity.py) 3.0 also made single-photo
#: identities more consistent (ratio 0.723 -> 0.705, held-out residual 1.297 -> 1.264 px).
DENSE_WEIGHT = 3.0

#: 2D landmarks see a turned face as turned less than it is (MediaPipe's mesh, and the detector's
#: 5 points where the mesh lost the face): on the AFLW2000-3D dev photos the annotated |yaw|
#: exceeds the fitted one by 5-8 deg where the fit says 30-60 deg and by 11 where it says 60-70.
#: So a fitted |yaw| above YAW_KNEE is believed to be |yaw| + YAW_GAIN·(|yaw| − YAW_KNEE), held
#: by a prior of YAW_PRIOR_WEIGHT (per rad², against Σ w·d² in crop pixels) in one more round
#: (``yaw_prior``; the single-photo fitter's ``LandmarkStage``, the set fit's ``SetFitConfig``).
#: The gain was chosen from 0.3 / 0.45 / 0.6: best or level on both halves of the dev photos.
#: The identity prior's extra weight on the identity's left-right *asymmetric* part
#: (``identity_precision``).  Faces are nearly symmetric, and what a 2D landmark fit puts into the
#: asymmetric identity directions is mostly the landmarks' pose-dependent error (a turned face's
#: hidden side), so it differs from photo to photo of one person.  On the shared same-person sets
#: (benchmarks/identity.py, 12 people, 32 photos), 0 / 1 / 4 / 16 / 64 gave identity ratios (set)
#: 0.524 / 0.509 / 0.500 / 0.493 / 0.491, single-photo 0.705 / 0.675 / 0.655 / 0.642 / 0.622,
#: neutral-mesh ratios (set) 0.502 / 0.499 / 0.495 / 0.489 / 0.484, at a held-out landmark RMS of
#: 1.077 / 1.077 / 1.080 / 1.093 / 1.128 px: 4 takes most of the gain for 0.3 % of held-out
#: accuracy.  The 68 points barely move (AFLW2000-3D dev photos as one-photo sets, NME 0-30 / 30-60
#: / 60-90: 2.248 / 3.483 / 8.169 at 0, 2.251 / 3.485 / 8.172 at 4).
LAMBDA_SYMMETRY = 4.0

YAW_GAIN = 0.45
YAW_KNEE = 25.0
YAW_PRIOR_WEIGHT = 1e6


def yaw_prior(yaw: torch.Tensor, gain: float = YAW_GAIN, knee: float = YAW_KNEE,
              weight: float = YAW_PRIOR_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) fitted yaw (radians) -> ``angle_prior`` ((B, 3) angles, (B, 3) weights): the yaw of faces
    turned beyond ``knee`` degrees believed ``gain``·(|yaw| − knee) larger, pitch and roll free; faces
    turned less get no belief (weight 0)."""
    yaw = yaw.detach().double()
    degrees = torch.rad2deg(yaw.abs())
    believed = torch.deg2rad(degrees + gain * (degrees - knee).clamp_min(0)).clamp(max=torch.pi / 2)
    target = torch.zeros(len(yaw), 3, dtype=torch.float64)
    target[:, 1] = believed * yaw.sign()
    weights = torch.zeros(len(yaw), 3, dtype=torch.float64)
    weights[:, 1] = torch.where(degrees > knee, weight, 0.0)
    return target, weights


@per_object()
def _identity_asymmetry(data: ModelData) -> torch.Tensor:
    mirror, _ = mirror_vertex_map(data.mean_shape)
    n, k = len(data.mean_shape), data.id_basis.shape[1]
    basis = data.id_basis.reshape(n, 3, k)
    asymmetric = ((basis - basis[mirror] * np.array([-1.0, 1.0, 1.0])[:, None]) / 2).reshape(3 * n, k)
    gram = asymmetric.T @ asymmetric
    largest = float(np.linalg.eigvalsh(gram).max()) if gram.size else 0.0
    return torch.as_tensor(gram / largest if largest > 0 else gram)


def identity_precision(model: MorphableModel, lambda_symmetry: float = LAMBDA_SYMMETRY) -> torch.Tensor:
    """(K_id, K_id) float64 matrix P of the identity prior ``λ_id·idᵀ·P·id``: I + ``lambda_symmetry``·AᵀA,
    A the identity basis's left-right asymmetric part (each vertex's offset minus its mirror
    vertex's with x flipped, halved; ``morphable.topology.mirror_vertex_map``), AᵀA scaled so that
    a unit step along the most asymmetric direction costs ``lambda_symmetry`` more.  0 gives I."""
    eye = torch.eye(model.layout.id, dtype=torch.float64)
    if lambda_symmetry == 0:
        return eye
    if not (lambda_symmetry > 0 and np.isfinite(lambda_symmetry)):
        raise ValueError(f"lambda_symmetry must be a finite number >= 0, got {lambda_symmetry!r}")
    return eye + lambda_symmetry * _identity_asymmetry(model.data)


def fit_landmarks(model: MorphableModel, pixels: torch.Tensor, camera: Camera, weights: torch.Tensor | None = None,
                  vertex_ids: torch.Tensor | None = None, iterations: int = 10,
                  lambda_id: float = LAMBDA_ID, lambda_exp: float = LAMBDA_EXP,
                  initial: Coefficients | None = None,
                  angle_prior: tuple[torch.Tensor, torch.Tensor] | None = None,
                  id_precision: torch.Tensor | None = None) -> Coefficients:
    """(B, K, 2) target pixels of the model vertices ``vertex_ids`` ((K,) shared or (B, K) per face;
    default: the 68 keypoints)
    -> Coefficients with id, exp, angle and trans fitted (tex and gamma zero, or ``initial``'s).

    Without ``initial`` the pose starts from a closed-form rigid fit of the mean shape; with it
    (e.g. R-Net's answer or a previous round) every fitted group starts from its values.
    ``angle_prior``: ((B, 3) angles, (B, 3) weights) adds ``Σ w·(angle − prior)²`` (radians², in
    units of Σ w_i d_i²) to the cost: a pose belief from elsewhere (a previous frame, a yaw model).
    ``id_precision``: the identity prior's matrix (``identity_precision``; default I: ``λ_id‖id‖²``)."""
    vertex_ids = model.keypoints if vertex_ids is None else vertex_ids
    batch = pixels.shape[0]
    dtype = torch.float64
    problem = landmark_problem(model, pixels, camera, weights, vertex_ids, lambda_id, lambda_exp, angle_prior,
                               id_precision)
    if initial is None:
        angles, trans = solve_pose(problem.mean.expand(batch, -1, -1), problem.data[0], problem.camera, problem.weights)
        start = torch.cat([angles, trans, torch.zeros(batch, problem.num_coefficients, dtype=dtype)], 1)
        out = model.zero_coefficients(batch)
    else:
        start = torch.cat([initial.angle, initial.trans, initial.id, initial.exp], 1).to(dtype)
        out = initial
    params = levenberg_marquardt(problem.residuals, start, problem.data, iterations=iterations,
                                 jacobian=problem.jacobian)
    n_id = model.id_basis.shape[1]
    cast = lambda t: t.to(out.id)  # noqa: E731
    return out.replace(angle=cast(params[:, :3]), trans=cast(params[:, 3:6]), id=cast(params[:, 6:6 + n_id]),
                       exp=cast(params[:, 6 + n_id:]))


@dataclass(frozen=True, eq=False)
class LandmarkProblem:
    """``fit_landmarks``' least-squares problem over params (B, 6 + n) = [angles, trans, id, exp]:
    ``residuals(params, *data)`` (B, R) and its closed-form ``jacobian(params, *data)`` (B, R, 6 + n)."""

    residuals: Callable[..., torch.Tensor]
    jacobian: Callable[..., torch.Tensor]
    data: tuple                # per-face tensors, batch first: target pixels, sqrt weights, ...
    mean: torch.Tensor         # (1 or B, K, 3) mean shape at the vertices
    camera: Camera             # float64
    weights: torch.Tensor      # (B, K)
    num_coefficients: int      # n = n_id + n_exp


def landmark_problem(model: MorphableModel, pixels: torch.Tensor, camera: Camera, weights: torch.Tensor | None,
                     vertex_ids: torch.Tensor, lambda_id: float, lambda_exp: float,
                     angle_prior: tuple[torch.Tensor, torch.Tensor] | None = None,
                     id_precision: torch.Tensor | None = None) -> LandmarkProblem:
    """The cost of ``fit_landmarks`` as residuals and their Jacobian (see ``LandmarkProblem``)."""
    batch, k = pixels.shape[:2]
    dtype = torch.float64
    # per-face vertex ids (B, K) let contour points slide along the silhouette (``fitter``); shared
    # ids keep the bases out of the per-face data: jacrev's vmap over residuals would otherwise
    # carry a (B, 3K, n) copy per residual row (tens of GB for hundreds of faces)
    shared = vertex_ids.ndim == 1
    ids = vertex_ids[None] if shared else vertex_ids
    rows = (3 * ids[..., None] + torch.arange(3, device=ids.device)).reshape(ids.shape[0], -1)
    mean = model.mean_shape[ids].to(dtype)                 # (1 or B, K, 3)
    id_basis = model.id_basis[rows].to(dtype)             # (1 or B, 3K, n_id)
    exp_basis = model.exp_basis[rows].to(dtype)           # (1 or B, 3K, n_exp)
    n_id, n_exp = id_basis.shape[-1], exp_basis.shape[-1]
    cam = Camera(camera.K.double(), camera.width, camera.height, camera.distance)
    pixels = pixels.double()
    weights = torch.ones(batch, k, dtype=dtype) if weights is None else weights.double()
    root = weights.sqrt()
    # the priors as residuals reg·coeff, regᵀreg = blockdiag(λ_id·P, λ_exp·I) (P = LLᵀ: reg's id block is √λ_id·Lᵀ)
    id_root = (torch.eye(n_id, dtype=dtype) if id_precision is None
               else torch.linalg.cholesky(id_precision.to(dtype)).T)
    reg = torch.block_diag(lambda_id ** 0.5 * id_root, lambda_exp ** 0.5 * torch.eye(n_exp, dtype=dtype))

    prior = angle_prior is not None
    if prior:
        prior_angles, prior_root = angle_prior[0].to(dtype), angle_prior[1].to(dtype).clamp_min(0).sqrt()

    def residuals(params, target, sqrt_w, *rest):
        if prior:
            prior_a, prior_w, *rest = rest
        mean_k, id_k, exp_k = rest if rest else (mean, id_basis, exp_basis)
        angles, trans = params[:, :3], params[:, 3:6]
        coeff = params[:, 6:]
        offset = (id_k @ coeff[:, :n_id, None] + exp_k @ coeff[:, n_id:, None])[..., 0]
        points = mean_k + offset.view(-1, k, 3)
        posed = points @ rotation_matrix(angles).transpose(1, 2) + trans[:, None]
        reprojection = ((cam.project(posed) - target) * sqrt_w[..., None]).flatten(1)
        terms = [reprojection, coeff @ reg.T]
        if prior:
            terms.append((angles - prior_a) * prior_w)
        return torch.cat(terms, 1)

    def jacobian(params, target, sqrt_w, *rest):
        """Closed form of d residuals / d params (B, R, 6 + n): what ``autodiff_jacobian`` gives
        (tests hold them equal), ~3x faster than forward-mode autodiff through the projection."""
        if prior:
            prior_a, prior_w, *rest = rest
        mean_k, id_k, exp_k = rest if rest else (mean, id_basis, exp_basis)
        angles, trans, coeff = params[:, :3], params[:, 3:6], params[:, 6:]
        count = params.shape[0]
        basis = torch.cat([id_k, exp_k], -1).view(id_k.shape[0], k, 3, -1)              # (1 or B, K, 3, n)
        points = mean_k + torch.einsum("bkcn,bn->bkc", basis.expand(count, -1, -1, -1), coeff)
        rotation = rotation_matrix(angles)
        posed = points @ rotation.transpose(1, 2) + trans[:, None]
        K = cam.K.to(posed) if cam.K.ndim == 3 else cam.K.to(posed).expand(count, 3, 3)
        d_uv = project_with_jacobian(posed, K, cam.distance)[1] * sqrt_w[..., None, None]  # (B, K, 2, 3)
        d_angles = torch.einsum("baij,bkj->bkia", rotation_derivatives(angles), points)  # (B, K, 3, 3)
        d_coeff = torch.einsum("bij,bkjn->bkin", rotation, basis.expand(count, -1, -1, -1))
        reprojection = torch.cat([d_uv @ d_angles, d_uv, d_uv @ d_coeff], -1).flatten(1, 2)
        blocks = [reprojection, torch.cat([torch.zeros(count, len(reg), 6, dtype=dtype),
                                           reg.expand(count, -1, -1)], 2)]
        if prior:
            blocks.append(torch.cat([torch.diag_embed(prior_w), torch.zeros(count, 3, 3 + len(reg), dtype=dtype)], 2))
        return torch.cat(blocks, 1)

    data = (pixels, root) + ((prior_angles, prior_root) if prior else ()) + (() if shared else (mean, id_basis, exp_basis))
    return LandmarkProblem(residuals, jacobian, data, mean, cam, weights, n_id + n_exp)
