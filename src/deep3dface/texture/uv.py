"""UV coordinates of the face models, and the UV conventions of the texture code.

Conventions (owned here, shared by baking and the textured exporters):

* **UV**: (N, 2) float per vertex, one chart, u to the right and v **up**, both in [0, 1]; (0, 0) is
  the bottom-left corner of the texture image.  This is the OBJ / trimesh / BFM_UV.mat convention
  (glTF's v runs down: ``export.gltf`` writes 1 − v, and trimesh flips it back when reading).
* **Texture images** follow the library's image convention: float (3, S, S) RGB in [0, 1], rows
  top to bottom, pixel centres at (j + 0.5, i + 0.5).  A uv maps to the texel-space point
  ``(u·S, (1 − v)·S)`` (corner origin, y down, the renderer's pixel frame), so a texture map can be
  rasterised with ``render.rasterize`` like any image.
* **Orientation**: a face's triangles, counter-clockwise seen from outside, are counter-clockwise
  in (u, v) too (positive signed area): the map shows the face as seen from the front, the
  subject's left (+x) on the right.  A triangle with negative area is a **flip** (a fold).

Sources by model kind (``UV_SOURCES``):

* ``"default"``: the embedded model's chart, shipped as ``data/default_face_uv.npz`` (built by
  ``scripts/build_default_uv.py``: a least-squares conformal map, see there).
* ``"deep3d"``: a user's ``BFM_UV.mat`` (key ``UV``, 53,490 rows: one per vertex of the *full*
  BFM 2009) indexed with the front model's BFM vertex ids.  Those are ``trimIndex[idx]``: Deep3D's
  ``BFM_front_idx.mat`` (``idx``) indexes the 53,215-vertex trimmed topology, and
  ``BFM_exp_idx.mat`` (``trimIndex``) maps that to the full BFM; ``select_vertex_id.mat`` stores the
  composition.  Indexing BFM_UV with ``idx`` directly (as the seed port did) reads rows of other
  vertices and scrambles the map: ``front_model_bfm_ids`` makes the composition explicit.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numba
import numpy as np
import torch

from ..io.mat import read_mat
from ..morphable.data import ModelData
# the full BFM 2009 (BFM_UV.mat's rows) and the trimmed topology BFM_front_idx.mat indexes
from ..morphable.formats.deep3d import BFM_FULL_VERTICES, BFM_TRIMMED_VERTICES, SOURCE_PREFIX
from ..threads import numba_follows_torch

DEFAULT_UV_FILE = "default_face_uv.npz"


def uv_coordinates(model_or_data, *, bfm_uv=None, bfm_vertex_ids=None) -> np.ndarray:
    """(N, 2) float32 uv per vertex of a model (``MorphableModel`` or ``ModelData``).

    The source is chosen by the model's kind (``model_kind``).  Deep3D models need ``bfm_uv`` (a
    path to ``BFM_UV.mat`` or its (53490, 2) array) and ``bfm_vertex_ids`` (the front model's ids in
    the full BFM: an array, or a path to ``select_vertex_id.mat``; see ``front_model_bfm_ids``).
    """
    data = getattr(model_or_data, "data", model_or_data)
    if not isinstance(data, ModelData):
        raise TypeError("uv_coordinates takes a MorphableModel or ModelData")
    kind = model_kind(data)
    if kind not in UV_SOURCES:
        raise ValueError(f"model {data.name!r} ({kind}) has no UV source; known kinds: {', '.join(UV_SOURCES)}")
    uv = UV_SOURCES[kind](data, bfm_uv=bfm_uv, bfm_vertex_ids=bfm_vertex_ids)
    if uv.shape != (data.num_vertices, 2):
        raise ValueError(f"uv table has shape {uv.shape}, model {data.name!r} has {data.num_vertices} vertices")
    return uv


def model_kind(data: ModelData) -> str:
    if data.name == "default":
        return "default"
    if data.source.startswith(SOURCE_PREFIX):
        return "deep3d"
    return data.name


def load_default_uv(data: ModelData | None = None, **_) -> np.ndarray:
    """The shipped chart of the embedded default model; checks it belongs to ``data``'s triangles."""
    path = files("deep3dface") / "data" / DEFAULT_UV_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `python scripts/build_default_uv.py`")
    with path.open("rb") as fh, np.load(fh) as z:
        uv, provenance = z["uv"], json.loads(str(z["provenance"]))
    if data is not None and provenance["triangles_sha256"] != triangles_digest(data.triangles):
        raise ValueError(f"{DEFAULT_UV_FILE} was built for another topology; rebuild it with "
                         "`python scripts/build_default_uv.py`")
    return uv.astype(np.float32)


def load_deep3d_uv(data: ModelData, *, bfm_uv=None, bfm_vertex_ids=None) -> np.ndarray:
    if bfm_uv is None:
        raise ValueError("a Deep3D model's UV comes from BFM_UV.mat: pass bfm_uv=path (or its array)")
    if bfm_vertex_ids is None:
        bfm_vertex_ids = data.source_vertex_ids
    if bfm_vertex_ids is None:
        raise ValueError("pass bfm_vertex_ids: the front model's ids in the full BFM (select_vertex_id.mat, "
                         "or front_model_bfm_ids(BFM_front_idx, trimIndex)); BFM_front_idx alone is wrong")
    table = load_bfm_uv(bfm_uv) if isinstance(bfm_uv, (str, Path)) else np.asarray(bfm_uv)
    ids = load_vertex_ids(bfm_vertex_ids) if isinstance(bfm_vertex_ids, (str, Path)) else bfm_vertex_ids
    return bfm_uv_coordinates(table, ids)


UV_SOURCES: dict[str, Callable[..., np.ndarray]] = {"default": load_default_uv, "deep3d": load_deep3d_uv}


def load_bfm_uv(path: str | Path) -> np.ndarray:
    """BFM_UV.mat's ``UV`` table: (53490, 2) float64, one row per full-BFM vertex, v up."""
    table = np.asarray(read_mat(path)["UV"], np.float64)
    if table.shape != (BFM_FULL_VERTICES, 2):
        raise ValueError(f"{path}: UV has shape {table.shape}, expected ({BFM_FULL_VERTICES}, 2) (the full BFM)")
    return table


def load_vertex_ids(path: str | Path, key: str | None = None) -> np.ndarray:
    """0-based int64 ids from a MATLAB file of 1-based ids (``select_vertex_id.mat``: its one array)."""
    mat = {k: v for k, v in read_mat(path).items() if not k.startswith("__")}
    if key is None:
        if len(mat) != 1:
            raise ValueError(f"{path}: holds {sorted(mat)}; name the key of the vertex ids")
        key = next(iter(mat))
    return np.asarray(mat[key]).reshape(-1).round().astype(np.int64) - 1


def front_model_bfm_ids(front_idx: np.ndarray, trim_index: np.ndarray) -> np.ndarray:
    """Full-BFM ids of the front model's vertices: ``trimIndex[idx]`` (both 0-based), as Deep3D's
    ``transferBFM09`` selects its rows."""
    front_idx, trim_index = np.asarray(front_idx, np.int64).ravel(), np.asarray(trim_index, np.int64).ravel()
    if len(trim_index) != BFM_TRIMMED_VERTICES or front_idx.max(initial=0) >= len(trim_index):
        raise ValueError(f"trimIndex must have {BFM_TRIMMED_VERTICES} entries and front_idx index into it")
    return trim_index[front_idx]


def bfm_uv_coordinates(table: np.ndarray, bfm_vertex_ids: np.ndarray) -> np.ndarray:
    """Rows of the full-BFM UV table for the given full-BFM vertex ids, float32 (N, 2)."""
    table, ids = np.asarray(table), np.asarray(bfm_vertex_ids, np.int64).ravel()
    if table.ndim != 2 or table.shape[1] != 2:
        raise ValueError(f"a UV table is (V, 2), got {table.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
        raise ValueError(f"vertex ids outside the UV table's {len(table)} rows")
    return table[ids].astype(np.float32)


# -- measurements of a chart --------------------------------------------------------------------
def signed_areas(uv: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(F,) signed uv areas; positive for a triangle that keeps its orientation, negative: a flip."""
    a, b, c = (np.asarray(uv, np.float64)[triangles[:, k]] for k in range(3))
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))


def distortion(vertices: np.ndarray, uv: np.ndarray, triangles: np.ndarray) -> dict:
    """Per-triangle stretch of the map surface → uv, globally rescaled so total areas agree.

    With σ1 ≥ σ2 the singular values of each triangle's Jacobian: ``area`` = σ1·σ2 (1: area kept),
    ``angle`` = σ1/σ2 (1: conformal).  Returns the arrays and area-weighted summary numbers.
    """
    p = np.asarray(vertices, np.float64)[triangles]
    q = np.asarray(uv, np.float64)[triangles]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    area3 = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    x = e1 / np.linalg.norm(e1, axis=1, keepdims=True)          # local orthonormal frame of each triangle
    y = np.cross(np.cross(e1, e2), e1)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    local = np.stack([np.stack([(e * x).sum(1), (e * y).sum(1)], 1) for e in (e1, e2)], 2)   # (F, 2, 2)
    image = np.stack([q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]], 2)                              # (F, 2, 2)
    jac = image @ np.linalg.inv(local) * np.sqrt(area3.sum() / np.abs(signed_areas(uv, triangles)).sum())
    s = np.linalg.svd(jac, compute_uv=False)
    area, angle = s[:, 0] * s[:, 1], s[:, 0] / np.maximum(s[:, 1], 1e-12)
    weights = area3 / area3.sum()

    def wq(v, qs):  # area-weighted quantiles
        order = np.argsort(v)
        return [float(np.interp(q_, np.cumsum(weights[order]), v[order])) for q_ in qs]

    log_area = np.abs(np.log2(area))
    return {"area": area, "angle": angle,
            "flipped": int((signed_areas(uv, triangles) <= 0).sum()),
            "angle_p50_p95_max": [*wq(angle, (0.5, 0.95)), float(angle.max())],
            "area_log2_p50_p95_max": [*wq(log_area, (0.5, 0.95)), float(log_area.max())],
            "area_ratio_p5_p95": wq(area, (0.05, 0.95))}


def triangles_digest(triangles: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(triangles, np.int64)).tobytes()).hexdigest()


# -- texel frame ----------------------------------------------------------------------------------
def uv_to_texel(uv: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 2) uv -> (..., 2) texel-space points (corner origin, y down) of a size × size map."""
    return torch.stack([uv[..., 0] * size, (1 - uv[..., 1]) * size], -1)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup: texture (C, S, S), uv (P, 2) -> (P, C); edges clamp (texture wraps nowhere)."""
    size = texture.shape[-1]
    return sample_image(texture, uv_to_texel(uv.to(texture.dtype), size))


def sample_image(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of (C, H, W) at (P, 2) corner-origin pixel points -> (P, C), clamped at edges.
    CPU float32 / float64 without autograd runs ``_bilinear_nb`` (a compiled loop, ~10x faster for
    a 1024² map's 700k texels); ``sample_image_reference`` is its oracle and the autograd path."""
    if (image.device.type == "cpu" and points.device.type == "cpu" and image.dtype == points.dtype
            and image.dtype in (torch.float32, torch.float64) and image.shape[-1] >= 2 and image.shape[-2] >= 2
            and not (torch.is_grad_enabled() and (image.requires_grad or points.requires_grad))):
        out = torch.empty(points.shape[0], image.shape[0], dtype=image.dtype)
        with numba_follows_torch():   # a parallel launch would otherwise reset torch's thread count
            _bilinear_nb(image.contiguous().numpy(), points.contiguous().numpy(), out.numpy())
        return out
    return sample_image_reference(image, points)


def sample_image_reference(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``sample_image`` in torch operations (differentiable; the oracle of the compiled loop)."""
    channels, height, width = image.shape
    x = (points[:, 0] - 0.5).clamp(0, width - 1)
    y = (points[:, 1] - 0.5).clamp(0, height - 1)
    x0, y0 = x.floor().long().clamp(max=width - 2), y.floor().long().clamp(max=height - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    flat = image.reshape(channels, -1).T.contiguous()     # gathers of whole rows
    at = lambda yy, xx: flat[yy * width + xx]  # noqa: E731
    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


@numba.njit(cache=True, parallel=True)
def _bilinear_nb(image, points, out):  # pragma: no cover - compiled
    """``sample_image_reference``'s arithmetic, operation for operation, in the inputs' dtype (no
    fastmath: the same IEEE results); a NaN point gives NaN colours."""
    channels, height, width = image.shape
    half, zero = image.dtype.type(0.5), image.dtype.type(0.0)
    one = image.dtype.type(1.0)
    for k in numba.prange(points.shape[0]):
        if not (points[k, 0] == points[k, 0] and points[k, 1] == points[k, 1]):
            out[k, :] = np.nan                           # NaN in, NaN out (never an index from NaN)
            continue
        x = min(max(points[k, 0] - half, zero), image.dtype.type(width - 1))
        y = min(max(points[k, 1] - half, zero), image.dtype.type(height - 1))
        x0, y0 = min(int(math.floor(x)), width - 2), min(int(math.floor(y)), height - 2)
        fx, fy = x - image.dtype.type(x0), y - image.dtype.type(y0)
        for c in range(channels):
            top = image[c, y0, x0] * (one - fx) + image[c, y0, x0 + 1] * fx
            bottom = image[c, y0 + 1, x0] * (one - fx) + image[c, y0 + 1, x0 + 1] * fx
            out[k, c] = top * (one - fy) + bottom * fy
