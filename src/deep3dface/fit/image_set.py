"""One identity from several photos: a joint landmark fit with shared identity coefficients.

P photos of one person share the identity coefficients ``id``; each photo keeps its own pose
(angle, trans) and expression ``exp``.  The cost is

    Σ_p Σ_k w_pk ‖π(R_p·X_k(id, exp_p) + t_p) − x_pk‖²  +  λ_id·idᵀ·P·id  +  Σ_p λ_exp‖exp_p‖²

in pixels of each photo's 224 crop (Deep3D's crop camera, one for all photos); P weighs the
identity's left-right asymmetric part more (``landmark_fit.identity_precision``).  The identity prior
is counted once, not once per photo: it is a prior on the person, and P photos are P times the
evidence (a MAP estimate; the single-photo fit is the P = 1 case and λ match ``landmark_fit``).

Solver: Levenberg–Marquardt on [id | pose_1, exp_1 | … | pose_P, exp_P] with the Schur complement
of the block-diagonal per-photo part (as in bundle adjustment): the linear system is
(K_id × K_id) plus P small (6 + K_exp) blocks, so a step costs O(P), and P = 50 stays milliseconds.

Per-photo confidence (the role of the paper's C-Net, which learns how much each photo should count):
``photo_confidence`` combines the landmarker's score, the head yaw (2D landmarks of a turned head are
less reliable, and the paper's C-Net learns the same preference) and the photo's residual after the
joint fit (iteratively reweighted: a photo the shared identity cannot explain counts less).  Jaw
points whose model vertex faces away from the camera get zero weight: a 2D landmarker puts them on
the visible outline, not where the named 3D point is.

Yaw: 2D landmarks see a turned head as turned less than it is.  As the single-photo fitter does, a
photo the joint fit finds turned beyond 25° is refitted in one more joint round under the belief
``landmark_fit.yaw_prior`` (``SetFitConfig.yaw_gain``).  On the 120 AFLW2000-3D dev photos turned
beyond 30° that a one-photo set keeps (of 141), this took the mean fitted |yaw| from 40.4 / 56.5° to
47.4 / 70.5° (annotated 44.8 / 72.4°, bins 30-60 / 60+) and the 68 points' NME from 3.70 / 8.99 to
3.54 / 8.26 % (the single-photo pipeline: 3.51 / 8.42).

Points: the 68 iBUG points and, when given (``DensePoints``), MediaPipe's 468 points at their
corresponding vertices, weighted as the single-photo pipeline weights them (their total equal to
the 68's; outline points only on faces turned less than 30°).  Measured on the shared same-person
sets (benchmarks/identity.py): within/between identity distance 0.64 -> 0.60 for sets, 0.82 -> 0.77
for single photos, and a held-out photo's 536 points are predicted better (median 1.49 -> 1.37 px).

``robust_points`` (off by default) reweights each point in the joint rounds by how far its residual
departs from the same point's mean residual over the person's photos (Cauchy, the photo's median
departure as scale; each photo's total weight kept): an occluded or misplaced point in one photo
stops pulling the shared identity, a landmark definition shared by all photos stays.  It lowers the
set ratio further (0.60 -> 0.55) but predicts held-out photos worse (median 1.37 -> 1.41 px), so
the consistency it buys is partly lost detail: not the default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..camera import Camera, project_with_jacobian
from ..detect.correspondence import point_weights
from ..morphable.geometry import rotation_derivatives, rotation_matrix
from ..morphable.model import MorphableModel
from ..types import Coefficients
from ..threads import torch_threads
from .landmark_fit import (DENSE_WEIGHT, LAMBDA_EXP, LAMBDA_ID, LAMBDA_SYMMETRY, YAW_GAIN, YAW_KNEE, YAW_PRIOR_WEIGHT,
                           identity_precision, yaw_prior)
from .losses import LANDMARK_WEIGHTS
from .keypoint_residuals import landmark_rms, point_residuals, visible_points  # noqa: F401 (public here too)
from .rigid import orthographic_pose

#: Cauchy scale in robust standard deviations (95 % efficiency under Gaussian noise, Holland & Welsch
#: 1977), and the median 2D distance of a point with N(0, σ²) coordinates in σ (Rayleigh: √(2 ln 2))
CAUCHY_SCALE = 2.385
RAYLEIGH_MEDIAN = 1.1774


@dataclass(frozen=True)
class SetFitConfig:
    """Settings of ``fit_identity``; defaults measured on the shared same-person sets."""

    iterations: int = 20            # LM iterations per reweighting round
    rounds: int = 3                 # joint fits, reweighting photos and hidden jaw points in between
    lambda_id: float = LAMBDA_ID    # identity prior, counted once per person
    lambda_exp: float = LAMBDA_EXP  # expression prior, per photo
    residual_scale: float = 2.0     # crop px: Cauchy scale of a photo's RMS landmark residual
    min_yaw_weight: float = 0.3     # weight of a profile photo relative to a frontal one
    visible_cosine: float = 0.0     # a jaw point counts when its normal's z (towards camera) exceeds this
    dense_weight: float = DENSE_WEIGHT  # total weight of the dense points relative to the 68 (as the pipeline's fit)
    contour_max_yaw: float = 30.0   # degrees: dense outline points count only on faces turned less than this
    robust_points: bool = False     # reweight points by their departure from the person's other photos (notes)
    lambda_symmetry: float = LAMBDA_SYMMETRY  # the identity prior's extra weight on asymmetry (``landmark_fit``)
    # each photo's yaw compression corrected as the single-photo fitter does (``landmark_fit.yaw_prior``), in
    # one more joint round; 0 switches it off
    yaw_gain: float = YAW_GAIN
    yaw_knee: float = YAW_KNEE
    yaw_prior_weight: float = YAW_PRIOR_WEIGHT


@dataclass(frozen=True, eq=False)
class DensePoints:
    """More landmarks at known model vertices: MediaPipe's 468 points (``detect.correspondence``)."""

    pixels: torch.Tensor            # (P, K, 2) crop pixels
    vertex_ids: torch.Tensor        # (K,) model vertices
    weights: torch.Tensor           # (K,) reliability of each point
    contour: torch.Tensor           # (K,) bool: face-outline points (they slide as the head turns)

    def point_weights(self, yaw: torch.Tensor | None, config: "SetFitConfig") -> torch.Tensor:
        """(P, K) fitting weights summing to ``68 · dense_weight`` per photo; outline points only
        where the fitted |yaw| (radians; None: not fitted yet) is below ``contour_max_yaw``
        (``detect.correspondence.point_weights``, which the single-photo pipeline uses too)."""
        yaw_degrees = (torch.full((self.pixels.shape[0],), math.inf, dtype=torch.float64) if yaw is None
                       else torch.rad2deg(yaw.double()))
        return point_weights(self, yaw_degrees, config.contour_max_yaw, 68.0 * config.dense_weight)

    def with_keypoints(self, pixels68: torch.Tensor, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 68, 2) keypoint targets -> (P, 68 + K, 2) targets and (68 + K,) vertex ids: the 68
        followed by the dense points, the layout ``with_weights`` and the set fits use."""
        return (torch.cat([pixels68.double(), self.pixels.double()], 1),
                torch.cat([keypoints, self.vertex_ids.to(keypoints)]))

    def with_weights(self, weights68: torch.Tensor, yaw: torch.Tensor | None, config: "SetFitConfig") -> torch.Tensor:
        """(P, 68) keypoint weights -> (P, 68 + K): followed by ``point_weights``."""
        return torch.cat([weights68, self.point_weights(yaw, config)], 1)

    def select(self, rows) -> "DensePoints":
        """The same points for a subset of the photos (``rows``: indices or a mask)."""
        return DensePoints(self.pixels[torch.as_tensor(rows)], self.vertex_ids, self.weights, self.contour)


@dataclass(frozen=True, eq=False)
class SetFit:
    """The joint fit of one person's photos.

    coefficients:   P rows (id identical in every row), crop camera
    photo_weights:  (P,) confidence in [0, 1] each photo had in the final round
    rms:            (P,) RMS landmark residual (crop px) under the shared identity
    single_rms:     (P,) RMS residual of each photo fitted alone (its own identity)
    single:         the single-photo fits (P rows)
    """

    coefficients: Coefficients
    photo_weights: torch.Tensor
    rms: torch.Tensor
    single_rms: torch.Tensor
    single: Coefficients

    @property
    def identity(self) -> torch.Tensor:
        return self.coefficients.id[0]

    @property
    def excess(self) -> torch.Tensor:
        """(P,) how much worse each photo fits the shared identity than its own (crop px, RMS)."""
        return (self.rms ** 2 - self.single_rms ** 2).clamp_min(0).sqrt()


@torch_threads(1)
def fit_identity(model: MorphableModel, pixels: torch.Tensor, camera: Camera, scores: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None, config: SetFitConfig = SetFitConfig(),
                 dense: DensePoints | None = None, initial: Coefficients | None = None) -> SetFit:
    """(P, 68, 2) crop-pixel landmarks of P photos (and the landmarker's (P,) scores, and optionally
    dense points) -> the robust joint fit; ``groups`` (P,) labels several people solved at once
    (default: one person).  Deterministic: the same input gives the same output bit for bit.
    Residuals and photo confidences are measured on the 68 points.

    ``initial`` (P rows, crop camera): each photo's network answer (R-Net's): the single-photo fits
    start from it, and the joint fit from the confidence-weighted average of its identities (the
    paper's image-set start), instead of from the single fits' identities."""
    count = pixels.shape[0]
    groups = torch.zeros(count, dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
    scores = torch.ones(count, dtype=torch.float64) if scores is None else torch.as_tensor(scores).double()
    base = LANDMARK_WEIGHTS.double().expand(count, -1)
    alone = torch.arange(count)
    targets, vertex_ids = (pixels, None) if dense is None else dense.with_keypoints(pixels, model.keypoints)

    def point_weights(weights68, coeffs):
        if dense is None:
            return weights68
        return dense.with_weights(weights68, None if coeffs is None else coeffs.angle[:, 1], config)

    robust = torch.ones(targets.shape[:2], dtype=torch.float64)
    precision = identity_precision(model, config.lambda_symmetry)

    def fit(weights68, g, start, photo=None, prior=None):
        w = point_weights(weights68, start) * robust * (1.0 if photo is None else photo[:, None])
        return fit_landmarks_set(model, targets, camera, w, g, config.iterations, config.lambda_id, config.lambda_exp,
                                 start, vertex_ids, angle_prior=prior, id_precision=precision)

    def point_robustness(coeffs, photo, visible):
        """Cauchy weights of each point from how far its residual departs from the same point's
        mean residual over the person's photos (a landmark definition that differs from the
        model's vertex is shared by all photos and stays; an occluded or misplaced point in one
        photo is not), the scale from the photo's median departure; rescaled so each photo's
        total data weight stays what the priors are calibrated for.  One photo alone: all 1."""
        if not config.robust_points:
            return robust
        w = point_weights(base * visible, coeffs) * photo[:, None]
        residuals = point_residuals(model, coeffs, targets, camera, vertex_ids)          # (P, K, 2)
        onehot = (groups[None] == groups[:, None]).double()                              # (P, P) same person
        mean = torch.einsum("pq,qk,qkc->pkc", onehot, w, residuals) / (onehot @ w).clamp_min(1e-12)[..., None]
        departure = (residuals - mean).norm(dim=-1)
        sigma = torch.stack([d[u].median() if u.any() else d.new_tensor(0.0) for d, u in zip(departure, w > 0)])
        cauchy = 1.0 / (1.0 + (departure / (CAUCHY_SCALE * sigma[:, None] / RAYLEIGH_MEDIAN).clamp_min(1e-9)) ** 2)
        return cauchy * (w.sum(1, keepdim=True) / (w * cauchy).sum(1, keepdim=True).clamp_min(1e-12))

    single = fit(base, alone, None if initial is None else initial.to(torch.float64))
    visible = visible_points(model, single, config.visible_cosine)
    single = fit(base * visible, alone, single)
    single_rms = landmark_rms(model, single, pixels, camera, base * visible)
    weights = photo_confidence(scores, single.angle[:, 1], single_rms, config)
    mean_id = _group_mean((single if initial is None else initial).id.double(), weights, groups)
    coeffs = single.replace(id=mean_id[groups].to(single.id))

    def joint_round(coeffs, visible, weights, prior=None):
        """One joint fit, then the hidden jaw points, residuals, photo weights and point weights anew."""
        nonlocal robust
        coeffs = fit(base * visible, groups, coeffs, weights, prior)
        visible = visible_points(model, coeffs, config.visible_cosine)
        rms = landmark_rms(model, coeffs, pixels, camera, base * visible)
        weights = photo_confidence(scores, coeffs.angle[:, 1], rms, config)
        robust = point_robustness(coeffs, weights, visible)  # this round's hidden points (the closure saw last round's)
        return coeffs, visible, rms, weights

    for _ in range(config.rounds):
        coeffs, visible, rms, weights = joint_round(coeffs, visible, weights)
    if config.yaw_gain > 0:
        prior = yaw_prior(coeffs.angle[:, 1], config.yaw_gain, config.yaw_knee, config.yaw_prior_weight)
        if bool(prior[1].any()):  # one more round, only where a photo is turned
            coeffs, visible, rms, weights = joint_round(coeffs, visible, weights, prior)
    return SetFit(coeffs, weights, rms, single_rms, single)


@torch_threads(1)
def fit_landmarks_set(model: MorphableModel, pixels: torch.Tensor, camera: Camera, weights: torch.Tensor | None = None,
                      groups: torch.Tensor | None = None, iterations: int = 20, lambda_id: float = LAMBDA_ID,
                      lambda_exp: float = LAMBDA_EXP, initial: Coefficients | None = None,
                      vertex_ids: torch.Tensor | None = None, update_identity: bool = True,
                      angle_prior: tuple[torch.Tensor, torch.Tensor] | None = None,
                      id_precision: torch.Tensor | None = None) -> Coefficients:
    """(P, K, 2) crop pixels of the vertices ``vertex_ids`` (default: the 68 keypoints) in P photos,
    (P, K) weights -> Coefficients (P rows) where photos of one group share ``id``; per-photo pose
    and exp.  ``groups`` (P,) int labels 0..G-1 (default: all photos one person; ``arange(P)``:
    independent single-photo fits, the same cost as ``landmark_fit``).

    Without ``initial`` poses start from a rigid fit of the mean shape.  Each group's cost never
    increases (a step is taken only when it lowers it); groups are solved independently.
    ``update_identity=False`` keeps ``initial``'s identity and fits pose and expression only (the
    frames of a video once its identity is known).  ``angle_prior``: ((P, 3) angles, (P, 3)
    weights), as ``landmark_fit.fit_landmarks``' (a per-photo pose belief, e.g. ``yaw_prior``);
    ``id_precision`` the identity prior's matrix P (``landmark_fit.identity_precision``; default I)."""
    vertex_ids = model.keypoints if vertex_ids is None else vertex_ids
    count, k = pixels.shape[:2]
    dtype = torch.float64
    groups = torch.zeros(count, dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
    n_groups = int(groups.max()) + 1
    rows = (3 * vertex_ids[:, None] + torch.arange(3, device=vertex_ids.device)).reshape(-1)
    mean = model.mean_shape[vertex_ids].to(dtype)
    basis = torch.cat([model.id_basis[rows], model.exp_basis[rows]], 1).to(dtype).view(k, 3, -1)
    n_id = model.id_basis.shape[1]
    K = camera.K.to(dtype)
    K = K if K.ndim == 3 else K.expand(count, 3, 3)
    no_prior = torch.zeros(count, 3, dtype=dtype)
    prior_angles, prior_weights = (no_prior, no_prior) if angle_prior is None else (a.to(dtype) for a in angle_prior)
    data = _Data(mean, basis, n_id, K, camera.distance, pixels.to(dtype),
                 (torch.ones(count, k, dtype=dtype) if weights is None else weights.to(dtype)).sqrt(),
                 math.sqrt(lambda_exp), groups, n_groups, prior_angles, prior_weights.clamp_min(0).sqrt(),
                 torch.eye(n_id, dtype=dtype) if id_precision is None else id_precision.to(dtype))
    if initial is None:
        # the closed-form orthographic pose is start enough: the first LM steps refine it (the
        # vmap-differentiated rigid LM of ``rigid.solve_pose`` costs ~1 s per iteration here)
        angles, trans = orthographic_pose(mean.expand(count, -1, -1), data.pixels,
                                          Camera(K, camera.width, camera.height, camera.distance), data.root ** 2)
        identity = torch.zeros(n_groups, n_id, dtype=dtype)
        local = torch.cat([angles, trans, torch.zeros(count, basis.shape[2] - n_id, dtype=dtype)], 1)
        out = model.zero_coefficients(count)
    else:
        first = torch.full((n_groups,), count, dtype=torch.long).scatter_reduce(0, groups, torch.arange(count), "amin")
        identity = initial.id[first].to(dtype)
        local = torch.cat([initial.angle, initial.trans, initial.exp], 1).to(dtype)
        out = initial
    cost = _group_cost(_residuals(identity, local, data)[0], identity, lambda_id, data)
    lam = torch.full((n_groups,), 1e-3, dtype=dtype)
    for _ in range(iterations):
        r, j_id, j_local = _residuals(identity, local, data, jacobian=True)
        step_id, step_local = _schur_step(r, j_id, j_local, identity, lambda_id, lam, data, update_identity)
        candidate_id, candidate_local = identity + step_id, local + step_local
        new_cost = _group_cost(_residuals(candidate_id, candidate_local, data)[0], candidate_id, lambda_id, data)
        better = torch.isfinite(new_cost) & (new_cost < cost)
        done = (better & (cost - new_cost <= 1e-12 * cost)) | (~better & (lam >= 1e9))
        identity = torch.where(better[:, None], candidate_id, identity)
        local = torch.where(better[groups][:, None], candidate_local, local)
        cost = torch.where(better, new_cost, cost)
        lam = torch.where(better, lam * 0.3, lam * 10).clamp(1e-9, 1e9)
        if bool(done.all()):
            break
    cast = lambda t: t.to(out.id)  # noqa: E731
    return out.replace(id=cast(identity[groups]), angle=cast(local[:, :3]), trans=cast(local[:, 3:6]),
                       exp=cast(local[:, 6:]))


# -- pure functions --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Data:
    mean: torch.Tensor      # (K, 3)
    basis: torch.Tensor     # (K, 3, n_id + n_exp)
    n_id: int
    K: torch.Tensor         # (P, 3, 3)
    distance: float
    pixels: torch.Tensor    # (P, K, 2)
    root: torch.Tensor      # (P, K) sqrt of the point weights
    exp_reg: float          # sqrt(lambda_exp)
    groups: torch.Tensor    # (P,)
    n_groups: int
    prior_angles: torch.Tensor  # (P, 3) believed pose (radians)
    prior_root: torch.Tensor    # (P, 3) sqrt of its weights (0: no belief)
    id_precision: torch.Tensor  # (n_id, n_id) the identity prior's matrix (relative to lambda_id)


def _residuals(identity, local, data: _Data, jacobian: bool = False):
    """Per-photo residuals [weighted reprojection (2K) | sqrt(λ_exp)·exp | angle prior (3)] (P, R) and, if asked, their
    analytic Jacobians with respect to the photo's group identity (P, R, n_id) and its local
    parameters [angles, trans, exp] (P, R, 6 + n_exp)."""
    coeffs = torch.cat([identity[data.groups], local[:, 6:]], 1)                  # (P, n_id + n_exp)
    shape = data.mean + torch.einsum("kcn,pn->pkc", data.basis, coeffs)           # (P, K, 3)
    rotation = rotation_matrix(local[:, :3])
    posed = shape @ rotation.transpose(1, 2) + local[:, None, 3:6]
    uv, d_uv = project_with_jacobian(posed, data.K, data.distance)               # (P, K, 2), (P, K, 2, 3)
    root = data.root[..., None]
    exp = local[:, 6:]
    r = torch.cat([((uv - data.pixels) * root).flatten(1), exp * data.exp_reg,
                   (local[:, :3] - data.prior_angles) * data.prior_root], 1)
    if not jacobian:
        return r, None, None
    d_uv = d_uv * root[..., None]
    d_shape = torch.einsum("pij,kjn->pkin", rotation, data.basis)                 # (P, K, 3, n)
    j_coeff = d_uv @ d_shape                                                     # (P, K, 2, n)
    d_angles = torch.einsum("paij,pkj->pkia", rotation_derivatives(local[:, :3]), shape)  # (P, K, 3, 3)
    j_pose = torch.cat([d_uv @ d_angles, d_uv], -1)                              # (P, K, 2, 6)
    count, n_exp = local.shape[0], exp.shape[1]
    j_id = j_coeff[..., :data.n_id].reshape(count, -1, data.n_id)
    j_local = torch.cat([j_pose, j_coeff[..., data.n_id:]], -1).reshape(count, -1, 6 + n_exp)
    prior = torch.cat([torch.zeros(count, n_exp, 6, dtype=r.dtype),
                       torch.eye(n_exp, dtype=r.dtype).expand(count, -1, -1) * data.exp_reg], 2)
    pose_prior = torch.cat([torch.diag_embed(data.prior_root), torch.zeros(count, 3, 3 + n_exp, dtype=r.dtype)], 2)
    return (r, torch.cat([j_id, torch.zeros(count, n_exp + 3, data.n_id, dtype=r.dtype)], 1),
            torch.cat([j_local, prior, pose_prior], 1))


def _group_sum(values: torch.Tensor, data: _Data) -> torch.Tensor:
    """Sum (P, ...) per-photo values into (G, ...) per group (a one-hot product: index_add is
    orders of magnitude slower on these small float64 blocks)."""
    onehot = (data.groups[None] == torch.arange(data.n_groups)[:, None]).to(values.dtype)
    return (onehot @ values.reshape(values.shape[0], -1)).view(data.n_groups, *values.shape[1:])


def _group_cost(r, identity, lambda_id, data: _Data) -> torch.Tensor:
    return _group_sum((r ** 2).sum(1), data) + lambda_id * ((identity @ data.id_precision) * identity).sum(1)


def _schur_step(r, j_id, j_local, identity, lambda_id, lam, data: _Data, update_identity: bool = True):
    """LM step of each group's arrow-shaped normal equations [[A, B_p…], [B_pᵀ, D_p]] (Marquardt
    damping ``lam`` per group): eliminate the per-photo blocks, solve for the identity."""
    eye = lambda n: torch.eye(n, dtype=r.dtype)  # noqa: E731
    damp = lambda M, l: M + l[:, None, None] * torch.diag_embed(M.diagonal(dim1=-2, dim2=-1)) + 1e-12 * eye(M.shape[-1])  # noqa: E731,E501
    B = j_id.transpose(1, 2) @ j_local                                             # (P, n_id, m)
    D = damp(j_local.transpose(1, 2) @ j_local, lam[data.groups])                  # (P, m, m)
    g_local = j_local.transpose(1, 2) @ r[..., None]                               # (P, m, 1)
    D_inv_Bt = torch.linalg.solve(D, B.transpose(1, 2))                            # (P, m, n_id)
    D_inv_g = torch.linalg.solve(D, g_local)                                       # (P, m, 1)
    if not update_identity:
        return torch.zeros_like(identity), -D_inv_g[..., 0]
    A = _group_sum(j_id.transpose(1, 2) @ j_id, data) + lambda_id * data.id_precision  # (G, n_id, n_id)
    S = damp(A, lam) - _group_sum(B @ D_inv_Bt, data)
    g_id = _group_sum((j_id.transpose(1, 2) @ r[..., None])[..., 0], data) + lambda_id * identity @ data.id_precision
    rhs = -g_id + _group_sum((B @ D_inv_g)[..., 0], data)
    step_id = torch.linalg.solve(S, rhs)
    step_local = -(D_inv_g[..., 0] + (D_inv_Bt @ step_id[data.groups][..., None])[..., 0])
    return step_id, step_local


def photo_confidence(scores: torch.Tensor, yaw: torch.Tensor, rms: torch.Tensor, config: SetFitConfig) -> torch.Tensor:
    """(P,) weight in [0, 1] per photo: landmark score × yaw factor × Cauchy weight of the residual."""
    pose = config.min_yaw_weight + (1 - config.min_yaw_weight) * torch.cos(yaw.double()).clamp_min(0)
    residual = 1.0 / (1.0 + (rms.double() / config.residual_scale) ** 2)
    return scores.double().clamp(0, 1) * pose * residual


def _group_mean(values: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(G, n) weighted mean of the (P, n) rows of each group."""
    w = weights.to(values).clamp_min(1e-12)
    n_groups = int(groups.max()) + 1
    onehot = (groups[None] == torch.arange(n_groups)[:, None]).to(values.dtype)
    return (onehot @ (values * w[:, None])) / (onehot @ w)[:, None]


def held_out_rms(model, pixels: torch.Tensor, camera, identity: torch.Tensor, weights: torch.Tensor,
                 iterations: int = 30) -> float:
    """Landmark RMS of one photo's points (1, K, 2) explained with a given identity (K_id,):
    pose and expression fitted, identity fixed (how well an identity generalises to a photo)."""
    free = fit_landmarks_set(model, pixels, camera, iterations=20)
    start = free.to(torch.float64).replace(id=identity[None])
    fit = fit_landmarks_set(model, pixels, camera, weights, initial=start, update_identity=False,
                            iterations=iterations)
    return landmark_rms(model, fit, pixels, camera, weights).item()
