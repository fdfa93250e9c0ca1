"""Result and parameter types shared across deep3dface: frozen dataclasses of tensors.

Coefficient layout: a face is described by named coefficient groups (identity ``id``, expression
``exp``, albedo ``tex``, pose ``angle`` and ``trans``, lighting ``gamma``).  Each model declares the
sizes of id/exp/tex; angle (3: pitch, yaw, roll in radians), gamma (27: 9 SH bands × RGB, read as
``[R 0:9 | G 9:18 | B 18:27]``) and trans (3, model units) are fixed.  The flat vector of the
published R-Net (257 values: ``id 0:80 | exp 80:144 | tex 144:224 | angle 224:227 | gamma 227:254 |
trans 254:257``) exists only at the network and .mat boundaries, through ``CoefficientLayout``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

GROUPS = ("id", "exp", "tex", "angle", "gamma", "trans")


@dataclass(frozen=True)
class CoefficientLayout:
    """Sizes of the coefficient groups, in the order of the flat vector."""

    id: int
    exp: int
    tex: int
    angle: int = 3
    gamma: int = 27
    trans: int = 3

    @property
    def total(self) -> int:
        return sum(getattr(self, g) for g in GROUPS)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for g in GROUPS:
            n = getattr(self, g)
            out[g] = slice(start, start + n)
            start += n
        return out


#: The 257-value layout of Deep3D's BFM front model and of the published R-Net checkpoints.
DEEP3D_LAYOUT = CoefficientLayout(id=80, exp=64, tex=80)


@dataclass(frozen=True)
class Coefficients:
    """Per-face coefficients, each a (B, K) tensor; all share dtype and device."""

    id: torch.Tensor
    exp: torch.Tensor
    tex: torch.Tensor
    angle: torch.Tensor
    gamma: torch.Tensor
    trans: torch.Tensor

    def __post_init__(self) -> None:
        batch = {getattr(self, g).shape[0] for g in GROUPS if getattr(self, g).ndim}
        if len(batch) != 1 or any(getattr(self, g).ndim != 2 for g in GROUPS):
            shapes = {g: tuple(getattr(self, g).shape) for g in GROUPS}
            raise ValueError(f"coefficient groups must be (B, K) with one B, got {shapes}")
        for g, n in (("angle", 3), ("gamma", 27), ("trans", 3)):
            if getattr(self, g).shape[1] != n:
                raise ValueError(f"coefficient group {g!r} must have {n} values per face")

    @property
    def batch_size(self) -> int:
        return self.id.shape[0]

    @property
    def layout(self) -> CoefficientLayout:
        return CoefficientLayout(**{g: getattr(self, g).shape[1] for g in GROUPS})

    @classmethod
    def zeros(cls, layout: CoefficientLayout, batch_size: int = 1, dtype=torch.float32, device=None) -> "Coefficients":
        return cls(**{g: torch.zeros(batch_size, getattr(layout, g), dtype=dtype, device=device) for g in GROUPS})

    @classmethod
    def from_vector(cls, vector: torch.Tensor, layout: CoefficientLayout = DEEP3D_LAYOUT) -> "Coefficients":
        """Split a flat (B, layout.total) vector (or (layout.total,)) into named groups."""
        vector = torch.as_tensor(vector)
        if vector.ndim == 1:
            vector = vector[None]
        if vector.ndim != 2 or vector.shape[1] != layout.total:
            raise ValueError(f"expected (B, {layout.total}) coefficients, got {tuple(vector.shape)}")
        return cls(**{g: vector[:, s] for g, s in layout.slices().items()})

    def to_vector(self) -> torch.Tensor:
        return torch.cat([getattr(self, g) for g in GROUPS], dim=1)

    def to(self, *args, **kwargs) -> "Coefficients":
        return Coefficients(**{g: getattr(self, g).to(*args, **kwargs) for g in GROUPS})

    def detach(self) -> "Coefficients":
        return Coefficients(**{g: getattr(self, g).detach() for g in GROUPS})

    def replace(self, **groups: torch.Tensor) -> "Coefficients":
        return replace(self, **groups)

    def __getitem__(self, index) -> "Coefficients":
        """Select faces along the batch axis (keeps the batch dimension for an int)."""
        if isinstance(index, (bool, np.bool_)) or (isinstance(index, torch.Tensor) and index.dtype == torch.bool
                                                   and index.ndim == 0):
            raise TypeError("select faces with an integer, a slice or indices, not a single bool")
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0
                                                    and not index.is_floating_point()):  # one face, as an int
            face = int(index)
            index = slice(face, face + 1 if face != -1 else None)
        return Coefficients(**{g: getattr(self, g)[index] for g in GROUPS})


@dataclass(frozen=True)
class FaceGeometry:
    """What a morphable model computes from coefficients (B faces, N vertices), in model units.

    ``shape`` and ``normals_model`` are in the canonical (unposed) model frame; ``vertices`` and
    ``normals`` are posed: ``R · shape + trans``, still in model space (the camera maps them).
    ``colour`` is albedo × SH irradiance, not clamped.
    """

    shape: torch.Tensor          # (B, N, 3)
    rotation: torch.Tensor       # (B, 3, 3), R = Rz·Ry·Rx acting on column vectors
    vertices: torch.Tensor       # (B, N, 3)
    normals_model: torch.Tensor  # (B, N, 3) unit
    normals: torch.Tensor        # (B, N, 3) unit, rotated
    albedo: torch.Tensor         # (B, N, 3) RGB
    colour: torch.Tensor         # (B, N, 3) RGB
    landmarks: torch.Tensor      # (B, 68, 3) posed keypoint vertices




@dataclass(frozen=True, eq=False)
class Mesh:
    """One triangle mesh ready to export (numpy arrays, no batch axis).

    ``vertices`` (N, 3) float in the unit named by ``unit``; ``triangles`` (F, 3) int64, 0-based,
    counter-clockwise seen from outside; ``colours`` (N, 3) RGB in [0, 1] or None; ``normals``
    (N, 3) unit or None.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    colours: np.ndarray | None = None
    normals: np.ndarray | None = None
    unit: str = "decimetre"

    def __post_init__(self) -> None:
        for name in ("vertices", "triangles", "colours", "normals"):  # its own copies: never a model's memory
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.array(value))
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"mesh vertices must be (N, 3), got {self.vertices.shape}")
        n = len(self.vertices)
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"mesh triangles must be (F, 3), got {self.triangles.shape}")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise ValueError(f"mesh triangles index outside [0, {n})")
        for name in ("colours", "normals"):
            value = getattr(self, name)
            if value is not None and value.shape != (n, 3):
                raise ValueError(f"mesh {name} must be ({n}, 3), got {value.shape}")
