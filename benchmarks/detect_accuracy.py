"""MTCNN accuracy on real photos -> one JSON line.

* AFLW2000-3D (the 500 dev photos of ../shared/faces): detection rate, wrong faces, 5-point error
  against the ground truth's 5 points (eye centres = mean of the 6 eye-contour points, nose tip #30,
  mouth corners #48/#54, 0-based), normalised by the ground truth's box size sqrt(w h), per yaw bin;
* the pixel convention, measured without annotations: a landmark's x in a photo plus its mirror
  partner's x in the horizontally flipped photo equals W in corner coordinates (W - 1 if the
  detector's points were pixel-centre coordinates);
* agreement with the reference's detections on ../shared/conformance/examples (mean %IOD).

Usage: python benchmarks/detect_accuracy.py [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from deep3dface.detect import MTCNN  # noqa: E402
from deep3dface.io import read_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
MIRROR = [1, 0, 2, 4, 3]  # left/right partners of the 5 points


def gt_five(lm68: np.ndarray) -> np.ndarray:
    """Ground-truth 68 points (0-based centre convention) -> 5 points in corner convention."""
    five = np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])
    return five + 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def aflw(detector: MTCNN, limit: int | None) -> dict:
    manifest = json.loads((SHARED / "faces" / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"][:limit]
    found = wrong = multi = 0
    errors, yaws, flips = [], [], []
    for item in items:
        image = read_image(SHARED / "faces" / item["path"])
        faces, faces_flipped = detector([image, image.flip(-1)])
        lm68 = np.asarray(item["faces"][0]["landmarks68"], dtype=np.float64)
        gt_box = np.concatenate([lm68.min(0), lm68.max(0)]) + 0.5
        if not faces:
            continue
        found += 1
        multi += len(faces) > 1
        top = faces[0]
        if box_iou(top.box.double().numpy(), gt_box) < 0.25:
            wrong += 1
            continue
        size = np.sqrt(np.prod(gt_box[2:] - gt_box[:2]))
        errors.append(np.linalg.norm(top.landmarks5.double().numpy() - gt_five(lm68), axis=1).mean() / size)
        yaws.append(abs(item["yaw_deg"]))
        if faces_flipped and abs(item["yaw_deg"]) < 30:
            mirrored = faces_flipped[0].landmarks5.double().numpy()[MIRROR]
            flips.append(top.landmarks5.double().numpy()[:, 0] + mirrored[:, 0] - image.shape[-1])
    errors, yaws, flips = np.array(errors), np.array(yaws), np.array(flips)
    bins = {f"{lo}-{hi}": round(100 * float(errors[(yaws >= lo) & (yaws < hi)].mean()), 3)
            for lo, hi in ((0, 30), (30, 60), (60, 91)) if ((yaws >= lo) & (yaws < hi)).any()}
    return {
        "photos": len(items), "found": found, "detection_rate": round(found / len(items), 4),
        "wrong_top_face": wrong, "photos_with_several_faces": multi,
        "nme5_bbox_percent_by_yaw": bins, "nme5_bbox_percent_mean": round(100 * float(errors.mean()), 3),
        "flip_x_sum_minus_W_px": {"faces": len(flips), "mean": round(float(flips.mean()), 3),
                                  "sem": round(float(flips.mean(1).std() / np.sqrt(len(flips))), 3),
                                  "per_point": np.round(flips.mean(0), 3).tolist()},
    }


def reference_examples(detector: MTCNN) -> dict:
    folder = SHARED / "conformance" / "examples"
    per_photo = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png")):
        ref = np.loadtxt(folder / "detections" / f"{path.stem}.txt")
        faces = detector([read_image(path)])[0]
        if not faces:
            per_photo[path.stem] = None
            continue
        # the reference's files hold MTCNN's raw output, which is already in corner coordinates
        iod = np.linalg.norm(ref[1] - ref[0])
        per_photo[path.stem] = round(100 * float(np.linalg.norm(faces[0].landmarks5.double().numpy() - ref,
                                                                 axis=1).mean() / iod), 2)
    values = [v for v in per_photo.values() if v is not None]
    return {"mean_percent_iod": round(float(np.mean(values)), 3), "max_percent_iod": max(values),
            "missed": sum(v is None for v in per_photo.values()), "per_photo_percent_iod": per_photo}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N AFLW2000-3D photos only")
    args = parser.parse_args()
    torch.manual_seed(0)
    detector = MTCNN.pretrained()
    emit("detect_accuracy", aflw2000_3d=aflw(detector, args.limit), reference_detections=reference_examples(detector))


if __name__ == "__main__":
    main()
