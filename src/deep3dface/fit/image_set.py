"""One identity from several photos: a joint landmark fit with shared identity coefficients.

P photos of one person share the identity coefficients ``id``; each photo keeps its own pose
(angle, trans) and expression ``exp``.  The cost is

    Σ_p Σ_k w_pk ‖π(R_p·X_k(id, exp_p) + t_p) − x_pk‖²  +  λ_id‖id‖²  +  Σ_p λ_exp‖exp_p‖²

in pixels of each photo's 224 crop (Deep3D's crop camera, one for all photos).  The identity prior
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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..camera import AXIS_FLIP, Camera
from ..morphable.geometry import rotation_matrix
from ..morphable.model import MorphableModel
from ..types import Coefficients
from ..threads import torch_threads
from .landmark_fit import LAMBDA_EXP, LAMBDA_ID, fit_landmarks
from .losses import LANDMARK_WEIGHTS
from .rigid import orthographic_pose

JAW = slice(0, 17)


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
                 groups: torch.Tensor | None = None, config: SetFitConfig = SetFitConfig()) -> SetFit:
    """(P, 68, 2) crop-pixel landmarks of P photos (and the landmarker's (P,) scores) -> the robust
    joint fit; ``groups`` (P,) labels several people solved at once (default: one person).
    Deterministic: the same input gives the same output bit for bit."""
    count = pixels.shape[0]
    groups = torch.zeros(count, dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
    scores = torch.ones(count, dtype=torch.float64) if scores is None else torch.as_tensor(scores).double()
    base = LANDMARK_WEIGHTS.double().expand(count, -1)
    alone = torch.arange(count)
    fit = lambda w, g, start: fit_landmarks_set(  # noqa: E731
        model, pixels, camera, w, g, config.iterations, config.lambda_id, config.lambda_exp, start)
    single = fit(base, alone, None)
    visible = visible_points(model, single, config.visible_cosine)
    single = fit(base * visible, alone, single)
    single_rms = landmark_rms(model, single, pixels, camera, base * visible)
    weights = photo_confidence(scores, single.angle[:, 1], single_rms, config)
    mean_id = _group_mean(single.id.double(), weights, groups)
    coeffs = single.replace(id=mean_id[groups].to(single.id))
    for _ in range(config.rounds):
        coeffs = fit(base * visible * weights[:, None], groups, coeffs)
        visible = visible_points(model, coeffs, config.visible_cosine)
        rms = landmark_rms(model, coeffs, pixels, camera, base * visible)
        weights = photo_confidence(scores, coeffs.angle[:, 1], rms, config)
    return SetFit(coeffs, weights, rms, single_rms, single)


@torch_threads(1)
def fit_landmarks_set(model: MorphableModel, pixels: torch.Tensor, camera: Camera, weights: torch.Tensor | None = None,
                      groups: torch.Tensor | None = None, iterations: int = 20, lambda_id: float = LAMBDA_ID,
                      lambda_exp: float = LAMBDA_EXP, initial: Coefficients | None = None,
                      vertex_ids: torch.Tensor | None = None, update_identity: bool = True) -> Coefficients:
    """(P, K, 2) crop pixels of the vertices ``vertex_ids`` (default: the 68 keypoints) in P photos,
    (P, K) weights -> Coefficients (P rows) where photos of one group share ``id``; per-photo pose
    and exp.  ``groups`` (P,) int labels 0..G-1 (default: all photos one person; ``arange(P)``:
    independent single-photo fits, the same cost as ``landmark_fit``).

    Without ``initial`` poses start from a rigid fit of the mean shape.  Each group's cost never
    increases (a step is taken only when it lowers it); groups are solved independently.
    ``update_identity=False`` keeps ``initial``'s identity and fits pose and expression only (the
    frames of a video once its identity is known)."""
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
    data = _Data(mean, basis, n_id, K, camera.distance, pixels.to(dtype),
                 (torch.ones(count, k, dtype=dtype) if weights is None else weights.to(dtype)).sqrt(),
                 math.sqrt(lambda_exp), groups, n_groups)
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


def _residuals(identity, local, data: _Data, jacobian: bool = False):
    """Per-photo residuals [weighted reprojection (2K) | sqrt(λ_exp)·exp] (P, R) and, if asked, their
    analytic Jacobians with respect to the photo's group identity (P, R, n_id) and its local
    parameters [angles, trans, exp] (P, R, 6 + n_exp)."""
    coeffs = torch.cat([identity[data.groups], local[:, 6:]], 1)                  # (P, n_id + n_exp)
    shape = data.mean + torch.einsum("kcn,pn->pkc", data.basis, coeffs)           # (P, K, 3)
    rotation = rotation_matrix(local[:, :3])
    posed = shape @ rotation.transpose(1, 2) + local[:, None, 3:6]
    flip = posed.new_tensor(AXIS_FLIP)
    camera_points = (posed - posed.new_tensor((0.0, 0.0, data.distance))) * flip
    h = camera_points @ data.K.transpose(1, 2)                                   # (P, K, 3)
    uv = h[..., :2] / h[..., 2:3]
    root = data.root[..., None]
    exp = local[:, 6:]
    r = torch.cat([((uv - data.pixels) * root).flatten(1), exp * data.exp_reg], 1)
    if not jacobian:
        return r, None, None
    # d uv / d posed = (K[:2] - uv ⊗ K[2]) / h_z · FLIP   (P, K, 2, 3)
    d_uv = (data.K[:, None, :2, :] - uv[..., None] * data.K[:, None, 2:3, :]) / h[..., 2:3, None] * flip
    d_uv = d_uv * root[..., None]
    d_shape = torch.einsum("pij,kjn->pkin", rotation, data.basis)                 # (P, K, 3, n)
    j_coeff = d_uv @ d_shape                                                     # (P, K, 2, n)
    d_angles = torch.einsum("paij,pkj->pkia", _rotation_derivatives(local[:, :3]), shape)  # (P, K, 3, 3)
    j_pose = torch.cat([d_uv @ d_angles, d_uv], -1)                              # (P, K, 2, 6)
    count, n_exp = local.shape[0], exp.shape[1]
    j_id = j_coeff[..., :data.n_id].reshape(count, -1, data.n_id)
    j_local = torch.cat([j_pose, j_coeff[..., data.n_id:]], -1).reshape(count, -1, 6 + n_exp)
    prior = torch.cat([torch.zeros(count, n_exp, 6, dtype=r.dtype),
                       torch.eye(n_exp, dtype=r.dtype).expand(count, -1, -1) * data.exp_reg], 2)
    return (r, torch.cat([j_id, torch.zeros(count, n_exp, data.n_id, dtype=r.dtype)], 1),
            torch.cat([j_local, prior], 1))


def _rotation_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """(P, 3) -> (P, 3, 3, 3): dR/d(pitch, yaw, roll) of R = Rz·Ry·Rx."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(cos[:, 0]), torch.ones_like(cos[:, 0])

    def mat(*entries):
        return torch.stack(entries, 1).view(-1, 3, 3)

    (cx, cy, cz), (sx, sy, sz) = cos.unbind(1), sin.unbind(1)
    rx = mat(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    ry = mat(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rz = mat(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    drx = mat(zero, zero, zero, zero, -sx, -cx, zero, cx, -sx)
    dry = mat(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    drz = mat(-sz, -cz, zero, cz, -sz, zero, zero, zero, zero)
    return torch.stack([rz @ ry @ drx, rz @ dry @ rx, drz @ ry @ rx], 1)


def _group_sum(values: torch.Tensor, data: _Data) -> torch.Tensor:
    """Sum (P, ...) per-photo values into (G, ...) per group (a one-hot product: index_add is
    orders of magnitude slower on these small float64 blocks)."""
    onehot = (data.groups[None] == torch.arange(data.n_groups)[:, None]).to(values.dtype)
    return (onehot @ values.reshape(values.shape[0], -1)).view(data.n_groups, *values.shape[1:])


def _group_cost(r, identity, lambda_id, data: _Data) -> torch.Tensor:
    return _group_sum((r ** 2).sum(1), data) + lambda_id * (identity ** 2).sum(1)


def _schur_step(r, j_id, j_local, identity, lambda_id, lam, data: _Data, update_identity: bool = True):
    """LM step of each group's arrow-shaped normal equations [[A, B_p…], [B_pᵀ, D_p]] (Marquardt
    damping ``lam`` per group): eliminate the per-photo blocks, solve for the identity."""
    n_id = identity.shape[1]
    eye = lambda n: torch.eye(n, dtype=r.dtype)  # noqa: E731
    damp = lambda M, l: M + l[:, None, None] * torch.diag_embed(M.diagonal(dim1=-2, dim2=-1)) + 1e-12 * eye(M.shape[-1])  # noqa: E731,E501
    B = j_id.transpose(1, 2) @ j_local                                             # (P, n_id, m)
    D = damp(j_local.transpose(1, 2) @ j_local, lam[data.groups])                  # (P, m, m)
    g_local = j_local.transpose(1, 2) @ r[..., None]                               # (P, m, 1)
    D_inv_Bt = torch.linalg.solve(D, B.transpose(1, 2))                            # (P, m, n_id)
    D_inv_g = torch.linalg.solve(D, g_local)                                       # (P, m, 1)
    if not update_identity:
        return torch.zeros_like(identity), -D_inv_g[..., 0]
    A = _group_sum(j_id.transpose(1, 2) @ j_id, data) + lambda_id * eye(n_id)      # (G, n_id, n_id)
    S = damp(A, lam) - _group_sum(B @ D_inv_Bt, data)
    g_id = _group_sum((j_id.transpose(1, 2) @ r[..., None])[..., 0], data) + lambda_id * identity
    rhs = -g_id + _group_sum((B @ D_inv_g)[..., 0], data)
    step_id = torch.linalg.solve(S, rhs)
    step_local = -(D_inv_g[..., 0] + (D_inv_Bt @ step_id[data.groups][..., None])[..., 0])
    return step_id, step_local


def landmark_rms(model: MorphableModel, coeffs: Coefficients, pixels: torch.Tensor, camera: Camera,
                 weights: torch.Tensor) -> torch.Tensor:
    """(P,) weighted RMS distance (pixels) between the fitted keypoints and the targets."""
    with torch.no_grad():
        shape = _vertex_shape(model, coeffs, model.keypoints)
        posed = shape @ rotation_matrix(coeffs.angle.double()).transpose(1, 2) + coeffs.trans.double()[:, None]
        cam = Camera(camera.K.double(), camera.width, camera.height, camera.distance)
        squared = ((cam.project(posed) - pixels.double()) ** 2).sum(-1)
    w = weights.double()
    return ((squared * w).sum(1) / w.sum(1).clamp_min(1e-12)).sqrt()


def visible_points(model: MorphableModel, coeffs: Coefficients, min_cosine: float = 0.0) -> torch.Tensor:
    """(P, 68) 1 for points to fit, 0 for jaw points whose vertex normal faces away from the camera.

    Only the triangles around the keypoints are evaluated (the model's normals are the normalised
    sum of the adjacent unit face normals, ``geometry.vertex_normals``)."""
    with torch.no_grad():
        ring = model.point_buf[model.keypoints]                         # (68, V), padded with F
        valid = ring < len(model.triangles)
        corners = model.triangles[ring.clamp_max(len(model.triangles) - 1)]  # (68, V, 3)
        used, local = torch.unique(corners, return_inverse=True)
        shape = _vertex_shape(model, coeffs, used)[:, local]           # (P, 68, V, 3, 3)
        v0, v1, v2 = shape.unbind(-2)
        face = torch.nn.functional.normalize(torch.linalg.cross(v0 - v1, v1 - v2, dim=-1), dim=-1, eps=1e-12)
        normals = torch.nn.functional.normalize((face * valid[..., None]).sum(2), dim=-1, eps=1e-12)
        normals = normals @ rotation_matrix(coeffs.angle.double()).transpose(1, 2)
    visible = torch.ones(normals.shape[:2], dtype=torch.float64)
    visible[:, JAW] = (normals[:, JAW, 2] > min_cosine).double()
    return visible


def _vertex_shape(model: MorphableModel, coeffs: Coefficients, vertex_ids: torch.Tensor) -> torch.Tensor:
    """(P, V, 3) float64 unposed shape at the given vertices only."""
    rows = (3 * vertex_ids[:, None] + torch.arange(3)).reshape(-1)
    offset = coeffs.id.double() @ model.id_basis[rows].double().T + coeffs.exp.double() @ model.exp_basis[rows].double().T
    return model.mean_shape[vertex_ids].double() + offset.view(coeffs.batch_size, -1, 3)


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
