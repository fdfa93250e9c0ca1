"""What `deep3dface reconstruct` writes for one photo: the JSON record and the face files.

Everything for a photo is built in memory first (``photo_outputs`` returns name → bytes), then
written by ``write_photo_outputs`` only after every target was checked: a failure leaves no partial
set of files, and nothing that exists is overwritten unless asked.

JSON contract (``OUT/<stem>.json``), every point in pixels of the original photo, origin at the
top-left corner of the top-left pixel, x right, y down::

    {"image": path, "width": W, "height": H, "model": name,
     "faces": [{"bbox": [x0, y0, x1, y1], "score": s, "landmarks5": [[x, y] × 5],
                "landmarks68": [[x, y] × 68], "angles_deg": [pitch, yaw, roll],
                "intrinsics": K (3×3 of the photo camera), "landmark_error_px": e, "flags": [...],
                "files": {"mesh": ..., "mesh_posed": ..., "coefficients": ..., "overlay": ...,
                          "geometry_overlay": ...}}]}

``landmarks5`` are the detector's; ``landmarks68`` the fitted model's keypoints projected into the
photo (a hidden jaw point sits where the 3D point projects).  Mesh files: ``<stem>_face<k>.obj`` in
the canonical pose (model space, as the reference saves it) and ``<stem>_face<k>_posed.obj`` posed
in model space (camera at z = 10 looking down −z); both in the model's unit (decimetres).
``<stem>_overlay.png`` blends the shaded render (fitted albedo and light) over the photo;
``<stem>_geometry.png`` blends a grey clay render, which shows the fitted shape itself.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .export import OutputExistsError, export_mesh, write_output
from .export.coefficients import coefficients_to_mat, to_reference_pixels
from .io.images import to_uint8
from .pipeline import FaceReconstruction
from .render.shaded import overlay, render_colours

SCHEMA_VERSION = 1


def _round(array, digits: int = 3) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def face_record(face: FaceReconstruction, files: dict[str, str]) -> dict:
    d = face.detection
    return {
        "bbox": _round(d.box.double().numpy(), 2),
        "score": round(float(d.score), 5),
        "landmarks5": _round(d.landmarks5.double().numpy()),
        "landmarks68": _round(face.landmarks68.double().numpy()),
        "angles_deg": [round(a, 3) for a in face.angles_deg],
        "intrinsics": _round(face.camera.K.double().numpy(), 4),
        "landmark_error_px": round(face.landmark_error, 3),
        "flags": list(face.flags),
        "files": files,
    }


def overlay_png(photo: torch.Tensor, faces: list[FaceReconstruction], opacity: float = 0.85,
                colour: str = "shaded") -> bytes:
    """PNG bytes of the faces' renders (``FaceReconstruction.render`` colours) blended over the photo."""
    renders, masks = [], []
    for face in faces:
        image, mask = face.render(colour)
        renders.append(image)
        masks.append(mask)
    composite = overlay(photo, torch.stack(renders), torch.stack(masks), opacity) if faces else photo
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(composite)).save(buffer, format="PNG")
    return buffer.getvalue()


def face_mat(face: FaceReconstruction) -> bytes:
    """Deep3D's keys (coeff, id, exp, tex, angle, gamma, trans, lm68 in the crop with pixel centres
    at integers, trans_params) plus ours: landmarks68 in the photo (corner origin), K of the photo."""
    crop68 = face.alignment.to_crop(face.landmarks68.double().numpy())
    return coefficients_to_mat(
        face.coefficients.detach().to("cpu"),
        lm68=to_reference_pixels(crop68)[None].astype(np.float32),
        trans_params=face.alignment.trans_params.numpy()[None],
        landmarks68_photo=face.landmarks68.double().numpy()[None],
        intrinsics_photo=face.camera.K.double().numpy(),
        photo_to_crop=face.alignment.matrix.numpy(),
    )


def photo_outputs(image_path: str, stem: str, photo: torch.Tensor, faces: list[FaceReconstruction],
                  model_name: str, overlay_file: bool = True) -> tuple[dict, dict[str, bytes]]:
    """(JSON record, {file name: bytes}) for one photo; names are relative to the output folder."""
    blobs: dict[str, bytes] = {}
    records = []
    overlay_name = f"{stem}_overlay.png" if overlay_file and faces else None
    geometry_name = f"{stem}_geometry.png" if overlay_file and faces else None
    for k, face in enumerate(faces):
        names = {"mesh": f"{stem}_face{k}.obj", "mesh_posed": f"{stem}_face{k}_posed.obj",
                 "coefficients": f"{stem}_face{k}.mat"}
        blobs[names["mesh"]] = export_mesh(face.mesh(posed=False), "obj")
        blobs[names["mesh_posed"]] = export_mesh(face.mesh(posed=True), "obj")
        blobs[names["coefficients"]] = face_mat(face)
        if overlay_name:
            names["overlay"] = overlay_name
            names["geometry_overlay"] = geometry_name
        records.append(face_record(face, names))
    if overlay_name:
        blobs[overlay_name] = overlay_png(photo, faces)
        blobs[geometry_name] = overlay_png(photo, faces, opacity=0.7, colour="geometry")
    height, width = photo.shape[-2:]
    record = {"schema": SCHEMA_VERSION, "image": image_path, "width": int(width), "height": int(height),
              "model": model_name, "faces": records}
    blobs[f"{stem}.json"] = json.dumps(record, indent=1).encode()
    return record, blobs


def write_photo_outputs(out_dir: Path, blobs: dict[str, bytes], overwrite: bool = False) -> list[Path]:
    """Write all files of one photo, the JSON last (its presence marks the photo as done)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / name for name in blobs]
    if not overwrite:
        existing = [p for p in targets if p.exists()]
        if existing:
            raise OutputExistsError(f"{existing[0]} exists (use --overwrite to replace it)")
    ordered = sorted(blobs, key=lambda name: name.endswith(".json"))
    return [write_output(out_dir / name, blobs[name], overwrite=overwrite) for name in ordered]


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems for input photos: the file stem, made unique by a counter where two collide."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        stem = path.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n + 1}")
    return out


__all__ = ["SCHEMA_VERSION", "face_record", "overlay_png", "face_mat", "photo_outputs", "write_photo_outputs",
           "unique_stems", "render_colours"]
