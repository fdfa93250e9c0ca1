"""Pure geometry of the face model: rotations and vertex normals.

Rotation convention: angles (x, y, z) = (pitch, yaw, roll) in radians and R = Rz·Ry·Rx acting on
column vectors (p' = R p).  The reference (Deep3DFaceRecon_pytorch) stores Rᵀ and multiplies row
vectors; the two agree: ``p_row @ R.T == (R @ p_col).T``.  Normals rotate with R.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) pitch, yaw, roll in radians -> (B, 3, 3) R = Rz(roll)·Ry(yaw)·Rx(pitch)."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])
    cx, cy, cz = cos.unbind(1)
    sx, sy, sz = sin.unbind(1)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def rotation_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) pitch, yaw, roll -> (B, 3, 3, 3): dR/d(pitch, yaw, roll) of ``rotation_matrix``."""
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


def angles_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rotation_matrix`` for |yaw| < 90°: (B, 3, 3) -> (B, 3) pitch, yaw, roll."""
    yaw = torch.asin(torch.clamp(-rotation[:, 2, 0], -1.0, 1.0))
    pitch = torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2])
    roll = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])
    return torch.stack([pitch, yaw, roll], dim=1)


def face_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(B, N, 3), (F, 3) -> (B, F, 3) unit normals ``(v0 - v1) × (v1 - v2)`` (outward for CCW)."""
    v0, v1, v2 = (vertices[:, triangles[:, k]] for k in range(3))
    return F.normalize(torch.linalg.cross(v0 - v1, v1 - v2, dim=-1), dim=-1, eps=1e-12)


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor, point_buf: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) unit vertex normals: the normalised sum of the unit normals of adjacent triangles.

    ``point_buf`` (N, V) lists each vertex's triangles, padded with F (a zero normal), as Deep3D
    does; the sum is not area weighted, which is what the reference computes.
    """
    normals = face_normals(vertices, triangles)
    normals = torch.cat([normals, torch.zeros_like(normals[:, :1])], dim=1)
    return F.normalize(normals[:, point_buf].sum(dim=2), dim=-1, eps=1e-12)
