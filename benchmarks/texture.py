"""Texture baking: time to bake one photo into 512² and 1024² maps, and the bake error.

A synthetic photo (default model, 26° yaw, SH light, a known smooth texture, 640² px) is rendered
and baked back with the known geometry; the error is the mean absolute albedo error over texels of
full photo confidence.  With ``--photo PATH`` (or ``--photo demo``: scikit-image's astronaut) it
also times one real photo through the pipeline: the reconstruction, ``photo_outputs`` without and
with the 1024² textured outputs, the bake alone, and the real bake error (mean |shaded texture −
photo| at the camera-facing vertices).  Prints one JSON line.
Usage: python benchmarks/texture.py [--runs N] [--photo PATH|demo]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import emit, median_ms  # noqa: E402
from test_texture import known_texture, scene  # noqa: E402

from deep3dface.morphable import load_model  # noqa: E402
from deep3dface.morphable.topology import mirror_vertex_map  # noqa: E402
from deep3dface.texture import bake_texture, distortion, uv_coordinates  # noqa: E402

PHOTO_SIZE = 640


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--photo", default=None, help="a real photo (or 'demo') to time the textured outputs on")
    args = parser.parse_args()
    model = load_model("default")
    uv = torch.as_tensor(uv_coordinates(model))
    mirror = mirror_vertex_map(model.mean_shape.numpy())[0]
    results = {}
    for size in (512, 1024):
        texture = known_texture(size)
        shot = scene(model, uv, texture, yaw=0.45, seed=1, photo_size=PHOTO_SIZE)
        bake = lambda: bake_texture(shot["photo"], shot["screen"], shot["normals"], model.triangles, uv,  # noqa: E731
                                    shot["albedo"], shot["irradiance"], size=size, mirror=mirror)
        start = time.perf_counter()
        maps = bake()
        first = time.perf_counter() - start
        confident = maps.weight > 0.99
        results[f"bake_ms_{size}"] = median_ms(bake, runs=args.runs, warmup=0)
        results[f"first_bake_ms_{size}"] = round(first * 1e3, 1)
        results[f"bake_error_{size}"] = round(float((maps.albedo - texture).abs().mean(0)[confident].mean()), 5)
        results[f"confident_fraction_{size}"] = round(float(confident.sum() / maps.coverage.sum()), 3)
    if args.photo:
        results.update(pipeline_numbers(args.photo))
    stats = distortion(model.mean_shape.numpy(), uv.numpy(), model.triangles.numpy())
    emit("texture", photo_px=PHOTO_SIZE, **results, uv_flipped=stats["flipped"],
         uv_angle_p50_p95=[round(v, 3) for v in stats["angle_p50_p95_max"][:2]],
         uv_area_log2_p50_p95=[round(v, 3) for v in stats["area_log2_p50_p95_max"][:2]])


def pipeline_numbers(photo_path: str) -> dict:
    """Seconds of the per-photo work, and the bake error on the real photo (see the module doc)."""
    from deep3dface.cli import demo_photo
    from deep3dface.io.images import read_image
    from deep3dface.outputs import photo_outputs
    from deep3dface.pipeline import Reconstructor

    path = demo_photo() if photo_path == "demo" else Path(photo_path)
    photo = read_image(path)
    recon = Reconstructor()
    recon.reconstruct(photo)                                   # compile and warm caches
    timed = {}
    start = time.perf_counter()
    faces = recon.reconstruct(photo)
    timed["photo_reconstruct_s"] = time.perf_counter() - start
    for key, size in (("photo_outputs_s_no_texture", None), ("photo_outputs_s_texture_1024", 1024)):
        start = time.perf_counter()
        photo_outputs(str(path), "bench", photo, faces, "default", texture_size=size)
        timed[key] = time.perf_counter() - start
    face = faces[0]
    start = time.perf_counter()
    maps = face.texture(photo, 1024)
    timed["photo_bake_s_1024"] = time.perf_counter() - start
    g = face.geometry()
    uv, _ = face.uv_chart(face.model)
    camera_space = face.camera.to_camera_space(g.vertices)[0]
    pixels = face.camera.project(g.vertices)[0]
    towards = -camera_space / camera_space.norm(dim=1, keepdim=True) * torch.tensor([1.0, -1.0, -1.0])
    facing = (g.normals[0] * towards).sum(1) > 0.3
    col, row = pixels[facing].floor().long().T
    from deep3dface.texture import sample_texture
    error = (sample_texture(maps.shaded, uv[facing]) - photo[:, row, col].T).abs().mean()
    return {**{k: round(v, 2) for k, v in timed.items()}, "photo": path.name,
            "photo_shaded_error": round(float(error), 4), "photo_faces": len(faces)}


if __name__ == "__main__":
    main()
