"""Mesh exporters: pure functions ``Mesh -> bytes``.

OBJ and PLY keep the mesh's model units (decimetres for every shipped model, as Deep3D writes
them); GLB (``export.gltf``) follows glTF, whose unit is the metre, so it is scaled on the way out.  Vertex colours are
written as floats in OBJ (the common ``v x y z r g b`` extension) and as 8-bit in PLY and GLB.
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np

from ..types import Mesh
from .gltf import mesh_glb
from .text import format_rows

UNIT_IN_METRES = {"metre": 1.0, "decimetre": 0.1, "centimetre": 0.01, "millimetre": 1e-3, "micrometre": 1e-6}


def _colours_u8(colours: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(colours, np.float64) * 255), 0, 255).astype(np.uint8)


def write_rows(out, array: np.ndarray, fmt: str) -> None:
    """``np.savetxt(out, array, fmt)``'s text, built with array operations (``export.text``)."""
    array = np.asarray(array)
    if array.size == 0:
        return                                           # savetxt writes nothing either
    out.write(format_rows(array if array.ndim == 2 else array.reshape(len(array), -1), fmt))


#: first line of our OBJ files, before the unit (``video`` recognises its own meshes by it)
OBJ_HEADER = "# deep3dface mesh"


def is_our_mesh(path: str | Path) -> bool:
    """Whether a file is a mesh deep3dface wrote: an OBJ or PLY by its header line, a GLB by its
    generator (so that a rerun replaces its own meshes and never someone else's file)."""
    if not Path(path).is_file():  # a folder, or a FIFO whose open would wait for a writer
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
            if head[:4] == b"glTF" and len(head) >= 20:  # the JSON chunk: length, type, then the text
                length, kind = struct.unpack("<I4s", head[12:20])
                handle.seek(20)
                text = handle.read(length) if kind == b"JSON" and length < 1 << 24 else b""
                try:
                    asset = json.loads(text).get("asset", {})
                except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested too deep
                    return False
                return isinstance(asset, dict) and asset.get("generator") == "deep3dface"
    except OSError:
        return False
    if head.startswith(OBJ_HEADER.encode()):
        return True
    return head.startswith(b"ply\n") and b"\ncomment deep3dface mesh" in head.split(b"end_header")[0]


def mesh_to_obj(mesh: Mesh) -> bytes:
    """Wavefront OBJ, 1-based faces, optional per-vertex colours and normals."""
    out = io.StringIO()
    out.write(f"{OBJ_HEADER}, unit: {mesh.unit}\n")
    vertices = np.asarray(mesh.vertices, np.float64)
    if mesh.colours is not None:
        write_rows(out, np.hstack([vertices, np.clip(mesh.colours, 0, 1)]), "v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        write_rows(out, vertices, "v %.6f %.6f %.6f")
    faces = np.asarray(mesh.triangles, np.int64) + 1
    if mesh.normals is not None:
        write_rows(out, mesh.normals, "vn %.5f %.5f %.5f")
        write_rows(out, np.repeat(faces, 2, axis=1), "f %d//%d %d//%d %d//%d")
    else:
        write_rows(out, faces, "f %d %d %d")
    return out.getvalue().encode("ascii")


def mesh_to_ply(mesh: Mesh) -> bytes:
    """Binary little-endian PLY: float32 positions (and normals), uchar colours, int32 faces."""
    n = len(mesh.vertices)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if mesh.colours is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(n, dtype=fields)
    for axis, name in enumerate("xyz"):
        vertex[name] = mesh.vertices[:, axis]
    if mesh.normals is not None:
        for axis, name in enumerate(("nx", "ny", "nz")):
            vertex[name] = mesh.normals[:, axis]
    if mesh.colours is not None:
        colours = _colours_u8(mesh.colours)
        for axis, name in enumerate(("red", "green", "blue")):
            vertex[name] = colours[:, axis]
    face = np.empty(len(mesh.triangles), dtype=[("count", "u1"), ("index", "<i4", (3,))])
    face["count"] = 3
    face["index"] = mesh.triangles
    type_names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"comment deep3dface mesh, unit: {mesh.unit}",
              f"element vertex {n}"]
    header += [f"property {type_names[t]} {name}" for name, t in fields]
    header += [f"element face {len(mesh.triangles)}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + vertex.tobytes() + face.tobytes()


def mesh_to_glb(mesh: Mesh) -> bytes:
    """Binary glTF, in metres as glTF requires, vertex colours as 8-bit COLOR_0."""
    colours = None if mesh.colours is None else _colours_u8(mesh.colours)
    return mesh_glb(np.asarray(mesh.vertices, np.float64) * UNIT_IN_METRES[mesh.unit], mesh.triangles,
                    normals=mesh.normals, colours=colours)
