"""Identity consistency of single-photo vs image-set fits on the shared same-person photos; video jitter.

Protocol (one JSON line):
* photos: identity_face_recognition + identity_openface_cmu with an identity label, near-duplicates
  (crops and letterboxed copies of one photo) removed, plus the 8 video_3ddfa_obama frames as more
  photos of Obama.  One face per photo (the best-scored by the landmarker).
* single: every photo fitted alone (``fit_identity`` with one group per photo).
* set: each person's photos split into two disjoint halves (alternating in sorted order), each half
  fitted as one set; a person with one photo gives one set.  Within-person distance = between the
  two halves of a person; between-person = between sets of different people.  A half with one
  photo is a single-photo fit, so people with 2–3 photos weigh on both columns alike.
* ratio = mean within-person distance / mean between-person distance (lower: more consistent).
* identity distances are Euclidean in coefficient space (the bases are N(0, 1)); mesh distances are
  the mean vertex distance (millimetres) over the model's front-face vertices between neutral
  meshes after rigid (Kabsch) alignment.
* held-out: each photo of a person with ≥ 3 photos is fitted (pose + expression) under the identity of
  the set of that person's other photos, and under each other single photo's identity: RMS landmark
  residual in crop pixels (lower: the identity explains an unseen photo better).
* points: the 68 iBUG points plus MediaPipe's 468 through the dense correspondence
  (``fit.image_set``); ``--no-dense``: the 68 only; ``--robust-points``: with the optional
  cross-photo point reweighting.  The held-out residual is over the 68 points either way.
* ``--prior-sweep 50,100``: the ratios and held-out residuals again under other identity prior
  weights (``SetFitConfig.lambda_id``; the default is ``landmark_fit.LAMBDA_ID``): a stronger prior
  shrinks every identity towards the mean face, which lowers the ratios and raises the held-out
  residual (a less accurate identity); the ratio alone can be bought that way.
* ``--symmetry-sweep 1,4,16``: the same under other weights of the identity prior's asymmetric part
  (``SetFitConfig.lambda_symmetry``; the default is ``landmark_fit.LAMBDA_SYMMETRY``), with the mesh ratios.
* video: landmark jitter (mean second difference, px/frame²) of the detected points, the raw fit and
  the smoothed fit over the 8 frames encoded as a clip (frames 7 apart: real motion dominates), and
  over a still clip (one frame repeated at 25 fps): there it is pure jitter.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from deep3dface.camera import Camera  # noqa: E402
from deep3dface.fit.image_set import SetFitConfig, fit_identity, held_out_rms  # noqa: E402
from deep3dface.fit.losses import LANDMARK_WEIGHTS  # noqa: E402
from deep3dface.image_set import SetObserver, dense_points  # noqa: E402
from deep3dface.morphable import load_model  # noqa: E402

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
MM_PER_DECIMETRE = 100.0


def photos() -> list[tuple[str, Path]]:
    manifest = json.loads((FACES / "manifest.json").read_text())
    out = []
    for image in manifest["images"]:
        note, identity = image.get("note", ""), image.get("identity")
        if identity and not note.startswith("crop of") and "letterboxed" not in note:
            # "source:person": the same person in two sources is one person (Obama's photos and frames)
            out.append((identity.rsplit(":", 1)[-1], FACES / image["path"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-dense", action="store_true", help="fit the 68 points only")
    parser.add_argument("--robust-points", action="store_true", help="cross-photo point reweighting (fit.image_set)")
    parser.add_argument("--no-video", action="store_true", help="skip the video jitter measurement")
    parser.add_argument("--prior-sweep", type=lambda text: [float(v) for v in text.split(",")], default=None,
                        metavar="L1,L2,...", help="also report ratios and held-out residuals under these identity "
                                                 "prior weights (SetFitConfig.lambda_id)")
    parser.add_argument("--symmetry-sweep", type=lambda text: [float(v) for v in text.split(",")], default=None,
                        metavar="S1,S2,...", help="also report ratios and held-out residuals under these identity "
                                                 "symmetry priors (SetFitConfig.lambda_symmetry)")
    args = parser.parse_args()
    model = load_model("default")
    camera = Camera.crop(dtype=torch.float64)
    observer = SetObserver.create(descriptors=False)
    people, chosen = [], []
    for person, path in photos():
        obs = observer.observe(path)
        if obs.faces:
            people.append(person)
            chosen.append(max(obs.faces, key=lambda f: f.landmark_score))
    pixels = torch.stack([f.crop_landmarks for f in chosen])
    dense = None if args.no_dense else dense_points(model, chosen)
    names = sorted(set(people))
    label = torch.tensor([names.index(p) for p in people])
    config = SetFitConfig(robust_points=args.robust_points)
    result = {"photos": len(pixels), "people": len(names), "dense_points": dense is not None,
              "robust_points": config.robust_points}
    result.update(consistency(model, camera, config, pixels, dense, people, names, label, meshes=True))
    if args.prior_sweep:
        result["prior_sweep"] = [
            {"lambda_id": strength,
             **{k: round(v, 4) for k, v in consistency(model, camera, replace(config, lambda_id=strength), pixels,
                                                      dense, people, names, label).items()}}
            for strength in args.prior_sweep]
    if args.symmetry_sweep:
        result["symmetry_sweep"] = [
            {"lambda_symmetry": strength,
             **{k: round(v, 4) for k, v in consistency(model, camera, replace(config, lambda_symmetry=strength), pixels,
                                                      dense, people, names, label, meshes=True).items()}}
            for strength in args.symmetry_sweep]
    if not args.no_video:
        result.update(video_jitter(observer, model))
    emit("identity", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})


def consistency(model, camera, config: SetFitConfig, pixels, dense, people, names, label, meshes: bool = False) -> dict:
    """Single-photo and split-half set fits under ``config``: identity ratios, held-out residuals and,
    with ``meshes``, the neutral meshes' ratios and distances (see the module notes)."""
    fit_people = functools.partial(fit_identity, model, camera=camera, config=config)  # groups: people
    single = fit_people(pixels, dense=dense, groups=torch.arange(len(pixels)))
    halves, half_label, seen = [], [], {}
    for person in people:
        k = seen.get(person, 0)
        seen[person] = k + 1
        key = (person, k % 2)
        if key not in halves:
            halves.append(key)
        half_label.append(halves.index(key))
    groups = torch.tensor(half_label)
    sets = fit_people(pixels, dense=dense, groups=groups)
    set_ids = torch.stack([sets.coefficients.id[groups == g][0] for g in range(len(halves))]).double()
    set_people = torch.tensor([names.index(p) for p, _ in halves])
    single_ids = single.single.id.double()
    result = {"identity_ratio_single": ratio(pairwise(single_ids), label),
              "identity_ratio_set": ratio(pairwise(set_ids), set_people)}
    if meshes:
        front = model.front_vertices
        single_mm = mesh_distances(neutral_front(model, single_ids, front))
        set_mm = mesh_distances(neutral_front(model, set_ids, front))
        result["mesh_ratio_single"] = ratio(single_mm, label)
        result["mesh_ratio_set"] = ratio(set_mm, set_people)
        result.update(mesh_means(single_mm, label, "single"))
        result.update(mesh_means(set_mm, set_people, "set"))
    result.update(held_out(model, pixels, dense, label, single_ids, camera, fit_people))
    return result


def neutral_front(model, ids: torch.Tensor, front: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        shape = model.shape(ids.to(model.mean_shape), torch.zeros(len(ids), model.layout.exp))
    return shape[:, front].double().numpy()


def pairwise(ids: torch.Tensor) -> np.ndarray:
    return torch.cdist(ids, ids).numpy()


def mesh_distances(meshes: np.ndarray) -> np.ndarray:
    n = len(meshes)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = rigid_distance(meshes[i], meshes[j]) * MM_PER_DECIMETRE
    return out


def rigid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean vertex distance after the best rotation and translation of b onto a (Kabsch)."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(cb.T @ ca)
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1, 1, d]) @ vt
    return float(np.linalg.norm(cb @ rotation - ca, axis=1).mean())


def ratio(distances: np.ndarray, label: torch.Tensor) -> float:
    same = (label[:, None] == label[None]).numpy() & ~np.eye(len(label), dtype=bool)
    return float(distances[same].mean() / distances[~(label[:, None] == label[None]).numpy()].mean())


def mesh_means(distances: np.ndarray, label: torch.Tensor, name: str) -> dict:
    same = (label[:, None] == label[None]).numpy()
    return {f"mesh_mm_within_{name}": float(distances[same & ~np.eye(len(label), dtype=bool)].mean()),
            f"mesh_mm_between_{name}": float(distances[~same].mean())}


def held_out(model, pixels, dense, label, single_ids, camera, fit_people) -> dict:
    weights = LANDMARK_WEIGHTS.double()[None]

    def rms(i, identity):
        return held_out_rms(model, pixels[i:i + 1], camera, identity, weights)

    by_set, by_single = [], []
    for person in label.unique():
        members = torch.nonzero(label == person)[:, 0].tolist()
        if len(members) < 3:
            continue
        for i in members:
            rest = [j for j in members if j != i]
            rest_dense = None if dense is None else replace(dense, pixels=dense.pixels[rest])
            by_set.append(rms(i, fit_people(pixels[rest], dense=rest_dense).identity.double()))
            by_single += [rms(i, single_ids[j]) for j in rest]
    return {"held_out_rms_px_set": float(np.mean(by_set)), "held_out_rms_px_single": float(np.mean(by_single)),
            "held_out_photos": len(by_set)}


def video_jitter(observer, model) -> dict:
    import av
    from PIL import Image

    from deep3dface.video import landmark_jitter, reconstruct_video

    frames = [Image.open(p).convert("RGB") for p in sorted((FACES / "video_3ddfa_obama").glob("frame_*.jpg"))]
    if not frames:
        return {"video": "skipped: no video_3ddfa_obama/frame_*.jpg in the shared faces"}
    width, height = (v - v % 2 for v in frames[0].size)  # yuv420p wants even sides
    frames = [f.resize((width, height)) if f.size != (width, height) else f for f in frames]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, images, rate in (("clip", frames, 25 / 7), ("still", [frames[0]] * 12, 25)):
            path = Path(tmp) / f"{name}.mp4"
            with av.open(str(path), "w") as container:
                stream = container.add_stream("mpeg4", rate=round(rate) or 4)
                stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", 8_000_000
                for image in images:
                    container.mux(stream.encode(av.VideoFrame.from_image(image)))
                container.mux(stream.encode())
            result = reconstruct_video(path, observer, model)
            # the still clip skips the tracker's first 3 frames (it settles from the detector's box)
            skip = 3 if name == "still" else 0
            detected = np.stack([f.landmarks68.double().numpy() for f in result.frames])
            out[f"jitter_{name}_detected"] = landmark_jitter(detected[skip:])
            out[f"jitter_{name}_fit_raw"] = landmark_jitter(result.projected(False).numpy()[skip:])
            out[f"jitter_{name}_fit_smoothed"] = landmark_jitter(result.projected(True).numpy()[skip:])
    return out


if __name__ == "__main__":
    main()
