"""Every export format round-trips: what we write, trimesh (or scipy) reads back the same."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import trimesh

from deep3dface.export import (MESH_FORMATS, OutputExistsError, coefficients_to_mat, export_mesh,
                               read_coefficients_mat, write_mesh, write_output)
from deep3dface.morphable import load_model
from deep3dface.types import DEEP3D_LAYOUT, Coefficients, Mesh


@pytest.fixture(scope="module")
def face_mesh(conformance):
    """A posed, lit face of the tiny conformance model (real reference coefficients)."""
    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    vectors = np.load(conformance / "bfm_vectors.npz")
    geometry = model(Coefficients.from_vector(torch.as_tensor(vectors["coeffs_f64"][4:5])))
    return Mesh(vertices=geometry.vertices[0].numpy(), triangles=model.triangles.numpy(),
                colours=np.clip(geometry.colour[0].numpy(), 0, 1), normals=geometry.normals[0].numpy())


def _load(data: bytes, fmt: str) -> trimesh.Trimesh:
    loaded = trimesh.load(io.BytesIO(data), file_type=fmt, process=False, force="mesh")
    assert isinstance(loaded, trimesh.Trimesh)
    return loaded


@pytest.mark.parametrize("fmt", sorted(MESH_FORMATS))
def test_mesh_round_trip(face_mesh, fmt):
    loaded = _load(export_mesh(face_mesh, fmt), fmt)
    scale = 10.0 if fmt == "glb" else 1.0  # glTF is in metres, the model in decimetres
    np.testing.assert_allclose(loaded.vertices * scale, face_mesh.vertices, atol=1e-5)
    np.testing.assert_array_equal(loaded.faces, face_mesh.triangles)
    colours = loaded.visual.vertex_colors[:, :3].astype(np.float64) / 255
    np.testing.assert_allclose(colours, face_mesh.colours, atol=0.5 / 255 + 1e-3)
    # winding survives: trimesh's face normals agree with ours (outward)
    ours = np.cross(*(face_mesh.vertices[face_mesh.triangles[:, k]] - face_mesh.vertices[face_mesh.triangles[:, 0]]
                      for k in (1, 2)))
    assert (np.einsum("ij,ij->i", loaded.face_normals, ours) > 0).mean() > 0.999


def test_obj_without_colours_and_normals(face_mesh):
    bare = Mesh(vertices=face_mesh.vertices, triangles=face_mesh.triangles)
    text = export_mesh(bare, "obj").decode()
    assert text.count("\nv ") == len(bare.vertices) and text.count("\nf ") == len(bare.triangles)
    np.testing.assert_allclose(_load(text.encode(), "obj").vertices, bare.vertices, atol=1e-6)


@pytest.mark.parametrize("fmt", ["ply", "glb"])
def test_ply_and_glb_without_colours_or_normals(face_mesh, fmt):
    from dataclasses import replace

    scale = 10.0 if fmt == "glb" else 1.0
    for mesh in (Mesh(vertices=face_mesh.vertices, triangles=face_mesh.triangles), replace(face_mesh, normals=None)):
        loaded = _load(export_mesh(mesh, fmt), fmt)
        np.testing.assert_allclose(loaded.vertices * scale, mesh.vertices, atol=1e-5)
        np.testing.assert_array_equal(loaded.faces, mesh.triangles)


def test_a_write_that_fails_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    import deep3dface.export as export

    class FullDisk:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.os, "fdopen", FullDisk)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'face.obj'}: No space left on device"):
        export.stage_output(tmp_path / "face.obj", b"v 0 0 0\n")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_bad_mesh():
    with pytest.raises(ValueError, match="unknown mesh format 'stl'"):
        export_mesh(Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]])), "stl")
    with pytest.raises(ValueError, match="index outside"):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 3]]))


def test_coefficients_mat_round_trip(conformance):
    vectors = np.load(conformance / "bfm_vectors.npz")
    coeffs = Coefficients.from_vector(torch.as_tensor(vectors["coeffs_f32"][5:6]), DEEP3D_LAYOUT)
    lm68 = np.random.default_rng(0).uniform(0, 224, (68, 2))
    data = coefficients_to_mat(coeffs, lm68=lm68)
    from scipy.io import loadmat

    mat = loadmat(io.BytesIO(data))
    assert mat["coeff"].shape == (1, 257) and mat["id"].shape == (1, 80) and mat["gamma"].shape == (1, 27)
    np.testing.assert_array_equal(mat["lm68"], lm68)
    back = read_coefficients_mat(data)
    torch.testing.assert_close(back.to_vector(), coeffs.to_vector())
    # a Deep3D (TensorFlow) style file with only the flat 'coeff'
    buffer = io.BytesIO()
    from scipy.io import savemat

    savemat(buffer, {"coeff": vectors["coeffs_f32"][5:6]})
    torch.testing.assert_close(read_coefficients_mat(buffer.getvalue()).to_vector(), coeffs.to_vector())


def test_bad_coefficient_files(tmp_path):
    with pytest.raises(ValueError, match="no coefficients"):
        read_coefficients_mat(_empty_mat())
    bad = tmp_path / "bad.mat"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="bad.mat: not a readable .mat"):
        read_coefficients_mat(bad)


def test_coefficient_files_with_text_or_non_finite_values(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "text.mat", {"coeff": "hello"})
    with pytest.raises(ValueError, match=r"text.mat: 'coeff' holds text, not real numbers"):
        read_coefficients_mat(tmp_path / "text.mat")
    coeffs = Coefficients.from_vector(torch.zeros(1, DEEP3D_LAYOUT.total), DEEP3D_LAYOUT)
    nan = coefficients_to_mat(coeffs.replace(angle=torch.tensor([[0.0, float("nan"), 0.0]])))
    with pytest.raises(ValueError, match=r"<bytes>: 'angle' holds values that are not finite"):
        read_coefficients_mat(nan)
    savemat(tmp_path / "huge.mat", {"coeff": np.full((1, DEEP3D_LAYOUT.total), 1e300)})   # inf as float32
    with pytest.raises(ValueError, match=r"huge.mat: 'coeff' holds values that are not finite"):
        read_coefficients_mat(tmp_path / "huge.mat")
    (tmp_path / "folder.mat").mkdir()
    with pytest.raises(ValueError, match=r"folder.mat is a folder, not a .mat file"):
        read_coefficients_mat(tmp_path / "folder.mat")


def _empty_mat() -> bytes:
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {"something": np.zeros(3)})
    return buffer.getvalue()


def test_write_refuses_to_overwrite_and_leaves_no_partial_file(tmp_path, face_mesh, monkeypatch):
    path = write_mesh(face_mesh, tmp_path / "face.ply")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="face.ply exists"):
        write_mesh(face_mesh, path)
    assert path.read_bytes() == before
    write_mesh(face_mesh, path, overwrite=True)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("deep3dface.export.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_output(tmp_path / "new.obj", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.ply"]


def test_written_files_get_the_permissions_of_a_plainly_created_file(tmp_path, face_mesh):
    """The atomic write goes through a private temporary file (0o600); the file in place must have
    what ``open(path, "w")`` gives under the umask (0o644 under the usual 0o022), so other users,
    web servers and viewers can read the outputs."""
    import os
    import stat

    for mask in (0o022, 0o077, 0o002):
        previous = os.umask(mask)
        try:
            plain = tmp_path / f"plain_{mask:o}.txt"
            plain.write_text("x")
            expected = stat.S_IMODE(plain.stat().st_mode)
            assert expected == 0o666 & ~mask
            for path in (write_output(tmp_path / f"data_{mask:o}.bin", b"data"),
                         write_mesh(face_mesh, tmp_path / f"face_{mask:o}.obj")):
                assert stat.S_IMODE(path.stat().st_mode) == expected, path
        finally:
            os.umask(previous)


def test_write_rows_writes_what_savetxt_writes():
    """The compiled formatter against savetxt (one ``%`` per row): random values over 14 decades,
    half-way cases, signed zeros, ints of both signs, and what only ``%`` can write (NaN, inf, 1e300)."""
    import io

    from deep3dface.export.meshes import write_rows

    rng = np.random.default_rng(0)
    spread = rng.normal(size=(3000, 6)) * 10.0 ** rng.integers(-8, 6, size=(3000, 6))
    for array, fmt in ((rng.normal(size=(50, 6)), "v %.6f %.6f %.6f %.4f %.4f %.4f"),
                       (spread, "v %.6f %.6f %.6f %.4f %.4f %.4f"),
                       (np.round(rng.normal(size=(2000, 3)), 7), "%.6f %.6f %.6f"),   # many near-ties
                       (np.array([[-0.0, 0.0, -1e-9, 2.5e-6], [0.5, 1.5, -2.5, 0.0078125]]), "%.6f %.6f %.0f %.3f"),
                       (rng.integers(1, 10_000, size=(40, 6)), "f %d//%d %d//%d %d//%d"),
                       (rng.integers(-10**15, 10**15, size=(100, 2)), "%d,%d;"),
                       (rng.integers(0, 255, size=(10, 3)).astype(np.uint8), "c %d %d %d"),
                       (rng.normal(size=(20, 3)).astype(np.float32), "vn %.5f %.5f %.5f"),
                       (np.array([[np.nan, np.inf, -np.inf], [1e300, 1.0, 2.0]]), "%.3f %.3f %.3f"),
                       (np.full((500, 2), -0.0), "%.19f %.21f"),                    # long numbers
                       (np.array([[np.iinfo(np.int64).min, np.iinfo(np.int64).max]]), "%d %d"),
                       (np.zeros(0), "%.3f"),
                       (np.zeros((0, 3)), "vn %.5f %.5f %.5f")):
        expected, got = io.StringIO(), io.StringIO()
        np.savetxt(expected, array, fmt=fmt)
        write_rows(got, array, fmt)
        assert got.getvalue() == expected.getvalue(), fmt


def _glb_parts(data: bytes) -> tuple[dict, bytes]:
    """The JSON document and binary chunk of a GLB, checking the container on the way (glTF 2.0 §4.4)."""
    import json
    import struct

    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_length % 4 == 0
    document = json.loads(data[20:20 + json_length])
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + json_length)
    assert bin_type == b"BIN\0" and bin_length % 4 == 0
    binary = data[28 + json_length:28 + json_length + bin_length]
    assert 28 + json_length + bin_length == len(data)
    assert document["buffers"][0]["byteLength"] <= bin_length
    for view in document["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= document["buffers"][0]["byteLength"]
    return document, binary


def test_glb_is_valid_gltf_and_holds_the_arrays(face_mesh):
    """The container and every accessor, read back by hand: positions in metres with their bounds,
    normals, 8-bit colours, indices."""
    document, binary = _glb_parts(export_mesh(face_mesh, "glb"))
    sizes = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
    dtypes = {5126: np.float32, 5121: np.uint8, 5125: np.uint32}

    def read(index):
        accessor = document["accessors"][index]
        view = document["bufferViews"][accessor["bufferView"]]
        values = np.frombuffer(binary, dtypes[accessor["componentType"]], accessor["count"] * sizes[accessor["type"]],
                               view["byteOffset"]).reshape(accessor["count"], -1)
        assert values.nbytes == view["byteLength"]
        return accessor, values

    primitive = document["meshes"][0]["primitives"][0]
    accessor, positions = read(primitive["attributes"]["POSITION"])
    np.testing.assert_allclose(positions * 10, face_mesh.vertices, atol=1e-5)
    assert accessor["min"] == positions.min(0).tolist() and accessor["max"] == positions.max(0).tolist()
    np.testing.assert_allclose(read(primitive["attributes"]["NORMAL"])[1], face_mesh.normals, atol=1e-6)
    accessor, colours = read(primitive["attributes"]["COLOR_0"])
    assert accessor["normalized"] and np.abs(colours[:, :3] / 255 - face_mesh.colours).max() <= 0.5 / 255 + 1e-9
    assert (colours[:, 3] == 255).all()
    for name, index in primitive["attributes"].items():   # vertex elements start on 4-byte boundaries
        view = document["bufferViews"][document["accessors"][index]["bufferView"]]
        assert view["byteOffset"] % 4 == 0 and (view["byteLength"] // len(face_mesh.vertices)) % 4 == 0, name
    np.testing.assert_array_equal(read(primitive["indices"])[1].reshape(-1, 3), face_mesh.triangles)


def test_textured_glb_embeds_the_png_as_it_is(face_mesh):
    from deep3dface.export import TexturedMesh, export_textured

    rng = np.random.default_rng(1)
    uv = rng.uniform(size=(len(face_mesh.vertices), 2))
    textured = TexturedMesh(face_mesh, uv, rng.integers(0, 255, size=(16, 32, 3), dtype=np.uint8))
    data = export_textured(textured, "glb", "skin")["skin.glb"]
    document, binary = _glb_parts(data)
    view = document["bufferViews"][document["images"][0]["bufferView"]]
    assert binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]] == textured.png
    material = document["materials"][0]["pbrMetallicRoughness"]
    assert (material["metallicFactor"], material["roughnessFactor"]) == (0.0, 1.0)
    loaded = _load(data, "glb")
    np.testing.assert_allclose(loaded.visual.uv, uv, atol=1e-6)         # trimesh flips glTF's v back
    np.testing.assert_array_equal(np.asarray(loaded.visual.material.baseColorTexture.convert("RGB")),
                                  textured.texture)
    assert export_textured(textured, "obj", "skin")["skin.png"] == textured.png


def test_glb_refuses_what_gltf_cannot_hold(face_mesh):
    from deep3dface.export.gltf import mesh_glb

    vertices, triangles = face_mesh.vertices, face_mesh.triangles
    with pytest.raises(ValueError, match="without vertices or triangles"):
        mesh_glb(vertices, triangles[:0])
    with pytest.raises(ValueError, match="finite"):
        mesh_glb(np.where(np.arange(len(vertices))[:, None] == 3, np.nan, vertices), triangles)
    with pytest.raises(TypeError, match="uint8"):
        mesh_glb(vertices, triangles, colours=face_mesh.colours)          # floats in [0, 1]
    with pytest.raises(ValueError, match=r"in \[0, "):
        mesh_glb(vertices[:10], triangles)


def test_our_meshes_are_known_by_content_and_others_are_not(tmp_path, face_mesh):
    """``is_our_mesh`` (how a rerun finds the meshes it may replace): every format we write is ours;
    a user's file under the same name, another tool's GLB or PLY, and a missing file are not."""
    import json
    import struct

    from deep3dface.export.gltf import mesh_glb
    from deep3dface.export.meshes import is_our_mesh

    for fmt in MESH_FORMATS:
        path = tmp_path / f"neutral.{fmt}"
        path.write_bytes(export_mesh(face_mesh, fmt))
        assert is_our_mesh(path), fmt
    other = mesh_glb(face_mesh.vertices, face_mesh.triangles)
    length = struct.unpack("<I", other[12:16])[0]
    document = json.loads(other[20:20 + length])
    document["asset"]["generator"] = "Blender"
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    (tmp_path / "blender.glb").write_bytes(other[:12] + struct.pack("<I4s", len(text), b"JSON") + text
                                           + other[20 + length:])
    (tmp_path / "meshlab.ply").write_bytes(b"ply\nformat ascii 1.0\ncomment VCGLIB generated\nelement vertex 0\nend_header\n")
    (tmp_path / "notes.obj").write_text("# my own mesh\nv 0 0 0\n")
    (tmp_path / "broken.glb").write_bytes(b"glTF" + bytes(30))
    deep = b"[" * 200_000  # json.loads raises RecursionError, not ValueError
    (tmp_path / "deep.glb").write_bytes(other[:12] + struct.pack("<I4s", len(deep), b"JSON") + deep)
    (tmp_path / "folder.glb").mkdir()
    for name in ("blender.glb", "meshlab.ply", "notes.obj", "broken.glb", "missing.obj", "deep.glb", "folder.glb"):
        assert not is_our_mesh(tmp_path / name), name
