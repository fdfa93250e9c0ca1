"""MTCNN accuracy on real photos -> one JSON line.

* AFLW2000-3D (the 500 dev photos of ../shared/faces): detection rate of the reference cascade
  (first pass) and with the fallback pass (``MTCNNConfig.fallback``), misses, wrong top faces
  (IoU < 0.25 with the ground truth's box; the top face is the first in the detector's order, most
  prominent first by default), 5-point error against the ground truth's 5 points (eye
  centres = mean of the 6 eye-contour points, nose tip #30, mouth corners #48/#54, 0-based),
  normalised by the ground truth's box size sqrt(w h), per yaw bin;
* the second detector (``detect.finder``: BlazeFace, confirmed by the landmarker) on the photos
  MTCNN misses: which it finds, whether on the annotated face, and the final detection rate;
* cost: ms per photo with and without the fallback on photos the first pass finds (it must not
  change), and on the photos only the fallback finds;
* false faces: background strips of the photos (outside the annotated face's box grown by half its
  size, at least 100 px wide; the first 100 photos that have one) where the first pass finds nothing: how often the fallback finds a
  face there (a photo may show other people, so this bounds the rate from above);
* the pixel convention, measured without annotations: a landmark's x in a photo plus its mirror
  partner's x in the horizontally flipped photo equals W in corner coordinates (W - 1 if the
  detector's points were pixel-centre coordinates);
* agreement with the reference's detections on ../shared/conformance/examples (mean %IOD).

Usage: python benchmarks/detect_accuracy.py [--limit N] [--details FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_ms  # noqa: E402

from deep3dface.detect import MTCNN  # noqa: E402
from deep3dface.io import read_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
MIRROR = [1, 0, 2, 4, 3]  # left/right partners of the 5 points
STRIPS = 100  # background strips checked (the fallback runs 7 views on each the first pass leaves empty)


def gt_five(lm68: np.ndarray) -> np.ndarray:
    """Ground-truth 68 points (0-based centre convention) -> 5 points in corner convention."""
    five = np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])
    return five + 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def five_point_error(face, lm68: np.ndarray) -> float:
    gt_box = np.concatenate([lm68.min(0), lm68.max(0)]) + 0.5
    size = np.sqrt(np.prod(gt_box[2:] - gt_box[:2]))
    return float(np.linalg.norm(face.landmarks5.double().numpy() - gt_five(lm68), axis=1).mean() / size)


def background_strip(image: torch.Tensor, lm68: np.ndarray) -> torch.Tensor | None:
    """The widest strip of the photo beside the annotated face's box grown by half its size."""
    height, width = image.shape[-2:]
    lo, hi = lm68.min(0) + 0.5, lm68.max(0) + 0.5
    grow = 0.5 * (hi - lo)
    x0, y0 = np.floor(lo - grow).astype(int)
    x1, y1 = np.ceil(hi + grow).astype(int)
    strips = [image[:, :, :max(x0, 0)], image[:, :, min(x1, width):], image[:, :max(y0, 0)], image[:, min(y1, height):]]
    best = max(strips, key=lambda s: min(s.shape[-2:]))
    return best if min(best.shape[-2:]) >= 100 else None


def aflw(reference: MTCNN, detector: MTCNN, limit: int | None, details: list | None, finder=None) -> dict:
    manifest = json.loads((SHARED / "faces" / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"][:limit]
    first = found = multi = 0
    wrong, misses, rescued, fallback_ms, second = [], [], [], [], {}
    errors, yaws, flips, strips = [], [], [], []
    for item in items:
        image = read_image(SHARED / "faces" / item["path"])
        lm68 = np.asarray(item["faces"][0]["landmarks68"], dtype=np.float64)
        gt_box = np.concatenate([lm68.min(0), lm68.max(0)]) + 0.5
        faces, faces_flipped = reference([image, image.flip(-1)])
        first += bool(faces)
        if not faces:  # what the default detector does: the same first pass, then the fallback
            start = time.perf_counter()
            faces = detector([image])[0]
            fallback_ms.append((time.perf_counter() - start) * 1e3)
            rescued.append(item["id"]) if faces else misses.append(item["id"])
            if not faces and finder is not None:
                found_second = finder.detect(image)
                second[item["id"]] = [round(box_iou(f.box.double().numpy(), gt_box), 3) for f in found_second]
        strip = background_strip(image, lm68) if len(strips) < STRIPS else None
        if strip is not None:
            strips.append(strip)
        if details is not None:
            details.append({"id": item["id"], "yaw": item["yaw_deg"], "size": list(image.shape[-2:]),
                            "faces": [{"box": f.box.tolist(), "score": f.score, "points": f.landmarks5.tolist(),
                                       "iou": box_iou(f.box.double().numpy(), gt_box)} for f in faces]})
        if not faces:
            continue
        found += 1
        multi += len(faces) > 1
        top = faces[0]
        if box_iou(top.box.double().numpy(), gt_box) < 0.25:
            wrong.append(item["id"])
            continue
        errors.append(five_point_error(top, lm68))
        yaws.append(abs(item["yaw_deg"]))
        if faces_flipped and abs(item["yaw_deg"]) < 30:
            mirrored = faces_flipped[0].landmarks5.double().numpy()[MIRROR]
            flips.append(top.landmarks5.double().numpy()[:, 0] + mirrored[:, 0] - image.shape[-1])
    errors, yaws, flips = np.array(errors), np.array(yaws), np.array(flips)
    # ../shared/faces/nme.py's bins: [0, 30], (30, 60], beyond 60 (the few annotated beyond 90 included)
    in_bin = {"0-30": yaws <= 30, "30-60": (yaws > 30) & (yaws <= 60), "60-90": yaws > 60}
    bins = {name: round(100 * float(errors[sel].mean()), 3) for name, sel in in_bin.items() if sel.any()}
    empty = [s for s in strips if not reference([s])[0]]
    return {
        "photos": len(items), "found_first_pass": first, "found": found,
        "detection_rate_first_pass": round(first / len(items), 4), "detection_rate": round(found / len(items), 4),
        "found_by_fallback": rescued, "missed": misses,
        "second_detector_iou_with_gt_box": second,
        "detection_rate_with_second_detector": round((found + sum(bool(v) for v in second.values())) / len(items), 4),
        "right_top_face": found - len(wrong),
        "wrong_top_face": len(wrong), "wrong_top_face_ids": wrong, "photos_with_several_faces": multi,
        "nme5_bbox_percent_by_yaw": bins, "nme5_bbox_percent_mean": round(100 * float(errors.mean()), 3),
        "fallback_ms_per_photo_it_runs_on": round(float(np.mean(fallback_ms)), 1) if fallback_ms else None,
        "background_strips": {"strips": len(strips), "first_pass_finds_none": len(empty),
                              "fallback_finds_a_face": sum(bool(detector([s])[0]) for s in empty)},
        "flip_x_sum_minus_W_px": {"faces": len(flips), "mean": round(float(flips.mean()), 3),
                                  "sem": round(float(flips.mean(1).std() / np.sqrt(len(flips))), 3),
                                  "per_point": np.round(flips.mean(0), 3).tolist()},
    }


def cost(reference: MTCNN, detector: MTCNN, photos: int = 20) -> dict:
    """Median ms per photo on the first AFLW photos the first pass finds: with and without the
    fallback (equal up to noise: the fallback does not run there)."""
    manifest = json.loads((SHARED / "faces" / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"]
    images = []
    for item in items:
        image = read_image(SHARED / "faces" / item["path"])
        if reference([image])[0]:
            images.append(image)
        if len(images) == photos:
            break
    return {"photos": photos,
            "reference_ms": round(median_ms(lambda: [reference([im]) for im in images], runs=3) / photos, 1),
            "with_fallback_ms": round(median_ms(lambda: [detector([im]) for im in images], runs=3) / photos, 1)}


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
    parser.add_argument("--details", default=None, help="write every photo's faces to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    detector = MTCNN.pretrained()
    reference = MTCNN(detector.pnet, detector.rnet, detector.onet, replace(detector.config, fallback=None))
    details = [] if args.details else None
    from deep3dface.detect.finder import FaceFinder
    from deep3dface.detect.landmarks import create_landmarker

    finder = FaceFinder.create(detector, create_landmarker("mediapipe"))
    results = aflw(reference, detector, args.limit, details, finder)
    if args.details:
        Path(args.details).write_text(json.dumps(details))
    emit("detect_accuracy", config=repr(detector.config), aflw2000_3d=results, cost=cost(reference, detector),
         reference_detections=reference_examples(detector))


if __name__ == "__main__":
    main()
