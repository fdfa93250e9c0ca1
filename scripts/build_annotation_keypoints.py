#!/usr/bin/env python3
"""Build the hidden-point vertices of the output 68 landmarks (``data/annotation_keypoints.json``,
see ``deep3dface.fit.annotation``) from the AFLW2000-3D dev photos.

Method:
1. run the pipeline (default model and landmarker; no appearance stage, which leaves the geometry
   alone) on every dev photo, fitting the detection nearest the ground truth's centre as
   benchmarks/aflw.py does, and keep the coefficients and the photo camera;
2. a point counts as hidden in a photo where ``hidden_weights`` > 0.5;
3. per point k, every vertex v within ``--radius`` of k's keypoint on the mean shape costs
   sum over the photos where k is hidden of  w_bin * ||project(v) - (gt_k + bias)|| / size,
   plus the same for k's left/right partner at the mirror vertex of v, so the choice is the same
   on both sides of the face; the cheapest is k's hidden vertex.  ``w_bin`` weighs the three yaw
   bins equally (the benchmark's balanced mean), ``size`` is sqrt(w h) of the GT's box (the NME's
   normaliser), and ``bias`` the median offset of the fitted 68 from the GT on the |yaw| < 30
   photos: the annotation sits ~(1.8, 1.0) px up-left of every detector's points there, an offset
   of the data set that must not be learned into the vertices;
   A midline point's candidates are those on the midline (within 1 mm of their mirror image);
4. a point hidden in fewer than ``--min-photos`` photos (with its partner) keeps its keypoint.
Held-out validation: chosen on the even fitted photos (manifest order, photos without a face
skipped) and measured on the odd ones, and vice versa (the bias is the median over all frontal ones); the NME per yaw bin with and without is recorded in the file's provenance.

Usage: python scripts/build_annotation_keypoints.py [--out src/deep3dface/data/annotation_keypoints.json]
       [--cache /tmp/annotation_fits.pt] [--limit N]
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
YAW_BINS = ((0, 30), (30, 60), (60, 1e9))  # ../shared/faces/nme.py's: [0, 30], (30, 60], (60, inf)


def collect(limit: int | None) -> dict:
    """Fitted coefficients, photo cameras, GT (corner pixels) and yaw of the dev photos."""
    from deep3dface.fit.fitter import FitConfig
    from deep3dface.io import read_image
    from deep3dface.pipeline import Reconstructor, ReconstructorConfig

    manifest = json.loads((FACES / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"][:limit]
    recon = Reconstructor(config=ReconstructorConfig(fit=FitConfig(appearance=None), annotation_keypoints=False))
    out = {"ids": [], "coeffs": [], "K": [], "gt": [], "yaw": []}
    for n, item in enumerate(items):
        photo = read_image(FACES / item["path"])
        gt = np.asarray(item["faces"][0]["landmarks68"], np.float64) + 0.5  # centre -> corner pixels
        detections = recon.detector.detect(photo)
        if not detections:
            continue
        nearest = min(detections, key=lambda d: float(np.linalg.norm(d.box.view(2, 2).mean(0).numpy() - gt.mean(0))))
        face = recon.reconstruct_detections(photo, [nearest])[0]
        out["ids"].append(item["id"])
        out["coeffs"].append(face.coefficients.to_vector()[0].double())
        out["K"].append(face.camera.K.double())
        out["gt"].append(torch.as_tensor(gt))
        out["yaw"].append(item["yaw_deg"])
        if n % 50 == 0:
            print(f"{n}/{len(items)}", file=sys.stderr)
    return {k: (v if k == "ids" else torch.stack(v) if k != "yaw" else torch.tensor(v)) for k, v in out.items()}


def projections(model, data: dict, vertex_ids: torch.Tensor) -> np.ndarray:
    """(P, V, 2) photo pixels of the vertices in every fitted photo."""
    from deep3dface.camera import Camera
    from deep3dface.types import Coefficients

    coeffs = Coefficients.from_vector(data["coeffs"], model.layout)
    posed = model.posed_vertices(coeffs, vertex_ids)
    return Camera(data["K"], 1, 1).project(posed).numpy()


def choose(model, data, candidates, cand_points, hidden, bias, train, mirror_vertex, min_photos) -> np.ndarray:
    """(68,) vertex ids: per point, the candidate with the least bin-weighted hidden-point error."""
    from deep3dface.detect.landmarks import MIRROR_IBUG68

    gt, yaw = data["gt"].numpy() + bias, data["yaw"].abs().numpy()
    size = np.sqrt(np.prod(data["gt"].numpy().max(1) - data["gt"].numpy().min(1), axis=1))
    bins = np.digitize(yaw, [30, 60], right=True)  # YAW_BINS
    w_bin = np.array([1.0 / (3 * max(((bins == b) & train).sum(), 1)) for b in bins])
    column = {int(v): j for j, v in enumerate(cand_points["ids"])}
    chosen = model.keypoints.numpy().copy()
    mean = model.mean_shape.numpy()
    for k in range(68):
        partner = MIRROR_IBUG68[k]
        if partner < k:
            continue  # chosen with its partner, as the mirror image
        own = candidates[k]
        if partner == k:  # a midline point stays on the midline
            own = own[np.linalg.norm(mean[own] - mean[mirror_vertex[own]], axis=1) < 0.01]
        cost, count = 0.0, 0
        pooled = ((k, own),) if partner == k else ((k, own), (partner, mirror_vertex[own]))
        for point, vertices in pooled:
            use = train & hidden[:, point]
            count += int(use.sum())
            cols = [column[int(v)] for v in vertices]
            err = np.linalg.norm(cand_points["pixels"][use][:, cols] - gt[use][:, None, point], axis=-1)
            cost = cost + (err / size[use, None] * w_bin[use, None]).sum(0)
        if count >= min_photos:
            chosen[k] = int(own[int(np.argmin(cost))])
            chosen[partner] = int(mirror_vertex[chosen[k]])
    return chosen


def nme_by_bin(model, data, hidden_vertices, select) -> dict:
    from deep3dface.camera import Camera
    from deep3dface.fit.annotation import output_keypoints
    from deep3dface.types import Coefficients

    coeffs = Coefficients.from_vector(data["coeffs"][select], model.layout)
    points = Camera(data["K"][select], 1, 1).project(output_keypoints(model, coeffs, hidden_vertices)).numpy()
    gt = data["gt"][select].numpy()
    size = np.sqrt(np.prod(gt.max(1) - gt.min(1), axis=1))
    nme = np.linalg.norm(points - gt, axis=-1).mean(1) / size
    yaw = data["yaw"][select].abs().numpy()
    per_bin = [float(nme[((yaw > lo) | (lo == 0)) & (yaw <= hi)].mean()) for lo, hi in YAW_BINS]
    return {f"{lo}-{min(hi, 90)}": round(100 * v, 3) for (lo, hi), v in zip(YAW_BINS, per_bin)} | {
        "balanced": round(100 * float(np.mean(per_bin)), 3), "photos": int(select.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "src" / "deep3dface" / "data" / "annotation_keypoints.json")
    parser.add_argument("--cache", type=Path, default=None, help="reuse / store the fits here")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--radius", type=float, default=0.3, help="candidate radius, model units (decimetres)")
    parser.add_argument("--min-photos", type=int, default=40, help="hidden in at least this many photos (a point and its partner together)")
    args = parser.parse_args()

    from deep3dface.fit.annotation import HIDDEN_COSINE, HIDDEN_YAW, hidden_weights
    from deep3dface.morphable import load_model
    from deep3dface.morphable.topology import mirror_vertex_map
    from deep3dface.types import Coefficients

    if args.cache is not None and args.cache.exists():
        data = torch.load(args.cache, weights_only=False)
    else:
        data = collect(args.limit)
        if args.cache is not None:
            torch.save(data, args.cache)
    model = load_model("default", dtype=torch.float64)
    mean = model.mean_shape.double()
    keypoints = model.keypoints
    candidates = [torch.nonzero((mean - mean[k]).norm(dim=1) < args.radius)[:, 0].numpy() for k in keypoints]
    mirror_vertex = mirror_vertex_map(mean.numpy())[0]
    ids = np.unique(np.concatenate(candidates + [mirror_vertex[c] for c in candidates]))
    cand_points = {"ids": ids, "pixels": projections(model, data, torch.as_tensor(ids))}
    coeffs = Coefficients.from_vector(data["coeffs"], model.layout)
    hidden = (hidden_weights(model, coeffs) > 0.5).numpy()
    fitted = projections(model, data, keypoints)
    frontal = data["yaw"].abs().numpy() < 30
    bias = np.median((fitted - data["gt"].numpy())[frontal].mean(1), axis=0)

    index = np.arange(len(data["ids"]))
    validation = {}
    for name, train in (("even_to_odd", index % 2 == 0), ("odd_to_even", index % 2 == 1)):
        chosen = torch.as_tensor(choose(model, data, candidates, cand_points, hidden, bias, train, mirror_vertex,
                                        args.min_photos // 2))
        validation[name] = {"keypoints": nme_by_bin(model, data, None, ~train),
                            "annotation": nme_by_bin(model, data, chosen, ~train)}
        print(name, json.dumps(validation[name]), file=sys.stderr)
    chosen = torch.as_tensor(choose(model, data, candidates, cand_points, hidden, bias, index >= 0, mirror_vertex,
                                    args.min_photos))
    moved = (mean[chosen] - mean[keypoints]).norm(dim=1)
    result = {
        "model": model.name,
        "num_vertices": model.num_vertices,
        "hidden_vertices": chosen.tolist(),
        "hidden_positions": np.round(mean[chosen].numpy(), 6).tolist(),
        "keypoint_positions": np.round(mean[keypoints].numpy(), 6).tolist(),
        "provenance": {
            "script": "scripts/build_annotation_keypoints.py",
            "date": datetime.date.today().isoformat(),
            "photos": f"../shared/faces AFLW2000-3D dev photos, {len(data['ids'])} fitted (landmarks68 re-annotated GT)",
            "radius": args.radius, "min_photos": args.min_photos,
            "hidden_cosine": list(HIDDEN_COSINE), "hidden_yaw": list(HIDDEN_YAW),
            "annotation_bias_px": np.round(bias, 3).tolist(),
            "hidden_photos_per_point": hidden.sum(0).tolist(),
            "moved_mm": np.round(moved.numpy() * 100, 1).tolist(),
            "in_sample": {"keypoints": nme_by_bin(model, data, None, index >= 0),
                          "annotation": nme_by_bin(model, data, chosen, index >= 0)},
            "held_out": validation,
        },
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["provenance"]["in_sample"]), file=sys.stderr)


if __name__ == "__main__":
    main()
