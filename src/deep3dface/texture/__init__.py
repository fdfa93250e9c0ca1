"""UV maps of the face models, photo → texture baking and textured rendering.

``uv.py`` owns the UV conventions (v up, one chart per model, texel frame) and the per-model UV
sources; ``bake.py`` bakes photos into albedo / shaded maps and renders textured meshes back.
"""
from .bake import TextureMaps, bake_texture, bake_texture_set, render_texture, view_directions
from .uv import (UV_SOURCES, bfm_uv_coordinates, distortion, front_model_bfm_ids, load_bfm_uv, sample_texture,
                 signed_areas, uv_coordinates)

__all__ = ["UV_SOURCES", "TextureMaps", "bake_texture", "bake_texture_set", "bfm_uv_coordinates", "distortion",
           "front_model_bfm_ids", "load_bfm_uv", "render_texture", "sample_texture", "signed_areas",
           "uv_coordinates", "view_directions"]
