"""Binary glTF 2.0 (GLB) of one triangle mesh, written directly.

A GLB is a 12-byte header, a JSON chunk describing the scene and a binary chunk holding the arrays;
one mesh with positions, optional normals, 8-bit colours, texture coordinates and an embedded PNG
is a page of code.  Written here rather than through trimesh because trimesh decodes and re-encodes
the texture (~0.25 s for a 1024² map) and builds its scene graph on the way.

Conventions (glTF's): metres, y up, counter-clockwise front faces; texture coordinates have their
origin at the top-left of the image, so the ``texture.uv`` v (up) is written as 1 - v.  The
caller converts units; the arrays are written as float32 / uint8 / uint32.
"""
from __future__ import annotations

import json
import struct

import numpy as np

_FLOAT, _UBYTE, _UINT = 5126, 5121, 5125             # accessor component types
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963  # buffer view targets
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def mesh_glb(positions: np.ndarray, triangles: np.ndarray, normals: np.ndarray | None = None,
             colours: np.ndarray | None = None, texcoords: np.ndarray | None = None,
             texture_png: bytes | None = None, name: str = "face") -> bytes:
    """positions (N, 3) in metres, triangles (F, 3) vertex ids, normals (N, 3), colours (N, 3) uint8
    (written as opaque RGBA),
    texcoords (N, 2) glTF uv (origin top-left), texture_png the base colour image -> GLB bytes.
    With a texture the material is PBR with metallic 0 and roughness 1 (no sheen on skin baked
    from a photo)."""
    n = len(positions)
    triangles = np.asarray(triangles)
    if n == 0 or len(triangles) == 0:
        raise ValueError("a mesh without vertices or triangles (glTF accessors hold at least one element)")
    if not np.isfinite(positions).all():
        raise ValueError("vertex positions must be finite")
    if triangles.dtype.kind not in "iu" or (colours is not None and np.asarray(colours).dtype != np.uint8):
        raise TypeError("triangles must be integers and colours uint8")
    if (texcoords is None) != (texture_png is None):
        raise ValueError("texcoords and texture_png go together")
    for label, array, width in (("normals", normals, 3), ("colours", colours, 3), ("texcoords", texcoords, 2)):
        if array is not None and np.shape(array) != (n, width):
            raise ValueError(f"{label} must be ({n}, {width}), got {np.shape(array)}")
    if triangles.min() < 0 or triangles.max() >= n:
        raise ValueError(f"triangle vertex ids must lie in [0, {n})")
    builder = _Builder()
    positions = np.ascontiguousarray(positions, np.float32)
    attributes = {"POSITION": builder.accessor(positions, _FLOAT, "VEC3", _ARRAY_BUFFER,
                                               bounds=(positions.min(0).tolist(), positions.max(0).tolist()))}
    if normals is not None:
        attributes["NORMAL"] = builder.accessor(np.asarray(normals, np.float32), _FLOAT, "VEC3", _ARRAY_BUFFER)
    if texcoords is not None:
        attributes["TEXCOORD_0"] = builder.accessor(np.asarray(texcoords, np.float32), _FLOAT, "VEC2", _ARRAY_BUFFER)
    if colours is not None:
        # RGBA, opaque: a vertex attribute's elements must start on 4-byte boundaries (glTF 2.0
        # §3.6.2.4), which tightly packed 3-byte RGB would break
        rgba = np.concatenate([np.asarray(colours, np.uint8), np.full((n, 1), 255, np.uint8)], 1)
        attributes["COLOR_0"] = builder.accessor(rgba, _UBYTE, "VEC4", _ARRAY_BUFFER, normalized=True)
    primitive = {"attributes": attributes, "mode": 4,
                 "indices": builder.accessor(np.asarray(triangles, np.uint32).reshape(-1), _UINT, "SCALAR",
                                             _ELEMENT_ARRAY_BUFFER)}
    document = {"asset": {"version": "2.0", "generator": "deep3dface"}, "scene": 0,
                "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": name}],
                "meshes": [{"name": name, "primitives": [primitive]}]}
    if texture_png is not None:
        primitive["material"] = 0
        document["materials"] = [{"name": name, "pbrMetallicRoughness": {
            "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}]
        document["textures"] = [{"source": 0, "sampler": 0}]
        document["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                                 "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}]
        document["images"] = [{"bufferView": builder.view(texture_png), "mimeType": "image/png"}]
    document.update(builder.tables())
    return _container(document, builder.binary())


class _Builder:
    """Buffer views and accessors over one binary buffer, each view 4-byte aligned."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        padding = -self.length % 4
        self.chunks.append(b"\0" * padding + data)
        self.length += padding
        self.views.append({"buffer": 0, "byteOffset": self.length, "byteLength": len(data),
                           **({} if target is None else {"target": target})})
        self.length += len(data)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, component: int, kind: str, target: int,
                 bounds: tuple[list, list] | None = None, normalized: bool = False) -> int:
        array = np.ascontiguousarray(array)
        entry = {"bufferView": self.view(array.astype(array.dtype.newbyteorder("<")).tobytes(), target),
                 "componentType": component, "count": len(array), "type": kind}
        if bounds is not None:
            entry["min"], entry["max"] = bounds
        if normalized:
            entry["normalized"] = True
        self.accessors.append(entry)
        return len(self.accessors) - 1

    def binary(self) -> bytes:
        return b"".join(self.chunks)

    def tables(self) -> dict:
        return {"buffers": [{"byteLength": self.length}], "bufferViews": self.views, "accessors": self.accessors}


def _container(document: dict, binary: bytes) -> bytes:
    """The GLB container: header, JSON chunk (space-padded), BIN chunk (zero-padded), 4-byte aligned."""
    text = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
            + struct.pack("<I4s", len(binary), b"BIN\0") + binary)
