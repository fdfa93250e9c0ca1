#!/usr/bin/env python3
"""Build the UV chart of the embedded default face model: ``src/deep3dface/data/default_face_uv.npz``.

The default model's mesh (``default_face_topology.npz``) is a front-face crop with two boundary
loops: the outer border and the open mouth.  One chart covers it:

1. **Fill the mouth** with a fan around a virtual vertex at the loop's centroid, so the mesh is a
   disk (the lips then stay apart in UV, with the mouth's inside as a small hole, instead of the
   map tearing around a slit).  The virtual vertex is dropped at the end.
2. **Tutte embedding with mean-value weights** (Floater 2003): the border goes onto a convex
   curve, every interior vertex sits at a positively weighted mean of its neighbours (one sparse
   solve per coordinate).  Positive weights and a convex border make the map one-to-one: no
   triangle can flip (Tutte's theorem), whatever the nostril pockets and the jaw underside do.
   The border curve is an ellipse shaped like the face's cylindrical projection, the border
   vertices spaced on it by their arc length in that projection.  Mean-value weights follow the 3D
   angles, so the map is close to conformal inside (measured: area-weighted median angle
   distortion 1.39, 95th percentile 1.76) while the fixed border spreads area evenly (95 % of the
   surface within a factor
   2.0 of its mean scale; single sliver triangles in the nostril pockets reach far more).
   A free-boundary least-squares conformal map (LSCM) was tried first: it keeps angles better
   but shrinks the middle of the face ~60× against the cheeks (the fanned mouth and the nostril
   pockets act like cones) and folded three triangles, so it was dropped.
3. **Orient and normalise**: a similarity (no reflection) aligns the chart to the mean shape's
   (x, y) by least squares (so the face stands upright, its left on the right as seen from the
   front), then it is scaled uniformly into [MARGIN, 1 − MARGIN]² and centred (aspect kept).

It checks: no triangle flipped (all uv areas positive) and prints the area/angle distortion
(``deep3dface.texture.uv.distortion``).  Deterministic; ~3 s on 2 cores.  The npz holds ``uv``
(float32 (N, 2)) and ``provenance`` (JSON: source topology hash, method, distortion stats).

Usage: python scripts/build_default_uv.py [--out PATH] [--check]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import factorized

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
OUT = REPO / "src" / "deep3dface" / "data" / "default_face_uv.npz"
FORMAT_VERSION = 1
MARGIN = 0.02          # empty border of the texture (room for the gutter fill of bilinear lookups)
CYLINDER_AXIS_Z = 0.6  # the border's cylindrical projection: axis 0.6 dm behind the centroid ...
CYLINDER_RADIUS = 1.0  # ... and a radius of 1 dm (about a head's), giving the border's shape


def boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """Boundary loops as vertex sequences, each following its triangles' winding."""
    directed = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    seen = {(int(a), int(b)) for a, b in directed}
    nxt = {a: b for a, b in seen if (b, a) not in seen}   # a boundary edge has no twin
    loops = []
    while nxt:
        start = next(iter(nxt))
        loop, v = [], start
        while v in nxt:
            loop.append(v)
            v = nxt.pop(v)
        loops.append(np.array(loop, np.int64))
    return sorted(loops, key=len)


def fill_hole(vertices, triangles, loop):
    """Fan the loop around a new vertex at its centroid (winding opposite to the loop's edges)."""
    centre = len(vertices)
    fan = np.stack([np.roll(loop, -1), loop, np.full(len(loop), centre)], 1)
    return np.vstack([vertices, vertices[loop].mean(0)]), np.vstack([triangles, fan])


def mean_value_weights(vertices: np.ndarray, triangles: np.ndarray) -> sp.csr_matrix:
    """Floater's mean-value weights w_ij = (tan(α/2) + tan(β/2)) / |p_j − p_i| (α, β: the angles at i
    beside edge ij), from the 3D triangles: positive for every edge, so Tutte's theorem applies."""
    rows, cols, weights = [], [], []
    for k in range(3):
        i, j, l = triangles[:, k], triangles[:, (k + 1) % 3], triangles[:, (k + 2) % 3]
        a, c = vertices[j] - vertices[i], vertices[l] - vertices[i]
        half = np.tan(0.5 * np.arctan2(np.linalg.norm(np.cross(a, c), axis=1), (a * c).sum(1)))
        rows += [i, i]
        cols += [j, l]
        weights += [half / np.linalg.norm(a, axis=1), half / np.linalg.norm(c, axis=1)]
    n = len(vertices)
    return sp.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()


def boundary_on_ellipse(vertices: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """Border positions on an ellipse shaped like the face's cylindrical projection, spaced by arc
    length along the border in that projection (monotonic, so the boundary polygon is simple and
    convex), starting at the border vertex due right of the centre."""
    theta = np.arctan2(vertices[loop, 0], vertices[loop, 2] + CYLINDER_AXIS_Z)
    cyl = np.stack([theta * CYLINDER_RADIUS, vertices[loop, 1]], 1)
    centre, half = (cyl.max(0) + cyl.min(0)) / 2, (cyl.max(0) - cyl.min(0)) / 2
    rel = (cyl - centre) / half
    start = int(np.argmin(np.abs(np.arctan2(rel[:, 1], rel[:, 0]))))
    cyl = np.roll(cyl, -start, axis=0)
    steps = np.linalg.norm(np.diff(np.vstack([cyl, cyl[:1]]), axis=0), axis=1)
    phi = 2 * np.pi * np.r_[0.0, np.cumsum(steps)[:-1]] / steps.sum()
    return np.roll(np.stack([half[0] * np.cos(phi), half[1] * np.sin(phi)], 1), start, axis=0)


def tutte(vertices: np.ndarray, triangles: np.ndarray, border: np.ndarray, border_uv: np.ndarray) -> np.ndarray:
    """Each interior vertex at the weighted mean of its neighbours, the border fixed: (N, 2) uv."""
    W = mean_value_weights(vertices, triangles)
    L = (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()
    interior = np.setdiff1d(np.arange(len(vertices)), border)
    A, B = L[interior][:, interior].tocsc(), L[interior][:, border]
    uv = np.zeros((len(vertices), 2))
    uv[border] = border_uv
    solve = factorized(A)
    for k in range(2):
        uv[interior, k] = solve(-(B @ border_uv[:, k]))
    return uv


def align_and_normalise(uv: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Similarity (rotation + scale + shift, no reflection) taking uv closest to target, then
    uniform scaling into [MARGIN, 1 − MARGIN]² centred."""
    zu = (uv[:, 0] - uv[:, 0].mean()) + 1j * (uv[:, 1] - uv[:, 1].mean())
    zt = (target[:, 0] - target[:, 0].mean()) + 1j * (target[:, 1] - target[:, 1].mean())
    rotation = np.vdot(zu, zt)                                  # least-squares complex factor
    zu = zu * rotation / abs(rotation)
    out = np.stack([zu.real, zu.imag], 1)
    lo, hi = out.min(0), out.max(0)
    scale = (1 - 2 * MARGIN) / (hi - lo).max()
    return (out - (lo + hi) / 2) * scale + 0.5


def build() -> tuple[np.ndarray, dict]:
    from deep3dface.morphable.formats.embedded import load_embedded_default, load_topology
    from deep3dface.texture.uv import distortion, triangles_digest

    data = load_embedded_default()
    vertices, triangles = data.mean_shape, data.triangles
    loops = boundary_loops(triangles)
    if len(loops) != 2:
        raise RuntimeError(f"expected the mouth and the outer border, found {len(loops)} boundary loops")
    mouth, border = loops
    filled_v, filled_t = fill_hole(vertices, triangles, mouth)
    uv = tutte(filled_v, filled_t, border, boundary_on_ellipse(vertices, border))[: len(vertices)]
    uv = align_and_normalise(uv, vertices[:, :2])
    stats = distortion(vertices, uv, triangles)
    if stats["flipped"]:
        raise RuntimeError(f"{stats['flipped']} triangles flipped in UV")
    summary = {k: v for k, v in stats.items() if k not in ("area", "angle")}
    provenance = {
        "format_version": FORMAT_VERSION,
        "script": "scripts/build_default_uv.py",
        "method": "Tutte embedding, mean-value weights, border on an ellipse by arc length of its cylindrical "
                  "projection, mouth filled by a fan; similarity-aligned to the mean shape's xy, "
                  f"normalised into [{MARGIN}, {1 - MARGIN}]^2",
        "topology_provenance_source_sha256": json.loads(str(load_topology()["provenance"]))["source_sha256"],
        "triangles_sha256": triangles_digest(triangles),
        "vertices": len(vertices),
                "distortion": summary,
    }
    return uv.astype(np.float32), provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing")
    args = parser.parse_args()
    start = time.perf_counter()
    uv, provenance = build()
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2), **provenance["distortion"]}))
    if args.check:
        with np.load(args.out) as z:
            diff = float(np.abs(z["uv"] - uv).max())
        print(f"max |uv - shipped| = {diff:.2e}")
        sys.exit(0 if diff < 1e-5 else 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, uv=uv, provenance=np.array(json.dumps(provenance, sort_keys=True)))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
