"""What `deep3dface reconstruct` writes for one photo: the JSON record and the face files.

Everything for a photo is built in memory first (``photo_outputs`` returns name → bytes), then
written by ``write_photo_outputs`` only after every target was checked: a failure leaves no partial
set of files, and nothing that exists is overwritten unless asked.

JSON contract (``OUT/<stem>.json``), every 2D point in pixels of the original photo, origin at the
top-left corner of the top-left pixel, x right, y down::

    {"schema": 2, "image": path, "width": W, "height": H, "model": name,
     "faces": [{"bbox": [x0, y0, x1, y1], "score": s, "detector": "mtcnn", "landmarks5": [[x, y] × 5],
                "landmarks68": [[x, y] × 68], "angles_deg": [pitch, yaw, roll],
                "intrinsics": K (3×3 of the photo camera), "landmark_error_px": e, "flags": [...],
                "unit": "decimetre",
                "pose": {"angles_deg": [pitch, yaw, roll], "opencv_4x4": M_cv, "opengl_4x4": M_gl},
                "landmarks68_3d": [[X, Y, Z] × 68], "depth_scale": 0.001, "texture_size": 1024,
                "files": {"mesh": ..., "mesh_posed": ..., "coefficients": ..., "overlay": ...,
                          "geometry_overlay": ..., "depth": ..., "normals": ...,
                          "textured_glb": ..., "textured_obj": ..., "textured_mtl": ...,
                          "texture": ..., "texture_shaded": ...}}]}

``landmark_error_px``: the mean distance from the fitted model's points to the landmarker's, in
photo pixels.  Schema 2 only added keys to schema 1.  ``detector`` is "mtcnn", or "blazeface" on a photo where
MTCNN found no face (``detect.finder``: then bbox and landmarks5 come from the landmarker's
points).  ``landmarks5`` are the detector's; ``landmarks68`` the
fitted model's 68 points projected into the photo (3D-style: a hidden jaw point sits where a 3D
point projects; on a turned face the hidden points are the vertices where people annotate them,
``fit.annotation``).  Every 3D number is in the model's ``unit`` (decimetres for every shipped model: 0.1 m).

Frames.  **Model space** (the canonical mesh files): x to the subject's left (image right), y up,
+z out of the face.  **OpenCV camera**: x right, y down, z forward (depth), the frame in which
``intrinsics`` project: pixel = K·X / Z.  **OpenGL camera**: x right, y up, z backward (the camera
looks down −z); X_gl = diag(1, −1, −1)·X_cv.

* ``pose.opencv_4x4`` / ``pose.opengl_4x4``: 4×4 matrices [R t; 0 0 0 1] taking a canonical-mesh
  vertex (model space, homogeneous) to the OpenCV / OpenGL camera frame; both rotations are proper
  (det +1).  ``angles_deg`` (pitch, yaw, roll) are those of the OpenGL rotation, R = Rz·Ry·Rx about
  the x, y, z axes (0, 0, 0: the face looks straight into the camera; +yaw turns it towards image
  right); the same numbers as the face's top-level ``angles_deg``.
* ``landmarks68_3d``: the 68 fitted points in the OpenCV camera frame; K·X / Z gives
  ``landmarks68``.
* ``<stem>_face<k>_depth.png``: 16-bit greyscale, the photo's size; value × ``depth_scale`` is the
  OpenCV camera depth Z of the face surface at the pixel centre, in ``unit`` (0.001 dm = 0.1 mm per
  step), 0 where the face does not cover the pixel.  Only this face is drawn (no occlusion by
  other faces).
* ``<stem>_face<k>_normals.png``: 8-bit RGBA, the photo's size: the unit surface normal in the
  **OpenGL** camera frame (x right, y up, z towards the viewer, the usual normal-map colours:
  a normal facing the camera is (128, 128, 255)), RGB = round((n + 1) / 2 · 255); alpha 255 on the
  face, 0 elsewhere.  The OpenCV-frame normal is (n_x, −n_y, −n_z).
* Meshes: ``<stem>_face<k>.obj`` in the canonical pose (model space, as the reference saves it) and
  ``<stem>_face<k>_posed.obj`` posed in model space (camera at z = 10 looking down −z); ``.ply`` or
  ``.glb`` instead with ``mesh_format`` (``export.MESH_FORMATS``: vertex colours and normals in
  each; a GLB's positions in metres, as glTF asks).
* Textured meshes (when the model has a UV chart; ``texture_size`` is the side of the square maps,
  1024 unless the caller chose another, null when none were made): ``<stem>_face<k>_textured.glb`` (canonical pose, metres, the albedo map embedded as the
  base colour of a matte PBR material) and ``<stem>_face<k>_textured.obj`` + ``.mtl`` + ``.png``
  (canonical pose, ``unit``; the PNG is the same albedo map).  The albedo map is the photo divided
  by the fitted light (a viewer adds its own), hidden parts filled from the mirror side and the
  fitted albedo; ``<stem>_face<k>_texture_shaded.png`` is the same chart with the photo's colours
  as lit (``texture.bake``; UV v up, ``texture.uv``).
* ``<stem>_face<k>.mat``: Deep3D's keys plus ours (``face_mat``), including ``albedo`` (N, 3)
  float32 in [0, 1] when the model has no albedo basis, so ``deep3dface render`` can redraw it.
* ``<stem>_overlay.png`` blends the shaded render (fitted albedo and light) over the photo;
  ``<stem>_geometry.png`` blends a grey clay render, which shows the fitted shape itself.
"""
from __future__ import annotations

import io
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .camera import Camera
from .export import MESH_FORMATS, OutputExistsError, TexturedMesh, export_mesh, export_textured, stage_output
from .export.coefficients import coefficients_to_mat, to_reference_pixels
from .fit.annotation import output_keypoints
from .io.images import to_uint8
from .pipeline import FaceReconstruction
from .render import interpolate, rasterize
from .render.shaded import overlay, render_colours
from .types import FaceGeometry

SCHEMA_VERSION = 2
#: what ``photo_outputs`` can write besides the JSON (``deep3dface reconstruct --outputs``): the two
#: OBJ meshes, the .mat, the depth and normal maps, the textured meshes and their maps, the overlays
OUTPUT_KINDS = ("mesh", "mat", "maps", "texture", "overlay")
#: the kinds that use the fitted albedo and light (vertex colours, Deep3D's tex/gamma, the texture
#: maps, the shaded render): without them the fit's appearance stage can be skipped (the geometry
#: and every JSON number do not depend on it unless the photometric stage runs)
APPEARANCE_KINDS = frozenset({"mesh", "mat", "texture", "overlay"})
DEPTH_SCALE = 1e-3               # model units per step of the 16-bit depth PNG (0.1 mm for decimetres)
TEXTURE_SIZE = 1024              # default side of the baked texture maps
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])   # OpenCV camera frame <-> OpenGL camera frame (its own inverse)


def _round(array, digits: int = 3) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def face_record(face: FaceReconstruction, files: dict[str, str], texture_size: int | None = None,
                g: FaceGeometry | None = None) -> dict:
    d = face.detection
    g = face.geometry() if g is None else g
    opencv = pose_opencv(face, g)
    return {
        "bbox": _round(d.box.double().numpy(), 2),
        "score": round(float(d.score), 5),
        "detector": d.detector,
        "landmarks5": _round(d.landmarks5.double().numpy()),
        "landmarks68": _round(face.landmarks68.double().numpy()),
        "angles_deg": [round(a, 3) for a in face.angles_deg],
        "intrinsics": _round(face.camera.K.double().numpy(), 4),
        # the fit's distance to the landmarker's points, from crop to photo pixels (the crop is a scaled photo)
        "landmark_error_px": round(face.landmark_error / float(face.alignment.matrix[0, 0]), 3),
        "flags": list(face.flags),
        "unit": face.model.unit,
        "pose": {"angles_deg": [round(a, 3) for a in face.angles_deg],
                 "opencv_4x4": _round(opencv, 6), "opengl_4x4": _round(GL_FROM_CV @ opencv, 6)},
        "landmarks68_3d": _round(landmarks_3d(face, g), 5),
        "depth_scale": DEPTH_SCALE,
        "texture_size": texture_size,
        "files": files,
    }


def overlay_png(photo: torch.Tensor, faces: list[FaceReconstruction], opacity: float = 0.85,
                colour: str = "shaded", geometries: list[FaceGeometry] | None = None) -> bytes:
    """PNG bytes of the faces' renders (``FaceReconstruction.render`` colours) blended over the photo;
    ``geometries``: the faces' ``geometry()`` when the caller has them."""
    renders, masks = [], []
    for k, face in enumerate(faces):
        image, mask = face.render(colour, None if geometries is None else geometries[k])
        renders.append(image)
        masks.append(mask)
    composite = overlay(photo, torch.stack(renders), torch.stack(masks), opacity) if faces else photo
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(composite)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def face_mat(face: FaceReconstruction) -> bytes:
    """Deep3D's keys (coeff, id, exp, tex, angle, gamma, trans, lm68 in the crop with pixel centres
    at integers, trans_params) plus ours: landmarks68 in the photo (corner origin), K of the photo,
    and ``albedo`` (N, 3) float32 when the fit estimated per-vertex albedo (no albedo basis).
    ``lm68`` is what Deep3D stores there, the model's keypoints projected into the crop;
    ``landmarks68_photo`` is ``face.landmarks68`` (hidden points where people annotate them)."""
    keypoints = output_keypoints(face.model, face.coefficients, None).double()
    crop68 = Camera.crop(dtype=torch.float64).project(keypoints)[0].numpy()
    extras = {} if face.albedo is None else {"albedo": face.albedo.detach().cpu().numpy().astype(np.float32)}
    return coefficients_to_mat(
        face.coefficients.detach().to("cpu"),
        lm68=to_reference_pixels(crop68)[None].astype(np.float32),
        trans_params=face.alignment.trans_params.numpy()[None],
        landmarks68_photo=face.landmarks68.double().numpy()[None],
        intrinsics_photo=face.camera.K.double().numpy(),
        photo_to_crop=face.alignment.matrix.numpy(),
        **extras,
    )


def parse_output_kinds(text: str) -> frozenset[str]:
    """``"mesh,mat"``, ``"all"`` or ``"none"`` (the JSON alone) -> the kinds of ``OUTPUT_KINDS`` to
    write; a clear error otherwise."""
    kinds = {k.strip().lower() for k in text.split(",") if k.strip()}
    if kinds == {"all"}:
        return frozenset(OUTPUT_KINDS)
    if kinds == {"none"}:
        return frozenset()
    if kinds & {"all", "none"}:
        raise ValueError(f"{text!r}: 'all' and 'none' stand alone; or list kinds from {', '.join(OUTPUT_KINDS)}")
    unknown = sorted(kinds - set(OUTPUT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown output kind(s) {unknown or [text]}: choose all, none, or from {', '.join(OUTPUT_KINDS)}")
    return frozenset(kinds)


def mesh_format_name(text: str) -> str:
    """``"ply"``, ``".PLY"`` -> ``"ply"``, a format of ``export.MESH_FORMATS``; a clear error otherwise."""
    name = text.strip().lower().lstrip(".") if isinstance(text, str) else text
    if name not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {text!r}: choose from {', '.join(MESH_FORMATS)}")
    return name


def photo_outputs(image_path: str, stem: str, photo: torch.Tensor, faces: list[FaceReconstruction],
                  model_name: str, texture_size: int | None = TEXTURE_SIZE,
                  kinds: frozenset[str] = frozenset(OUTPUT_KINDS),
                  mesh_format: str = "obj") -> tuple[dict, dict[str, bytes]]:
    """(JSON record, {file name: bytes}) for one photo; names are relative to the output folder.
    ``kinds``: which files besides the JSON (``OUTPUT_KINDS``); ``texture_size``: side of the baked
    maps (None drops the textured outputs as well); ``mesh_format``: the two meshes' format
    (``export.MESH_FORMATS``)."""
    mesh_format = mesh_format_name(mesh_format)
    blobs: dict[str, bytes] = {}
    records = []
    overlay_file = "overlay" in kinds
    texture_size = texture_size if "texture" in kinds else None
    overlay_name = f"{stem}_overlay.png" if overlay_file and faces else None
    geometry_name = f"{stem}_geometry.png" if overlay_file and faces else None
    geometries = [face.geometry() for face in faces]
    for k, (face, g) in enumerate(zip(faces, geometries)):
        base = f"{stem}_face{k}"
        names = {}
        if "mesh" in kinds:
            names.update(mesh=f"{base}.{mesh_format}", mesh_posed=f"{base}_posed.{mesh_format}")
            blobs[names["mesh"]] = export_mesh(face.mesh(posed=False, geometry=g), mesh_format)
            blobs[names["mesh_posed"]] = export_mesh(face.mesh(posed=True, geometry=g), mesh_format)
        if "mat" in kinds:
            names["coefficients"] = f"{base}.mat"
            blobs[names["coefficients"]] = face_mat(face)
        if "maps" in kinds:
            names.update(depth=f"{base}_depth.png", normals=f"{base}_normals.png")
            depth, normals, mask = camera_maps(face, g)
            blobs[names["depth"]] = depth_png(depth, mask)
            blobs[names["normals"]] = normal_png(normals, mask)
        size = texture_size if texture_size and face.has_uv else None
        if size:
            textured = textured_outputs(face, photo, base, size, g)
            names.update({"textured_glb": f"{base}_textured.glb", "textured_obj": f"{base}_textured.obj",
                          "textured_mtl": f"{base}_textured.mtl", "texture": f"{base}_textured.png",
                          "texture_shaded": f"{base}_texture_shaded.png"})
            blobs.update(textured)
        if overlay_name:
            names["overlay"] = overlay_name
            names["geometry_overlay"] = geometry_name
        records.append(face_record(face, names, size, g))
    if overlay_name:
        blobs[overlay_name] = overlay_png(photo, faces, geometries=geometries)
        blobs[geometry_name] = overlay_png(photo, faces, opacity=0.7, colour="geometry", geometries=geometries)
    height, width = photo.shape[-2:]
    record = {"schema": SCHEMA_VERSION, "image": image_path, "width": int(width), "height": int(height),
              "model": model_name, "faces": records}
    blobs[f"{stem}.json"] = json.dumps(record, indent=1).encode()
    return record, blobs


def textured_outputs(face: FaceReconstruction, photo: torch.Tensor, base: str,
                     size: int = TEXTURE_SIZE, g: FaceGeometry | None = None) -> dict[str, bytes]:
    """Bake the face's texture once and export it: ``base_textured.glb`` (embedded) and
    ``base_textured.obj/.mtl/.png`` (the albedo map), ``base_texture_shaded.png`` (the lit map)."""
    g = face.geometry() if g is None else g
    maps = face.texture(photo, size, g)
    uv, _ = face.uv_chart(face.model)
    albedo = _uint8_hwc(maps.albedo)              # quantise once: the exporters take uint8 as is
    textured = TexturedMesh(face.mesh(posed=False, colour="albedo", geometry=g), uv.numpy(), albedo)
    name = f"{base}_textured"
    # the two maps' PNGs are encoded side by side: zlib releases the GIL (measured: two 1024² maps
    # in 0.27-0.29 s on two threads against 0.55 s one after the other)
    with ThreadPoolExecutor(1) as pool:
        shaded = pool.submit(_png, _uint8_hwc(maps.shaded))
        files = {**export_textured(textured, "glb", name), **export_textured(textured, "obj", name)}
        files[f"{base}_texture_shaded.png"] = shaded.result()
    return files


def write_photo_outputs(out_dir: Path, blobs: dict[str, bytes], overwrite: bool = False) -> list[Path]:
    """Write all files of one photo, all or none: every file goes to a temporary file first and
    is renamed into place only when all were written (a full disk or any other failure leaves
    nothing new behind, and nothing that blocks a rerun); the JSON is renamed last (its presence
    marks the photo as done; an old one is removed before the renames, so a rename that fails
    leaves the photo to redo).  Overwriting, the files the photo's previous JSON listed and this
    set lacks (a face fewer, a kind not asked for again) are removed: they would describe another run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / name for name in blobs]
    if not overwrite:
        existing = [p for p in targets if p.exists()]
        if existing:
            raise OutputExistsError(f"{existing[0]} exists (use --overwrite to replace it)")
    folders = [p for p in targets if p.is_dir()]
    if folders:  # found before any rename: os.replace onto a folder failed with some files already replaced
        raise OutputExistsError(f"{folders[0]} is a folder where this photo's file goes; move it away")
    json_names = [name for name in blobs if name.endswith(".json")]
    stale = {name for json_name in json_names for name in listed_files(out_dir / json_name)} - set(blobs)
    ordered = sorted(blobs, key=lambda name: name.endswith(".json"))
    staged: list[tuple[Path, Path]] = []
    try:
        for name in ordered:
            staged.append((stage_output(out_dir / name, blobs[name]), out_dir / name))
        # an overwrite that fails while renaming must not look done, and the old JSON's list of
        # files is gone with it: the files it lists that this set lacks go first
        for name in [*sorted(stale), *json_names]:
            (out_dir / name).unlink(missing_ok=True)
        for temporary, target in staged:
            os.replace(temporary, target)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def listed_files(json_path: Path) -> list[str]:
    """The face files a photo's JSON of ours lists (plain names in its folder); none when absent."""
    try:
        record = json.loads(json_path.read_text())
        names = [name for face in record.get("faces", []) for name in face.get("files", {}).values()]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    return [name for name in names if isinstance(name, str) and name and Path(name).name == name]


def missing_outputs(json_path: Path, kinds: frozenset[str], mesh_format: str = "obj") -> list[str]:
    """What a photo's existing JSON says an earlier run did not write of ``kinds`` (e.g.
    ``["mesh", "mat"]`` after ``--outputs none``, ``["ply meshes"]`` after OBJ ones), so that a skip
    can say what ``--overwrite`` would add; [] for a record with no faces or not of ours.  Textured
    files are not asked for: a model without a UV chart never writes them."""
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    faces = record.get("faces") if isinstance(record, dict) else None
    if not isinstance(faces, list) or not faces or not all(isinstance(f, dict) for f in faces):
        return []
    files = [f.get("files") if isinstance(f.get("files"), dict) else {} for f in faces]
    roles = {"mesh": "mesh", "mat": "coefficients", "maps": "depth", "overlay": "overlay"}
    missing = [kind for kind in OUTPUT_KINDS if kind in roles and kind in kinds
               and not all(roles[kind] in names for names in files)]
    if "mesh" in kinds and "mesh" not in missing and not all(
            str(names["mesh"]).endswith(f".{mesh_format}") for names in files):
        missing.append(f"{mesh_format} meshes")
    return missing


def output_stems(paths: list[Path], out_dir: Path | None = None) -> list[str]:
    """Output stems for input photos: the file stem, or ``<stem>-2``, ``-3``... where it is taken,
    by another photo of this batch (its own stem or one given out before) or by an earlier run's
    outputs of another photo (``out_dir/<stem>.json`` records its photo; without ``out_dir``, the
    batch alone).  A photo keeps the stem under which its own outputs already lie, so a rerun finds
    them; no photo's outputs can land on another's."""
    natural = {path.stem for path in paths}
    given: set[str] = set()
    out = []
    for path in paths:
        for k in itertools.count(1):
            stem = path.stem if k == 1 else f"{path.stem}-{k}"
            if stem in given or (k > 1 and stem in natural):
                continue
            owner = None if out_dir is None else recorded_photo(out_dir / f"{stem}.json")
            if owner is None or owner == Path(path).resolve():
                break
        given.add(stem)
        out.append(stem)
    return out


def recorded_photo(json_path: Path) -> Path | None:
    """The photo a ``<stem>.json`` of ours was made from (resolved), None where there is no such
    file; a file that is not ours names no photo (``Path()``), so its stem is never reused."""
    if not json_path.exists():
        return None
    try:
        return Path(json.loads(json_path.read_text())["image"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return Path()


# -- camera-frame quantities (conventions at the top) --------------------------------------------
def pose_opencv(face: FaceReconstruction, g: FaceGeometry | None = None) -> np.ndarray:
    """(4, 4) float64: canonical model-space points -> OpenCV camera frame.  The posed point is
    R·s + t in model space; the camera maps p to diag(1, −1, −1)·(p − (0, 0, d)).  ``g``: the
    face's geometry when the caller has it (each of these functions would compute it again)."""
    g = face.geometry() if g is None else g
    top = np.eye(4)
    top[:3, :3] = g.rotation[0].double().numpy()
    top[:3, 3] = face.coefficients.trans[0].double().numpy() - np.array([0.0, 0.0, face.camera.distance])
    return GL_FROM_CV @ top      # model frame and OpenGL camera frame share their axes


def landmarks_3d(face: FaceReconstruction, g: FaceGeometry | None = None) -> np.ndarray:
    """(68, 3) float64 fitted 68 points (``landmarks68_model``, else the keypoints) in the OpenCV
    camera frame, model units."""
    if face.landmarks68_model is not None:
        points = face.landmarks68_model.double()[None]
    else:
        points = (face.geometry() if g is None else g).landmarks.double()
    return face.camera.to_camera_space(points)[0].numpy()


def camera_maps(face: FaceReconstruction, g: FaceGeometry | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face drawn at the photo's size: depth (H, W) float64 (OpenCV Z, model units, +inf off
    the face), unit normals (H, W, 3) float64 in the OpenGL camera frame (0 off the face; the posed
    model frame has the OpenGL camera's axes), mask (H, W) bool."""
    g = face.geometry() if g is None else g
    screen = face.camera.screen(g.vertices.double())
    raster = rasterize(screen, face.model.triangles, (face.camera.height, face.camera.width))
    normals = interpolate(g.normals.double(), raster, face.model.triangles)[0]
    normals = torch.nn.functional.normalize(normals, dim=-1)
    return raster.depth[0].numpy(), normals.numpy(), raster.mask[0].numpy()


def depth_png(depth: np.ndarray, mask: np.ndarray, scale: float = DEPTH_SCALE) -> bytes:
    """16-bit greyscale PNG: round(depth / scale) on the mask (clipped to 1…65535), 0 elsewhere."""
    values = np.where(mask, np.clip(np.rint(np.where(mask, depth, 0) / scale), 1, 65535), 0).astype(np.uint16)
    return _png(values)


def normal_png(normals: np.ndarray, mask: np.ndarray) -> bytes:
    """8-bit RGBA PNG: RGB = round((n + 1) / 2 · 255), alpha 255 on the mask."""
    rgb = np.clip(np.rint((normals + 1) / 2 * 255), 0, 255)
    rgba = np.concatenate([rgb, 255 * mask[..., None]], -1) * mask[..., None]
    return _png(rgba.astype(np.uint8))


def read_depth_png(source) -> tuple[np.ndarray, np.ndarray]:
    """A depth PNG (path or bytes) -> (depth (H, W) float64 in model units, mask (H, W) bool)."""
    values = np.asarray(Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)).astype(np.float64)
    return values * DEPTH_SCALE, values > 0


def read_normal_png(source) -> tuple[np.ndarray, np.ndarray]:
    """A normal-map PNG -> (unit normals (H, W, 3) in the OpenGL camera frame, mask (H, W) bool)."""
    rgba = np.asarray(Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert("RGBA"))
    normals = rgba[..., :3].astype(np.float64) / 255 * 2 - 1
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True).clip(1e-12)
    return normals, rgba[..., 3] > 0


def _uint8_hwc(image: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint(image.permute(1, 2, 0).double().numpy() * 255), 0, 255).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


__all__ = ["DEPTH_SCALE", "OUTPUT_KINDS", "SCHEMA_VERSION", "TEXTURE_SIZE", "camera_maps", "depth_png", "face_mat", "face_record",
           "landmarks_3d", "missing_outputs", "normal_png", "overlay_png", "parse_output_kinds", "photo_outputs", "pose_opencv", "read_depth_png",
           "read_normal_png", "render_colours", "textured_outputs", "output_stems", "write_photo_outputs"]
