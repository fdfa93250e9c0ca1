"""Deep3D's ``BFM_model_front.mat`` (built by Deep3DFaceRecon's ``transferBFM09`` from the licensed
BFM 2009 and Guo et al.'s expression basis).

Layout (N vertices, F triangles; indices 1-based floats, MATLAB style):
meanshape (1, 3N) row, idBase (3N, 80), exBase (3N, 64, sometimes float64), meantex (1, 3N) in
0–255, texBase (3N, 80) in 0–255, tri (F, 3), point_buf (N, 8) padded with F+1, keypoints (1, 68),
frontmask2_idx (Nf, 1), tri_mask2 (Ff, 3) indexing *into frontmask2_idx*, skinmask (1, N).
The loader converts to ``ModelData`` conventions: 0-based indices, centred mean shape (the
reference's ``recenter=True``), albedo in [0, 1], front triangles re-expressed with full-mesh ids.

Companion files: Deep3D's BFM folder also holds the front model's vertex ids in the *full* BFM 2009
(53,490 vertices), which the full-BFM tables (``BFM_UV.mat``) are indexed with.  They are either
``select_vertex_id.mat`` (``select_id``, the composition) or ``BFM_front_idx.mat`` (``idx``: ids into
the 53,215-vertex trimmed topology) with ``BFM_exp_idx.mat`` (``trimIndex``: trimmed -> full), so
the ids are ``trimIndex[idx]`` as ``transferBFM09`` selects its rows.  When either set lies beside
the model file, the loader stores those ids as ``ModelData.source_vertex_ids``; files that do not
fit the model are ignored with a warning (they would scramble a UV map, but must not stop a fit).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...io.mat import read_mat
from ..data import ModelData

REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf",
                 "keypoints", "frontmask2_idx", "tri_mask2", "skinmask")
UNIT = "decimetre"
SELECT_IDS_FILE = "select_vertex_id.mat"            # key select_id: full-BFM ids, 1-based
FRONT_IDX_FILE, TRIM_INDEX_FILE = "BFM_front_idx.mat", "BFM_exp_idx.mat"   # keys idx, trimIndex
BFM_FULL_VERTICES, BFM_TRIMMED_VERTICES = 53490, 53215
SOURCE_PREFIX = "Deep3D BFM_model_front.mat: "


def is_deep3d_mat(path: Path) -> bool:
    """Whether ``path`` is a MAT v5 file holding the Deep3D model's arrays, by its contents (a
    user's copy may have any name)."""
    from scipy.io import whosmat

    try:
        names = {name for name, _, _ in whosmat(str(path), appendmat=False)}
    except Exception:  # not a MAT v5 file: let the loader report it
        return False
    return "meanshape" in names and "idBase" in names


def _one_based(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).round().astype(np.int64) - 1


def load_deep3d_mat(path: str | Path) -> ModelData:
    """Read a ``BFM_model_front.mat``; a clear error names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such face-model file")
    try:
        mat = read_mat(path)
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
        source=f"{SOURCE_PREFIX}{path}",
        source_vertex_ids=full_bfm_vertex_ids(path.parent, len(mean_shape)),
    )


def model_file(data: ModelData) -> Path | None:
    """The ``BFM_model_front.mat`` a model was loaded from (None for other models): its folder holds
    the companion files (``BFM_UV.mat``, ...)."""
    return Path(data.source[len(SOURCE_PREFIX):]) if data.source.startswith(SOURCE_PREFIX) else None


def full_bfm_vertex_ids(folder: Path, num_vertices: int) -> np.ndarray | None:
    """0-based full-BFM ids of the front model's vertices from the companion files in ``folder``, or
    None when they are absent or do not fit (a warning says which file and why)."""
    select, front, trim = (folder / name for name in (SELECT_IDS_FILE, FRONT_IDX_FILE, TRIM_INDEX_FILE))
    try:
        if select.is_file():
            source, ids = select, _one_based(read_mat(select)["select_id"]).reshape(-1)
        elif front.is_file() and trim.is_file():
            source = front
            idx = _one_based(read_mat(front)["idx"]).reshape(-1)
            trim_index = _one_based(read_mat(trim)["trimIndex"]).reshape(-1)
            if len(trim_index) != BFM_TRIMMED_VERTICES or idx.min() < 0 or idx.max() >= len(trim_index):
                raise ValueError(f"trimIndex must have {BFM_TRIMMED_VERTICES} entries and idx index into it")
            ids = trim_index[idx]
        else:
            return None
    except (KeyError, ValueError, OSError) as exc:
        warnings.warn(f"{folder}: ignoring the full-BFM vertex ids: {exc!r}", stacklevel=3)
        return None
    low, high = ids.min(initial=0), ids.max(initial=0)
    if len(ids) != num_vertices or low < 0 or high >= BFM_FULL_VERTICES:
        warnings.warn(f"{source}: ignored: {len(ids)} ids in [{low}, {high}] do not fit a model of {num_vertices} "
                      f"vertices in the full BFM's {BFM_FULL_VERTICES}", stacklevel=3)
        return None
    return ids
