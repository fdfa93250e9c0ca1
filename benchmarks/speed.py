"""Milliseconds per stage and per face of the Reconstructor, B = 1 and batched; peak RSS.

Stages: detect (MTCNN on the photo), align (crop), landmarks (face mesh), fit stages (landmark LM,
appearance, photometric when enabled), outputs (mesh/.mat/overlay bytes), and R-Net (random
weights: timing only) at B = 1 and B = 8.  Median over a few AFLW2000-3D photos.

    python benchmarks/speed.py [--photos 5] [--photometric 0]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402
from aflw import shared_faces  # noqa: E402

from deep3dface.align import align  # noqa: E402
from deep3dface.detect.landmarks import landmarks_of  # noqa: E402
from deep3dface.fit.fitter import FitConfig, FitTargets, PhotometricStage, fit_faces  # noqa: E402
from deep3dface.io.images import read_image  # noqa: E402
from deep3dface.outputs import photo_outputs  # noqa: E402
from deep3dface.pipeline import Reconstructor, ReconstructorConfig  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--photometric", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    faces_dir = shared_faces()
    manifest = json.loads((faces_dir / "manifest.json").read_text())
    entries = [m for m in manifest["images"] if m["source"] == "aflw2000_3d"][: args.photos + 1]
    config = ReconstructorConfig(fit=FitConfig(photometric=PhotometricStage(iterations=args.photometric)))
    recon = Reconstructor(config=config)
    stages: dict[str, list[float]] = {k: [] for k in ("read", "detect", "align", "landmarks", "fit_landmarks",
                                                      "fit_appearance", "fit_total", "outputs", "total")}
    crops_all, targets_all = [], []
    for n, entry in enumerate(entries):
        photo, t_read = timed(lambda: read_image(faces_dir / entry["path"]))
        detections, t_detect = timed(lambda: recon.detector.detect(photo))
        if not detections:
            continue
        detection = detections[0]
        (crop, alignment, _), t_align = timed(lambda: align(photo, detection.landmarks5))
        mark, t_marks = timed(lambda: landmarks_of(recon.landmarker, photo, detection))
        targets = FitTargets(crop[None], alignment.to_crop(mark.ibug68.double())[None].float())
        _, t_lm = timed(lambda: fit_faces(recon.model, targets, FitConfig(appearance=None, photometric=None)))
        _, t_fit = timed(lambda: fit_faces(recon.model, targets, config.fit))
        faces, _ = timed(lambda: recon.reconstruct_detections(photo, [detection]))
        _, t_out = timed(lambda: photo_outputs("x.jpg", "x", photo, faces, "default"))
        if n == 0:
            continue  # warm-up (numba compile/cache load, first allocations)
        crops_all.append(crop)
        targets_all.append(targets)
        for key, value in (("read", t_read), ("detect", t_detect), ("align", t_align), ("landmarks", t_marks),
                           ("fit_landmarks", t_lm), ("fit_appearance", t_fit - t_lm), ("fit_total", t_fit),
                           ("outputs", t_out)):
            stages[key].append(value)
        stages["total"].append(t_read + t_detect + t_align + t_marks + t_fit + t_out)
    batch = FitTargets(torch.cat([t.crops for t in targets_all]), torch.cat([t.landmarks for t in targets_all]))
    _, t_batch = timed(lambda: fit_faces(recon.model, batch, config.fit))

    from deep3dface.nets import RNet, prepare_for_inference
    rnet = prepare_for_inference(RNet("recon").eval())
    with torch.no_grad():
        one = torch.rand(1, 3, 224, 224)
        eight = torch.rand(8, 3, 224, 224)
        rnet(one), rnet(eight)
        rnet_1 = statistics.median(timed(lambda: rnet(one))[1] for _ in range(5))
        rnet_8 = statistics.median(timed(lambda: rnet(eight))[1] for _ in range(3)) / 8

    emit("pipeline_speed", photos=len(stages["total"]),
         ms_median={k: round(statistics.median(v), 1) for k, v in stages.items() if v},
         fit_ms_per_face_batched=round(t_batch / len(targets_all), 1), batch=len(targets_all),
         rnet_ms_per_face={"B1": round(rnet_1, 1), "B8": round(rnet_8, 1)},
         photometric_iterations=args.photometric,
         peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


if __name__ == "__main__":
    main()
