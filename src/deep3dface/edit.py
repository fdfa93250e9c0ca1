"""Editing a saved face: draw its coefficients again with another pose, light or expression.

    deep3dface render FACE.mat -o OUT.png [--pose PITCH,YAW,ROLL] [--light PRESET|FILE]
                      [--expression OTHER.mat] [--size 512] [--model PATH] [--colour shaded]

``FACE.mat`` is what ``deep3dface reconstruct`` writes per face (``outputs.face_mat``) or a Deep3D
coefficient file.  Conventions:

* **Camera**: Deep3D's crop camera scaled to the output size (its intrinsics times S/224: focal
  1015·S/224, principal point (112.5, 111.5)·S/224; camera at z = 10 of model space), so an
  unedited face is drawn exactly as it sat in the aligned 224 crop it was fitted in (the .mat's
  coefficients are in that camera).
* **Pose**: ``--pose`` replaces the rotation: (pitch, yaw, roll) in degrees, R = Rz·Ry·Rx as in
  ``morphable.geometry`` (0, 0, 0 looks into the camera; +yaw turns the face towards image right).
  The translation is kept, so the face turns about its own centre.
* **Light**: ``--light`` is a preset name (``LIGHT_PRESETS``) or a file holding 27 SH coefficients
  (a .mat with ``gamma``, e.g. another face's: borrow that photo's light; or .npy / text).  Presets
  are white: an ambient term plus one directional term in the first-order bands, directions in the
  posed model frame (x image right, y up, z towards the camera).  Each coefficient must lie within
  ±``MAX_LIGHT`` (edit_limits.py): a finite 1e6 drew a face white all over without a word.
* **Expression**: ``--expression OTHER.mat`` takes OTHER's ``exp`` (expression swap); identity,
  albedo, pose and light stay this face's.
* **Albedo**: the .mat's ``albedo`` (N, 3) when present (the per-vertex albedo the fitter estimates
  for models without an albedo basis, such as the default one); otherwise the model's albedo from
  ``tex`` (for a model without a basis that is its flat mean skin tone: ``albedo_note`` says so).
* **Output**: RGBA PNG, alpha 255 on the face and 0 elsewhere; colours as ``FaceReconstruction.
  render`` ("shaded": albedo × light; "albedo"; "geometry": grey clay under a fixed light).
"""
from __future__ import annotations

import io
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .camera import CROP_SIZE, Camera, crop_intrinsics
from .edit_limits import MAX_LIGHT, MAX_SIZE, MIN_SIZE
from .io.mat import read_mat
from .morphable.model import MorphableModel
from .morphable.shading import DEFAULT_AMBIENT, NUM_BANDS, sh_basis
from .pipeline import COLOURS, face_colours  # a face's colours: defined once, with the overlays'
from .render.shaded import render_colours
from .types import Coefficients

#: name -> (ambient irradiance, directional irradiance facing the light, direction towards the light)
LIGHT_PRESETS: dict[str, tuple[float, float, tuple[float, float, float]]] = {
    "ambient": (0.9, 0.0, (0.0, 0.0, 1.0)),
    "front": (0.35, 0.65, (0.0, 0.0, 1.0)),
    "left": (0.3, 0.7, (-1.0, 0.0, 0.6)),
    "right": (0.3, 0.7, (1.0, 0.0, 0.6)),
    "above": (0.3, 0.7, (0.0, 1.0, 0.6)),
    "below": (0.3, 0.7, (0.0, -1.0, 0.6)),
}
T = TypeVar("T")


@dataclass(frozen=True)
class SavedFace:
    """A face read from a .mat: coefficients (one row) and, when stored, per-vertex albedo (N, 3)."""

    coefficients: Coefficients
    albedo: torch.Tensor | None
    source: str


def load_face(path: str | Path) -> SavedFace:
    """Coefficients and optional ``albedo`` of a .mat written by ``outputs.face_mat`` (or Deep3D)."""
    from .export import read_coefficients_mat
    from .export.coefficients import numeric_array

    path = Path(path).expanduser()
    coefficients = read_coefficients_mat(path)
    mat = read_mat(path, variable_names=["albedo"])
    albedo = torch.as_tensor(numeric_array(mat["albedo"], f"{path}: 'albedo'")) if "albedo" in mat else None
    if albedo is not None and (albedo.ndim != 2 or albedo.shape[1] != 3):
        raise ValueError(f"{path}: 'albedo' must be (N, 3), got {tuple(albedo.shape)}")
    return SavedFace(coefficients, albedo, str(path))


def light_gamma(preset: str) -> torch.Tensor:
    """(1, 27) SH coefficients of a white preset light (``LIGHT_PRESETS``)."""
    if preset not in LIGHT_PRESETS:
        raise ValueError(f"unknown light {preset!r}: a preset ({', '.join(LIGHT_PRESETS)}) or a file")
    ambient, strength, direction = LIGHT_PRESETS[preset]
    d = torch.tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    # Irradiance is Σ_k basis_k(n)·(γ_k + 0.8·[k = 0]); basis_0 is constant and basis_1..3 are
    # ∓C1·(y, z, x), so a band-0 term sets the ambient and the first-order bands give s·(n·d).
    basis = sh_basis(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    constant, c1 = float(basis[0]), float(basis[2])
    band = torch.zeros(NUM_BANDS, dtype=torch.float64)
    band[0] = ambient / constant - DEFAULT_AMBIENT
    band[1:4] = strength / c1 * torch.stack([-d[1], d[2], -d[0]])
    return band.repeat(3)[None].float()


def read_npy(path: Path) -> np.ndarray:
    """A .npy file's array, or a one-line error naming the file (not numpy's pickle advice)."""
    with path.open("rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file (no NumPy header)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:   # object arrays need pickle, which a light file has no need of
        raise ValueError(f"{path}: not a .npy array of numbers (Python objects or a damaged file)") from exc


def light_row(path: Path, values: np.ndarray) -> torch.Tensor:
    """The 27 numbers read from a light file -> (1, 27), or a one-line error naming the file."""
    from .export.coefficients import numeric_array

    values = numeric_array(values, f"{path}: the light").reshape(-1)
    if values.size != 27:
        raise ValueError(f"{path}: a light is 27 SH coefficients (9 bands × RGB), got {values.size}")
    check_light(values, f"{path}: ")
    return torch.as_tensor(values)[None]


def check_light(gamma, where: str = "") -> None:
    """Raise a one-line ValueError unless every SH coefficient of ``gamma`` is within ±``MAX_LIGHT``
    (non-finite values are refused where the numbers are read)."""
    values = np.asarray(torch.as_tensor(gamma).detach().cpu().double()).reshape(-1)
    outside = np.flatnonzero(~(np.abs(values) <= MAX_LIGHT))   # NaN too, where the API is handed one
    if outside.size:
        k = int(outside[np.argmax(np.nan_to_num(np.abs(values[outside]), nan=np.inf))])
        raise ValueError(f"{where}light coefficients must be within ±{MAX_LIGHT:g} (fitted lights stay within "
                         f"±0.4), got {values[k]:g} (coefficient {k} of {values.size})")


def read_gamma(path: str | Path) -> torch.Tensor:
    """(1, 27) SH coefficients from a .mat (``gamma``, or a coefficient file), .npy or text file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a light file")
    if path.suffix.lower() == ".mat":
        values = load_face(path).coefficients.gamma.numpy()
    elif path.suffix.lower() == ".npy":
        values = read_npy(path)
    else:
        try:
            values = np.array(path.read_text().replace(",", " ").split(), np.float64)
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{path}: a light file holds 27 numbers (SH coefficients, 9 bands × RGB)") from None
    return light_row(path, values)


def parse_pose(text: str) -> tuple[float, float, float]:
    """'pitch,yaw,roll' in degrees -> three floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"--pose takes pitch,yaw,roll in degrees (e.g. 0,30,0), got {text!r}")
    if not all(math.isfinite(v) for v in values):   # float() takes 'nan' and 'inf': they draw nothing
        raise ValueError(f"--pose: values must be finite, got {text!r}")
    return values


def check_output(output: Path) -> None:
    """``-o``: a .png path whose nearest existing ancestor is a folder; checked before any work."""
    from .export import refuse_file_above

    if output.is_dir():
        raise ValueError(f"{output} is a folder: give the output a file name")
    if output.suffix.lower() != ".png":
        raise ValueError(f"{output}: the render is an RGBA PNG; give the output a .png name")
    refuse_file_above(output)


def read_option(option: str, read: Callable[[str | Path], T], path: str | Path) -> T:
    """``read(path)`` for a file an option names; its errors say the option (one line, exit 2)."""
    try:
        return read(path)
    except FileNotFoundError as exc:  # the OS's (a text light) and read_coefficients_mat's read alike
        raise ValueError(f"{option} {path}: no such file") from exc
    except OSError as exc:  # the OS's reason; one without strerror (io.UnsupportedOperation...) its message
        raise ValueError(f"{option} {path}: cannot read it ({exc.strerror or str(exc) or type(exc).__name__})") from exc
    except ValueError as exc:  # ours: they name the file
        raise ValueError(f"{option} {exc}") from exc


def light_option(light: str) -> torch.Tensor:
    """``--light``: a preset, or a file; a missing name that looks like a file (a suffix or a folder
    in it) is a missing file, not an unknown preset."""
    path = Path(light)
    if light in LIGHT_PRESETS or not (path.exists() or path.is_symlink() or path.suffix or len(path.parts) > 1):
        return light_gamma(light)
    return read_option("--light", read_gamma, light)


def edit_coefficients(coefficients: Coefficients, pose_deg: tuple[float, float, float] | None = None,
                      gamma: torch.Tensor | None = None, exp: torch.Tensor | None = None) -> Coefficients:
    """Replace the rotation (degrees), the light (1, 27; each within ±``MAX_LIGHT``) and/or the
    expression (1, K_exp)."""
    groups = {}
    if pose_deg is not None:
        if isinstance(pose_deg, str):
            pose_deg = parse_pose(pose_deg)
        pose = tuple(float(a) for a in pose_deg)
        if len(pose) != 3 or not all(math.isfinite(a) for a in pose):  # NaN drew nothing, without an error
            raise ValueError(f"pose_deg must be three finite angles (pitch, yaw, roll) in degrees, got {pose_deg!r}")
        groups["angle"] = torch.tensor([[math.radians(a) for a in pose]], dtype=coefficients.angle.dtype)
    if isinstance(gamma, str):  # a preset's name, as --light takes it
        gamma = light_gamma(gamma)
    if gamma is not None:
        check_light(gamma)
        groups["gamma"] = torch.as_tensor(gamma, dtype=coefficients.gamma.dtype).reshape(1, -1)
    if exp is not None:
        exp = torch.as_tensor(exp, dtype=coefficients.exp.dtype).reshape(1, -1)
        if exp.shape != coefficients.exp.shape:
            raise ValueError(f"the other face has {exp.shape[1]} expression coefficients, this one "
                             f"{coefficients.exp.shape[1]}: they come from different models")
        groups["exp"] = exp
    return coefficients.replace(**groups)


def render_face(model: MorphableModel, coefficients: Coefficients, albedo: torch.Tensor | None = None,
                size: int = 512, colour: str = "shaded") -> tuple[torch.Tensor, torch.Tensor]:
    """Image (3, S, S) and mask (1, S, S) of a face drawn by the scaled crop camera (module doc)."""
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {', '.join(COLOURS)}, got {colour!r}")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be a whole number of pixels, {MIN_SIZE} to {MAX_SIZE}, got {size!r}")
    size = int(size)
    if albedo is not None and albedo.ndim == 3 and albedo.shape[0] == 1:  # one face's (1, N, 3), as the model gives it
        albedo = albedo[0]
    if coefficients.layout != model.layout:
        raise ValueError(f"the saved coefficients {coefficients.layout} do not fit model {model.name!r} "
                         f"({model.layout}): pass the model the face was fitted with (--model)")
    if albedo is not None and albedo.shape != (model.num_vertices, 3):
        raise ValueError(f"the saved albedo has {albedo.shape[0]} vertices, model {model.name!r} has "
                         f"{model.num_vertices}: pass the model the face was fitted with (--model)")
    dtype = model.mean_shape.dtype
    with torch.no_grad():
        g = model(coefficients.to(dtype), albedo=None if albedo is None else albedo.to(dtype)[None])
        colours = face_colours(g, colour)  # the overlay's and the mesh's colours, one definition
        K = crop_intrinsics(dtype=dtype)
        K[:2] *= size / CROP_SIZE  # the 224 crop scaled: its off-centre principal point too
        camera = Camera(K, size, size)
        image, mask = render_colours(g.vertices, colours, model.triangles, camera)
    return image[0], mask[0]


def albedo_note(model: MorphableModel, face: SavedFace) -> str | None:
    """A warning when the render cannot show the fitted albedo."""
    if face.albedo is None and not model.has_albedo_basis:
        return (f"{face.source} holds no 'albedo' and model {model.name!r} has no albedo basis: "
                "drawn with the model's flat mean albedo")
    return None


def rgba_png(image: torch.Tensor, mask: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] and (1, H, W) -> RGBA PNG bytes (alpha from the mask)."""
    from PIL import Image

    rgba = torch.cat([image, mask]).clamp(0, 1).permute(1, 2, 0).double().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.rint(rgba * 255).astype(np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def render_command(face_path: str | Path, output: str | Path, pose: str | None = None, light: str | None = None,
                   expression: str | Path | None = None, size: int = 512, model: str | Path = "default",
                   colour: str = "shaded", overwrite: bool = False) -> tuple[Path, str | None]:
    """What ``deep3dface render`` does: returns the written path and a warning (or None)."""
    from .export import refuse_existing, write_output
    from .morphable import load_model

    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"--size must be {MIN_SIZE} to {MAX_SIZE} pixels, got {size}")
    output = Path(output).expanduser()
    check_output(output)
    pose_deg = None if pose is None else parse_pose(pose)
    face = load_face(face_path)
    gamma = None if light is None else light_option(light)
    exp = None if expression is None else read_option("--expression", load_face, expression).coefficients.exp
    coefficients = edit_coefficients(face.coefficients, pose_deg, gamma, exp)
    refuse_existing(output, overwrite)  # before the render, not after it (write_output checks again)
    face_model = load_model(model)
    image, mask = render_face(face_model, coefficients, face.albedo, size, colour)
    return write_output(output, rgba_png(image, mask), overwrite=overwrite), albedo_note(face_model, face)
