"""A small batched Levenberg–Marquardt solver for least-squares problems with few parameters.

Pose (6 parameters) and shape-from-landmarks (6 + K_id + K_exp) have tens to a couple of hundred
unknowns and a few hundred residuals per face: exact Jacobians (the caller's closed form, else
``torch.func``) and a dense solve converge in a handful of iterations, where first-order
optimisers need hundreds.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def levenberg_marquardt(residuals: Callable[..., torch.Tensor], params: torch.Tensor, data: tuple = (),
                        iterations: int = 15, damping: float = 1e-3, tolerance: float = 1e-12,
                        jacobian: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Minimise ``Σ residuals(p, *data)²`` for each face independently.

    ``residuals`` maps (B, P) parameters and per-face ``data`` tensors (each with the batch first) to
    (B, R) residuals, treating faces independently.  ``jacobian`` (same arguments -> (B, R, P)) is
    its derivative where the caller has it in closed form; without it ``residuals`` is
    differentiated one face at a time with vmap (``autodiff_jacobian``, the oracle of closed forms).
    Returns the (B, P) parameters; a step is only taken where it lowers that face's cost, so the
    cost never increases."""
    jacobian = jacobian or autodiff_jacobian(residuals)
    data = tuple(data)
    lam = torch.full((params.shape[0], 1), damping, dtype=params.dtype, device=params.device)
    r = residuals(params, *data)
    cost = (r ** 2).sum(1)
    for _ in range(iterations):
        J = jacobian(params, *data)
        JtJ = J.transpose(1, 2) @ J
        system = JtJ + torch.diag_embed(lam * JtJ.diagonal(dim1=1, dim2=2) + 1e-12)
        step = solve_positive_definite(system, -(J.transpose(1, 2) @ r[..., None]))[..., 0]
        candidate = params + step
        r_new = residuals(candidate, *data)
        cost_new = (r_new ** 2).sum(1)
        better = torch.isfinite(cost_new) & (cost_new < cost)
        converged = better & (cost - cost_new <= tolerance * cost)
        params = torch.where(better[:, None], candidate, params)
        r = torch.where(better[:, None], r_new, r)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better[:, None], lam * 0.3, lam * 10).clamp(1e-9, 1e9)
        # stop once every face either converged or cannot make progress at any damping
        if bool((converged | (lam[:, 0] >= 1e9)).all()):
            break
    return params


def solve_positive_definite(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(B, P, P) symmetric positive definite systems (damped normal equations), (B, P, k) -> (B, P, k).

    Cholesky: half the work of LU on these systems, and it avoids a hang of MKL's batched LU in
    torch's CPU wheels (seen with torch 2.13 on AMD EPYC: after ``torch.set_num_threads(n > 1)``
    a batch of systems with P >= ~146, e.g. the BFM's 150 pose + shape + expression unknowns,
    printed "Parameter 6 was incorrect on entry to DLASWP" and never returned).  A face whose
    system is not numerically positive definite is solved alone, by LU."""
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs, factor)
    for face in (info != 0).nonzero()[:, 0].tolist():
        solution[face] = torch.linalg.solve(system[face], rhs[face])
    return solution


def autodiff_jacobian(residuals: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``levenberg_marquardt``'s ``residuals`` -> a function of the same arguments giving (B, R, P)."""
    def single(p, *face_data):
        return residuals(p[None], *(d[None] for d in face_data))[0]

    # forward mode: P parameters (tens) are far fewer than R residuals (hundreds), so P jvps beat
    # R vjps; and reverse mode under vmap expanded the shared bases per residual row, which made a
    # batch of 8 faces cost 20x one face (forward: 1.6x; same result to the last bit)
    return torch.func.vmap(torch.func.jacfwd(single))
