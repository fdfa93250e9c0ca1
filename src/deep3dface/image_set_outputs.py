"""The files of one person of an image set (``deep3dface fit-set``), beside the per-photo outputs.

* ``neutral.obj`` (``.ply`` or ``.glb`` with ``mesh_format``): the shared identity with zero
  expression in the canonical pose, model units (a GLB: metres) and vertex order (comparable across
  people); its vertex colours are the person's one albedo when the appearance was fitted
  (``fit.shared_albedo``).
* ``neutral_textured.glb`` / ``.obj`` + ``.mtl`` + ``.png`` (when the model has a UV chart): the
  same mesh with the person's one albedo texture map, fused from all used photos
  (``texture.bake_texture_set``: each photo's colours divided by its own fitted light, weighted by
  how squarely it sees each texel; hidden texels from the mirror side, then from the shared
  per-vertex albedo).  GLB in metres with the map embedded, OBJ in model units (as ``reconstruct``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .export import MESH_FORMATS, TexturedMesh, export_mesh, export_textured
from .image_set import IdentityReconstruction
from .morphable.shading import irradiance
from .outputs import TEXTURE_SIZE
from .texture import TextureMaps, bake_texture_set, view_directions

NEUTRAL = "neutral"
#: every file ``person_files`` can write (the textured ones where the model has a UV chart)
PERSON_FILES = (*(f"{NEUTRAL}.{fmt}" for fmt in MESH_FORMATS),
                *(f"{NEUTRAL}_textured.{ext}" for ext in ("glb", "obj", "mtl", "png")))


def person_files(result: IdentityReconstruction, read_photo: Callable[[int], torch.Tensor],
                 texture_size: int | None = TEXTURE_SIZE,
                 mesh_format: str = "obj") -> tuple[dict[str, str], dict[str, bytes]]:
    """({role: file name}, {file name: bytes}) of one person.  ``read_photo(i)`` returns the
    (3, H, W) photo of ``result.faces[i]`` (read on demand: one photo in memory at a time);
    ``mesh_format``: the neutral mesh's (``export.MESH_FORMATS``)."""
    names = {"neutral": f"{NEUTRAL}.{mesh_format}"}
    blobs = {names["neutral"]: export_mesh(result.neutral, mesh_format)}
    faces = result.faces
    if texture_size and faces and faces[0].has_uv:
        maps = set_texture(faces, _Photos(read_photo, len(faces)), texture_size)
        uv, _ = faces[0].uv_chart(faces[0].model)
        albedo = (maps.albedo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        textured = TexturedMesh(result.neutral, uv.numpy(), albedo)
        base = f"{NEUTRAL}_textured"
        blobs.update(export_textured(textured, "glb", base))
        blobs.update(export_textured(textured, "obj", base))
        names.update({"textured_glb": f"{base}.glb", "textured_obj": f"{base}.obj", "textured_mtl": f"{base}.mtl",
                      "texture": f"{base}.png"})
    return names, blobs


def set_texture(faces: Sequence, photos: Sequence[torch.Tensor], size: int = TEXTURE_SIZE) -> TextureMaps:
    """The UV maps of one person fused from the photos of its ``FaceReconstruction``s (same
    identity and albedo, per-photo pose, expression and light); ``photos[i]`` is face i's photo."""
    model = faces[0].model
    uv, mirror = faces[0].uv_chart(model)
    screens, normals, lights, views, albedo = [], [], [], [], None
    for face in faces:
        g = face.geometry()
        if albedo is None:
            albedo = g.albedo[0]  # shared: every face carries the person's albedo
        screens.append(face.camera.screen(g.vertices.to(face.camera.K.dtype))[0])
        normals.append(g.normals[0])
        lights.append(irradiance(g.normals, face.coefficients.gamma.to(g.normals))[0])
        views.append(view_directions(g.vertices[0], face.camera.distance))
    return bake_texture_set(photos, screens, normals, model.triangles, uv, albedo, lights, size,
                            mirror=mirror, views=views, texels=faces[0].chart_texels(model, size))


class _Photos(Sequence):
    """Photos read when indexed, so a large set is never in memory at once."""

    def __init__(self, read: Callable[[int], torch.Tensor], count: int) -> None:
        self._read, self._count = read, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._read(index)


__all__ = ["person_files", "set_texture"]
