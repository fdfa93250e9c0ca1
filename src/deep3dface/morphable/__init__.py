"""Linear 3D morphable face models: data, formats, geometry, shading and the nn.Module."""
from .data import ModelData, vertex_triangle_adjacency
from .formats import load_model, load_model_data
from .model import MorphableModel

__all__ = ["ModelData", "MorphableModel", "load_model", "load_model_data", "vertex_triangle_adjacency"]
