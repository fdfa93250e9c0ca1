"""Deep3D's ``BFM_model_front.mat`` (built by Deep3DFaceRecon's ``transferBFM09`` from the licensed
BFM 2009 and Guo et al.'s expression basis).

Layout (N vertices, F triangles; indices 1-based floats, MATLAB style):
meanshape (1, 3N) row, idBase (3N, 80), exBase (3N, 64, sometimes float64), meantex (1, 3N) in
0–255, texBase (3N, 80) in 0–255, tri (F, 3), point_buf (N, 8) padded with F+1, keypoints (1, 68),
frontmask2_idx (Nf, 1), tri_mask2 (Ff, 3) indexing *into frontmask2_idx*, skinmask (1, N).
The loader converts to ``ModelData`` conventions: 0-based indices, centred mean shape (the
reference's ``recenter=True``), albedo in [0, 1], front triangles re-expressed with full-mesh ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import ModelData

REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf",
                 "keypoints", "frontmask2_idx", "tri_mask2", "skinmask")
UNIT = "decimetre"


def is_deep3d_mat(path: Path) -> bool:
    if path.suffix.lower() != ".mat":
        return False
    from scipy.io import whosmat

    try:
        names = {name for name, _, _ in whosmat(str(path))}
    except Exception:  # not a MAT v5 file: let the loader report it
        return False
    return "meanshape" in names and "idBase" in names


def _one_based(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).round().astype(np.int64) - 1


def load_deep3d_mat(path: str | Path) -> ModelData:
    """Read a ``BFM_model_front.mat``; a clear error names the file and what is wrong."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such face-model file")
    try:
        mat = loadmat(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable MATLAB file ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in mat]
    if missing:
        raise ValueError(f"{path}: not a Deep3D BFM_model_front.mat: missing keys {', '.join(missing)} "
                         f"(expected {', '.join(REQUIRED_KEYS)})")

    mean_shape = np.asarray(mat["meanshape"], np.float64).reshape(-1, 3)
    mean_shape = mean_shape - mean_shape.mean(axis=0, keepdims=True)
    front_vertices = _one_based(mat["frontmask2_idx"]).reshape(-1)
    front_triangles_local = _one_based(mat["tri_mask2"])
    return ModelData(
        name=path.stem,
        unit=UNIT,
        mean_shape=mean_shape,
        id_basis=np.asarray(mat["idBase"], np.float64),
        exp_basis=np.asarray(mat["exBase"], np.float64),
        mean_albedo=np.asarray(mat["meantex"], np.float64).reshape(-1, 3) / 255.0,
        albedo_basis=np.asarray(mat["texBase"], np.float64) / 255.0,
        triangles=_one_based(mat["tri"]),
        keypoints=_one_based(mat["keypoints"]).reshape(-1),
        front_vertices=front_vertices,
        front_triangles=front_vertices[front_triangles_local],
        skin_mask=np.asarray(mat["skinmask"], np.float32).reshape(-1),
        point_buf=_one_based(mat["point_buf"]),
        source=f"Deep3D BFM_model_front.mat: {path}",
    )
