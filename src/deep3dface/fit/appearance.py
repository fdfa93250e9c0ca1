"""Lighting and per-vertex albedo from a photo, given the fitted geometry (closed form).

With geometry fixed, Deep3D's image formation ``colour = albedo × (Y(n)·L)`` is linear in the
lighting L for known albedo, and linear in the albedo for known lighting; both steps are small
least-squares problems solved exactly here, where a first-order optimiser needs hundreds of
iterations.  A model without an albedo basis (the embedded default) gets a per-vertex albedo
regularised by three priors: smoothness over the mesh graph, left/right symmetry (which also fills
the half of a profile the camera cannot see) and closeness to a prior albedo.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

from ..morphable.shading import DEFAULT_AMBIENT, NUM_BANDS, sh_basis


def sample_photo(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinear colours of (B, 3, H, W) at (B, N, 2) corner-origin pixels -> (B, N, 3)."""
    height, width = image.shape[-2:]
    grid = torch.stack([pixels[..., 0] / width * 2 - 1, pixels[..., 1] / height * 2 - 1], -1)
    sampled = F.grid_sample(image, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[..., 0].transpose(1, 2)


def estimate_lighting(observed: torch.Tensor, albedo: torch.Tensor, normals: torch.Tensor, weights: torch.Tensor,
                      ridge: float = 1e-2) -> torch.Tensor:
    """Least-squares SH lighting: (B, N, 3) observed colours, albedo, unit normals, (B, N) weights
    -> gamma (B, 27) such that ``albedo × irradiance(normals, gamma) ≈ observed``.

    The ridge pulls the higher bands towards zero (and band 0 towards the default ambient), so a
    face seen under a narrow range of normals still gets a sensible light."""
    basis = sh_basis(normals)  # (B, N, 9)
    w = weights[..., None]
    gammas = []
    prior = torch.zeros(NUM_BANDS, dtype=observed.dtype, device=observed.device)
    prior[0] = DEFAULT_AMBIENT
    for c in range(3):
        design = basis * albedo[..., c:c + 1]  # (B, N, 9)
        lhs = (design * w).transpose(1, 2) @ design
        rhs = (design * w).transpose(1, 2) @ observed[..., c:c + 1]
        scale = lhs.diagonal(dim1=1, dim2=2).mean(1)[:, None, None]
        eye = torch.eye(NUM_BANDS, dtype=observed.dtype, device=observed.device)
        light = torch.linalg.solve(lhs + ridge * scale * eye, rhs + ridge * scale * prior[:, None])[..., 0]
        gammas.append(light - prior)
    return torch.cat(gammas, dim=1)


def estimate_albedo(observed: torch.Tensor, irradiance: torch.Tensor, weights: torch.Tensor, laplacian: sp.spmatrix,
                    mirror: np.ndarray, prior: torch.Tensor, smoothness: float = 0.5, symmetry: float = 0.5,
                    prior_weight: float = 0.02) -> torch.Tensor:
    """Per-vertex albedo (B, N, 3) minimising, per face and channel,

    ``Σ_v w_v (a_v e_v − c_v)² + μ·aᵀ L a + σ·‖a − a[mirror]‖² + π·‖a − prior‖²``

    (e = irradiance, c = observed colour, w = visibility × skin weight).  The weights are relative
    to the mean data weight, so they do not depend on how many vertices are visible."""
    out = np.empty(observed.shape, dtype=np.float64)
    obs = observed.detach().double().cpu().numpy()
    irr = irradiance.detach().double().cpu().numpy()
    wts = weights.detach().double().cpu().numpy()
    pri = np.broadcast_to(prior.detach().double().cpu().numpy(), obs.shape)
    # every face and channel solves diag(data) + scale·shared: the shared part is built once (and
    # kept for the next call with the same operators, ~20 ms a build); a face's three channels are
    # solved together, one column each (one sparse product per iteration; faces apart, so that no
    # face iterates as long as the slowest of a batch)
    shared = _shared_operator(laplacian, mirror, smoothness, symmetry, prior_weight)
    for b in range(obs.shape[0]):
        data = wts[b, :, None] * irr[b] ** 2                                   # (N, 3)
        positive = data > 0
        scale = np.maximum(np.where(positive.any(0), (data * positive).sum(0) / np.maximum(positive.sum(0), 1), 1.0),
                           1e-6)
        rhs = wts[b, :, None] * irr[b] * obs[b] + scale * prior_weight * pri[b]
        out[b] = _solve_spd(shared, data, scale, rhs, pri[b])
    return torch.as_tensor(out, dtype=observed.dtype, device=observed.device)


def albedo_normal_equations(albedo_basis: torch.Tensor, mean_albedo: torch.Tensor, observed: torch.Tensor,
                            irradiance: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares for albedo-basis coefficients, per photo: (3N, K) basis, (N, 3) mean,
    (B, N, 3) observed colours and irradiances, (B, N) weights -> (B, K, K) and (B, K) normal
    equations of ``observed ≈ (mean + basis·tex) · irradiance``.  Summed over photos they are one
    person's shared albedo (``shared_albedo``)."""
    basis = albedo_basis.view(mean_albedo.shape[0], 3, -1)          # (N, 3, K)
    design = basis[None] * irradiance[..., None]                     # (B, N, 3, K)
    residual = observed - mean_albedo * irradiance
    w = weights[..., None, None]
    return (torch.einsum("bnck,bncl->bkl", design * w, design), torch.einsum("bnck,bnc->bk", design * w, residual))


def solve_with_prior(lhs: torch.Tensor, rhs: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """(..., K, K), (..., K) normal equations -> (..., K) coefficients, with a ridge of ``ridge`` %
    of the mean diagonal: the albedo prior in proportion to the data, whatever its amount."""
    scale = lhs.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    eye = torch.eye(lhs.shape[-1], dtype=lhs.dtype)
    return torch.linalg.solve(lhs + ridge * 1e-2 * scale * eye, rhs[..., None])[..., 0]


class _SharedOperator:
    """A scipy CSR matrix with its float32 torch copy and diagonal, for many solves of diag(d) + s·A."""

    def __init__(self, csr: sp.csr_matrix) -> None:
        if csr.nnz >= 2**31:
            raise ValueError("more than 2**31 non-zeros: the float32 operator's indices are int32")
        self.csr = csr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.matrix = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int32)),
                                                  torch.from_numpy(csr.indices.astype(np.int32)),
                                                  torch.from_numpy(csr.data.astype(np.float32)), size=csr.shape,
                                                  check_invariants=False)
        self.diagonal = torch.from_numpy(csr.diagonal().astype(np.float32))


_OPERATORS: dict = {}
_OPERATORS_LOCK = threading.Lock()  # several threads may fit at once


def _shared_operator(laplacian: sp.spmatrix, mirror: np.ndarray, smoothness: float, symmetry: float,
                     prior_weight: float) -> _SharedOperator:
    """``μ·L + σ·(I − M)ᵀ(I − M) + π·I`` as a ``_SharedOperator``, kept for the last few (laplacian,
    mirror) objects seen: the fitter passes the same ones for every face of a model (from the
    cached ``albedo_operators``; like them, they are treated as immutable)."""
    key = (id(laplacian), id(mirror), smoothness, symmetry, prior_weight)
    with _OPERATORS_LOCK:
        held = _OPERATORS.get(key)
    if held is not None and held[0] is laplacian and held[1] is mirror:  # the ids are not reused: held here
        return held[2]
    n = laplacian.shape[0]
    m = sp.csr_matrix((np.ones(n), (np.arange(n), mirror)), shape=(n, n))
    symmetric = (sp.identity(n) - m).T @ (sp.identity(n) - m)
    operator = _SharedOperator((smoothness * laplacian + symmetry * symmetric + prior_weight * sp.identity(n)).tocsr())
    with _OPERATORS_LOCK:
        while len(_OPERATORS) >= 4:
            _OPERATORS.pop(next(iter(_OPERATORS)))
        _OPERATORS[key] = (laplacian, mirror, operator)
    return operator


def _solve_spd(shared: _SharedOperator, data: np.ndarray, scale: np.ndarray, rhs: np.ndarray, start: np.ndarray,
               rtol: float = 1e-4, max_iterations: int = 1000, refinements: int = 3) -> np.ndarray:
    """Solve (diag(data[:, j]) + scale[j]·A) x_j = rhs[:, j] for every column j, A = ``shared``;
    data, rhs, start (N, M), scale (M,), to a float64 residual below ``rtol`` of the right side.

    Each system is symmetric positive definite (data + Laplacian + symmetry + prior):
    Jacobi-preconditioned conjugate gradients from the prior converge in ~40 iterations, where a
    sparse LU of a 37k-vertex face takes over a second (the mirror term causes fill-in).  The
    columns iterate together, each with its own step sizes, and a column stops moving once it has
    converged.  The iterations run in float32 (memory-bound: half the bytes took 1.8x less time);
    float32's recurrences let the computed residual drift from the true one on hard systems, so the
    true residual is then taken in float64 and the correction solved again (mixed-precision
    iterative refinement): the answer meets the tolerance in float64 terms.  On 10 dev faces it
    moved by at most 0.0006 / 255 from a float64 solve, with no refinement needed.  Columns still
    off after ``refinements`` get scipy's exact factorisation.  Written in torch rather than with
    scipy's ``cg``: numpy's threaded BLAS made scipy's loop 20x slower on a busy 2-core machine,
    and torch runs on the fitter's single thread (``deep3dface.threads``).  Returns float64."""
    data, rhs, scale = np.asarray(data, np.float64), np.asarray(rhs, np.float64), np.asarray(scale, np.float64)
    x = np.array(start, np.float64)
    target = rtol * np.linalg.norm(rhs, axis=0)
    residual = rhs - (data * x + scale * (shared.csr @ x))
    todo = np.flatnonzero(np.linalg.norm(residual, axis=0) > target)
    for _ in range(refinements + 1):
        if len(todo) == 0:
            return x
        # the correction's tolerance, relative to its own right side: the rest of rtol·|rhs|
        relative = np.minimum(target[todo] / np.maximum(np.linalg.norm(residual[:, todo], axis=0), 1e-300), 0.5)
        x[:, todo] += _cg32(shared, data[:, todo], scale[todo], residual[:, todo], relative, max_iterations)
        residual = rhs - (data * x + scale * (shared.csr @ x))
        todo = np.flatnonzero(np.linalg.norm(residual, axis=0) > target)
    for j in todo.tolist():   # not converged: the exact factorisation
        x[:, j] = spla.spsolve((sp.diags(data[:, j]) + scale[j] * shared.csr).tocsc(), rhs[:, j])
    return x


def _cg32(shared: _SharedOperator, data: np.ndarray, scale: np.ndarray, rhs: np.ndarray, rtol: np.ndarray,
          max_iterations: int) -> np.ndarray:
    """Columns of (diag(data) + scale·A) x = rhs by Jacobi-preconditioned CG in float32 from 0,
    until each column's computed residual is below ``rtol[j]``·|rhs_j| -> float64 (N, M)."""
    # row-major copies: a column-picked view makes every elementwise op strided
    d, b, s = (torch.from_numpy(np.array(a, np.float32, order="C")) for a in (data, rhs, scale))
    # each column scaled to a unit right side: float32's range whatever the weights' magnitude
    norm = torch.linalg.vector_norm(b, dim=0).clamp(min=1e-30)
    b = b / norm

    def apply(v):
        return d * v + s * (shared.matrix @ v)

    inverse_diagonal = 1.0 / (d + s * shared.diagonal[:, None])
    x = torch.zeros_like(b)
    r = b.clone()
    z = inverse_diagonal * r
    p = z.clone()
    rz = (r * z).sum(0)
    limit = torch.from_numpy(np.asarray(rtol, np.float32)) ** 2
    for _ in range(max_iterations):
        active = (r * r).sum(0) > limit
        if not bool(active.any()):
            break
        q = apply(p)
        alpha = torch.where(active, rz / (p * q).sum(0), 0.0)
        x += alpha * p
        r -= alpha * q
        z = inverse_diagonal * r
        rz_next = (r * z).sum(0)
        p = z + torch.where(active, rz_next / rz, 0.0) * p
        rz = torch.where(active, rz_next, rz)
    return (x.double() * norm.double()).numpy()
