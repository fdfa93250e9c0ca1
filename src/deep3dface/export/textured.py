"""Textured mesh exporters: a mesh, its per-vertex UV and a texture image -> a set of files.

A textured export is several files (OBJ needs an MTL and the image beside it; PLY names its image
in a ``comment TextureFile`` line; GLB embeds it), so every exporter returns ``{file name: bytes}``
and ``write_textured`` writes the set atomically file by file, the image first and the mesh last,
so a mesh file never points at a missing image.  UV follows ``texture.uv`` (v up, the OBJ and
trimesh convention; the GLB writer flips v for glTF).  Units as in ``export.meshes`` (GLB in metres).
The image is stored as an 8-bit RGB PNG.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..types import Mesh
from .gltf import mesh_glb
from .meshes import UNIT_IN_METRES, mesh_to_ply, write_rows


@dataclass(frozen=True, eq=False)
class TexturedMesh:
    """A mesh with one UV chart: ``uv`` (N, 2) per vertex in [0, 1], v up; ``texture`` (S, S, 3)
    uint8 or float in [0, 1] (H, W, 3), rows top to bottom (the I/O edge: numpy, channels last)."""

    mesh: Mesh
    uv: np.ndarray
    texture: np.ndarray

    def __post_init__(self) -> None:
        if self.uv.shape != (len(self.mesh.vertices), 2):
            raise ValueError(f"uv must be ({len(self.mesh.vertices)}, 2), got {self.uv.shape}")
        if self.texture.ndim != 3 or self.texture.shape[2] != 3:
            raise ValueError(f"texture must be (H, W, 3), got {self.texture.shape}")

    @cached_property
    def png(self) -> bytes:
        """The texture as PNG bytes, encoded once for every file that holds it (~0.1 s at 1024²)."""
        return texture_png(self.texture)


def textured_to_obj(textured: TexturedMesh, name: str = "face") -> dict[str, bytes]:
    """``name.obj`` (v, vt, vn; faces ``f v/vt/vn`` with one index per vertex), ``name.mtl``, ``name.png``."""
    mesh = textured.mesh
    out = io.StringIO()
    out.write(f"# deep3dface textured mesh, unit: {mesh.unit}\nmtllib {name}.mtl\n")
    write_rows(out, np.asarray(mesh.vertices, np.float64), "v %.6f %.6f %.6f")
    write_rows(out, np.asarray(textured.uv, np.float64), "vt %.6f %.6f")
    faces = np.asarray(mesh.triangles, np.int64) + 1
    out.write(f"usemtl {name}\n")
    if mesh.normals is not None:
        write_rows(out, mesh.normals, "vn %.5f %.5f %.5f")
        write_rows(out, np.repeat(faces, 3, axis=1), "f %d/%d/%d %d/%d/%d %d/%d/%d")
    else:
        write_rows(out, np.repeat(faces, 2, axis=1), "f %d/%d %d/%d %d/%d")
    # white diffuse so viewers show the map as is; no specular (skin from a photo already has it)
    mtl = (f"newmtl {name}\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\n"
           f"d 1.0\nillum 1\nmap_Kd {name}.png\n")
    return {f"{name}.png": textured.png, f"{name}.mtl": mtl.encode("ascii"),
            f"{name}.obj": out.getvalue().encode("ascii")}


def textured_to_ply(textured: TexturedMesh, name: str = "face") -> dict[str, bytes]:
    """``name.ply`` (binary, per-vertex ``texture_u``/``texture_v``, ``comment TextureFile``) and ``name.png``."""
    base = mesh_to_ply(textured.mesh)
    head, _, body = base.partition(b"end_header\n")
    lines = head.decode("ascii").splitlines()
    # the uv properties go after the existing vertex properties, the comment before the elements
    face_line = next(i for i, line in enumerate(lines) if line.startswith("element face"))
    lines[face_line:face_line] = ["property float texture_u", "property float texture_v"]
    lines.insert(2, f"comment TextureFile {name}.png")
    n = len(textured.mesh.vertices)
    vertex_bytes = (len(body) - len(textured.mesh.triangles) * 13) // n
    vertices = np.frombuffer(body[: n * vertex_bytes], np.uint8).reshape(n, vertex_bytes)
    uv = np.ascontiguousarray(textured.uv, "<f4").view(np.uint8).reshape(n, 8)
    data = np.hstack([vertices, uv]).tobytes() + body[n * vertex_bytes:]
    return {f"{name}.png": textured.png,
            f"{name}.ply": ("\n".join(lines) + "\nend_header\n").encode("ascii") + data}


def textured_to_glb(textured: TexturedMesh, name: str = "face") -> dict[str, bytes]:
    """``name.glb``: binary glTF in metres with the texture embedded as the base colour of a PBR
    material (metallic 0, roughness 1, so viewers do not add a sheen)."""
    mesh = textured.mesh
    uv = np.asarray(textured.uv, np.float64)
    return {f"{name}.glb": mesh_glb(np.asarray(mesh.vertices, np.float64) * UNIT_IN_METRES[mesh.unit], mesh.triangles,
                                    normals=mesh.normals, texcoords=np.stack([uv[:, 0], 1 - uv[:, 1]], 1),
                                    texture_png=textured.png, name=name)}


#: suffix -> exporter of a textured mesh to ``{file name: bytes}`` (the mesh file named ``name.suffix``)
TEXTURED_FORMATS: dict[str, Callable[[TexturedMesh, str], dict[str, bytes]]] = {
    "obj": textured_to_obj,
    "ply": textured_to_ply,
    "glb": textured_to_glb,
}


def export_textured(textured: TexturedMesh, fmt: str, name: str = "face") -> dict[str, bytes]:
    try:
        exporter = TEXTURED_FORMATS[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(f"unknown textured format {fmt!r}; known: {', '.join(TEXTURED_FORMATS)}") from None
    return exporter(textured, name)


def write_textured(textured: TexturedMesh, path: str | Path, overwrite: bool = False) -> list[Path]:
    """Export by the path's suffix and write every file beside ``path`` (named after its stem).

    All targets are checked before anything is written, so a refusal leaves nothing behind; each
    file is written atomically, the mesh file last."""
    from . import OutputExistsError, write_output

    path = Path(path)
    files = export_textured(textured, path.suffix, path.stem)
    targets = [path.with_name(file_name) for file_name in files]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} exist; pass overwrite=True (CLI: --overwrite) to replace them")
    return [write_output(target, data, overwrite) for target, data in zip(targets, files.values())]


def texture_png(texture: np.ndarray) -> bytes:
    """(H, W, 3) uint8, or float in [0, 1], -> PNG bytes."""
    from PIL import Image

    texture = np.asarray(texture)
    if texture.dtype != np.uint8:
        texture = np.clip(np.rint(texture.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(texture), "RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
