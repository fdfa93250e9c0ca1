"""MorphableModel: a linear face model as an ``nn.Module`` whose arrays are buffers.

The math lives in pure functions (``geometry``, ``shading``); this module only holds the arrays,
moves them with ``.to(dtype/device)`` and wires the functions together.  Conventions are those of
``morphable.data`` (model space, interleaving, units) and ``morphable.geometry`` (rotation).
"""
from __future__ import annotations

import torch
from torch import nn

from ..types import CoefficientLayout, Coefficients, FaceGeometry
from . import geometry, shading
from .data import ModelData


class MorphableModel(nn.Module):
    """Shape = mean + id_basis·id + exp_basis·exp; albedo = mean + albedo_basis·tex; SH-lit colour."""

    def __init__(self, data: ModelData, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.data = data
        self.name, self.unit = data.name, data.unit
        self.layout = CoefficientLayout(**data.sizes)
        arrays = {
            "mean_shape": data.mean_shape,
            "id_basis": data.id_basis,
            "exp_basis": data.exp_basis,
            "mean_albedo": data.mean_albedo,
            "albedo_basis": data.albedo_basis,
        }
        # copies (torch.tensor), never views: the data may be a cached ModelData every later model shares
        for name, array in arrays.items():
            self.register_buffer(name, torch.tensor(array, dtype=dtype))
        for name in ("triangles", "keypoints", "front_vertices", "front_triangles", "point_buf"):
            self.register_buffer(name, torch.tensor(getattr(data, name), dtype=torch.int64))
        self.register_buffer("skin_mask", torch.tensor(data.skin_mask, dtype=dtype))

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def has_albedo_basis(self) -> bool:
        return self.layout.tex > 0

    def zero_coefficients(self, batch_size: int = 1) -> Coefficients:
        return Coefficients.zeros(self.layout, batch_size, self.mean_shape.dtype, self.mean_shape.device)

    def shape(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """(B, K_id), (B, K_exp) -> (B, N, 3) unposed shape in model space."""
        offset = id_coeff @ self.id_basis.T + exp_coeff @ self.exp_basis.T
        return offset.view(id_coeff.shape[0], -1, 3) + self.mean_shape

    def albedo(self, tex_coeff: torch.Tensor) -> torch.Tensor:
        """(B, K_tex) -> (B, N, 3) RGB albedo; the mean albedo when the model has no basis."""
        batch = tex_coeff.shape[0]
        if not self.has_albedo_basis:
            return self.mean_albedo.expand(batch, -1, -1)
        return (tex_coeff @ self.albedo_basis.T).view(batch, -1, 3) + self.mean_albedo

    def shape_at(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor, vertex_ids: torch.Tensor) -> torch.Tensor:
        """(B, K, 3) ``shape(id_coeff, exp_coeff)[:, vertex_ids]`` from those K rows of the bases only
        (the 68 keypoints cost 0.2 % of the whole shape)."""
        rows = (3 * vertex_ids[:, None] + torch.arange(3, device=vertex_ids.device)).reshape(-1)
        offset = id_coeff @ self.id_basis[rows].T + exp_coeff @ self.exp_basis[rows].T
        return offset.view(id_coeff.shape[0], -1, 3) + self.mean_shape[vertex_ids]

    def posed_vertices(self, coeffs: Coefficients, vertex_ids: torch.Tensor) -> torch.Tensor:
        """(B, K, 3) ``forward(coeffs).vertices[:, vertex_ids]`` from those K rows (``shape_at``)."""
        if coeffs.layout != self.layout:
            raise ValueError(f"coefficients of layout {coeffs.layout} do not fit model {self.name!r} ({self.layout})")
        coeffs = coeffs.to(self.mean_shape)  # the model's dtype and device, as forward
        shape = self.shape_at(coeffs.id, coeffs.exp, vertex_ids)
        return shape @ geometry.rotation_matrix(coeffs.angle).transpose(1, 2) + coeffs.trans[:, None, :]

    def normals(self, shape: torch.Tensor) -> torch.Tensor:
        return geometry.vertex_normals(shape, self.triangles, self.point_buf)

    def forward(self, coeffs: Coefficients, albedo: torch.Tensor | None = None) -> FaceGeometry:
        """Everything the camera and renderer need.  ``albedo`` (B, N, 3) overrides the basis
        (the per-vertex albedo the fitter estimates for a model without an albedo basis)."""
        if isinstance(coeffs, torch.Tensor):  # a (B, K) vector in Deep3D's order (id, exp, tex, angle, gamma, trans)
            if coeffs.ndim != 2 or coeffs.shape[1] != self.layout.total:
                raise ValueError(f"a coefficient tensor for model {self.name!r} is (B, {self.layout.total}), got "
                                 f"{tuple(coeffs.shape)}; or pass Coefficients")
            coeffs = Coefficients.from_vector(coeffs, self.layout)
        if not isinstance(coeffs, Coefficients):
            raise TypeError(f"coeffs must be Coefficients or a (B, {self.layout.total}) tensor, got {type(coeffs).__name__}")
        if coeffs.layout != self.layout:
            raise ValueError(f"coefficients of layout {coeffs.layout} do not fit model {self.name!r} ({self.layout})")
        coeffs = coeffs.to(self.mean_shape)  # float64 coefficients on a float32 model failed in a matmul
        shape = self.shape(coeffs.id, coeffs.exp)
        rotation = geometry.rotation_matrix(coeffs.angle)
        vertices = shape @ rotation.transpose(1, 2) + coeffs.trans[:, None, :]
        normals_model = self.normals(shape)
        normals = normals_model @ rotation.transpose(1, 2)
        albedo = self.albedo(coeffs.tex) if albedo is None else albedo.to(self.mean_shape)
        colour = shading.shade(albedo, normals, coeffs.gamma)
        return FaceGeometry(
            shape=shape,
            rotation=rotation,
            vertices=vertices,
            normals_model=normals_model,
            normals=normals,
            albedo=albedo,
            colour=colour,
            landmarks=vertices[:, self.keypoints],
        )

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, unit={self.unit!r}, vertices={self.num_vertices}, "
                f"triangles={len(self.triangles)}, layout={self.layout}")
