"""The arrays that define a linear face model, independent of torch and of file formats.

Conventions (owned here, shared by every format):

* **Model space** is right-handed: x to the subject's left (image right), y up, +z from the face
  towards the camera.  The unit is stored with the model (``unit``); every shipped format uses
  decimetres, as Deep3D's BFM front model does (BFM micrometres × 1e-5).  The mean shape is centred.
* **Interleaving**: a ``3N`` axis is ordered per vertex, then per component: ``[x0, y0, z0, x1, ...]``
  for shapes and ``[r0, g0, b0, r1, ...]`` for albedo.  Row ``3*v + k`` of a basis is component k of
  vertex v.
* **Bases are scaled** so that every coefficient is a priori N(0, 1): the regularisation weights of
  the fitter assume it.
* **Albedo** is RGB in [0, 1] (Deep3D stores 0–255; its loader divides).  A model may have no albedo
  basis (``albedo_basis`` with 0 columns): the fitter then estimates per-vertex albedo.
* **Indices** are 0-based int64.  Triangles are counter-clockwise seen from outside, so the normal
  ``(v0 - v1) × (v1 - v2)`` points out of the face.  MATLAB's 1-based indices are converted in the
  format loaders and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class ModelData:
    """A linear 3D morphable model as plain numpy arrays (N vertices, F triangles)."""

    name: str
    unit: str
    mean_shape: np.ndarray        # float64 (N, 3), centred
    id_basis: np.ndarray          # float64 (3N, K_id)
    exp_basis: np.ndarray         # float64 (3N, K_exp)
    mean_albedo: np.ndarray       # float64 (N, 3), RGB in [0, 1]
    albedo_basis: np.ndarray      # float64 (3N, K_tex), K_tex may be 0
    triangles: np.ndarray         # int64 (F, 3), CCW outward
    keypoints: np.ndarray         # int64 (68,), iBUG order
    front_vertices: np.ndarray    # int64 (Nf,), ascending: the photometric region
    front_triangles: np.ndarray   # int64 (Ff, 3), full-mesh ids, all vertices in front_vertices
    skin_mask: np.ndarray         # float32 (N,), 1 on skin used by the reflectance loss
    point_buf: np.ndarray         # int64 (N, V): adjacent triangle ids ascending, padded with F
    source: str = ""
    source_vertex_ids: np.ndarray | None = field(default=None)  # ids in the model's parent topology

    def __post_init__(self) -> None:
        n = self.mean_shape.shape[0]
        checks = {
            "mean_shape": self.mean_shape.shape == (n, 3),
            "id_basis": self.id_basis.shape[0] == 3 * n,
            "exp_basis": self.exp_basis.shape[0] == 3 * n,
            "mean_albedo": self.mean_albedo.shape == (n, 3),
            "albedo_basis": self.albedo_basis.shape[0] == 3 * n,
            "triangles": self.triangles.ndim == 2 and self.triangles.shape[1] == 3,
            "keypoints": self.keypoints.shape == (68,),
            "skin_mask": self.skin_mask.shape == (n,),
            "point_buf": self.point_buf.shape[0] == n,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"model {self.name!r}: inconsistent array shapes: {', '.join(bad)}")
        f = len(self.triangles)
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise ValueError(f"model {self.name!r}: triangle indices outside [0, {n})")
        if self.point_buf.size and (self.point_buf.min() < 0 or self.point_buf.max() > f):
            raise ValueError(f"model {self.name!r}: point_buf indices outside [0, {f}]")

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def sizes(self) -> dict[str, int]:
        return {"id": self.id_basis.shape[1], "exp": self.exp_basis.shape[1], "tex": self.albedo_basis.shape[1]}


def vertex_triangle_adjacency(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
    """(N, V) int64: for each vertex the ids of the triangles that use it, ascending, padded with F.

    This is Deep3D's ``point_buf`` (0-based), which its normals sum over; V is the largest valence.
    """
    triangles = np.asarray(triangles, np.int64)
    f = len(triangles)
    vert = triangles.reshape(-1)
    tri = np.repeat(np.arange(f, dtype=np.int64), 3)
    order = np.lexsort((tri, vert))
    vert, tri = vert[order], tri[order]
    counts = np.bincount(vert, minlength=num_vertices)
    width = max(int(counts.max(initial=0)), 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(vert)) - starts[vert]
    out = np.full((num_vertices, width), f, dtype=np.int64)
    out[vert, slot] = tri
    return out
