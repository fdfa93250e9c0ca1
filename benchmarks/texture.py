"""Texture baking: time to bake one photo into 512² and 1024² maps, and the bake error.

A synthetic photo (default model, 26° yaw, SH light, a known smooth texture, 640² px) is rendered
and baked back with the known geometry; the error is the mean absolute albedo error over texels of
full photo confidence.  Prints one JSON line.  Usage: python benchmarks/texture.py [--runs N]
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
    stats = distortion(model.mean_shape.numpy(), uv.numpy(), model.triangles.numpy())
    emit("texture", photo_px=PHOTO_SIZE, **results, uv_flipped=stats["flipped"],
         uv_angle_p50_p95=[round(v, 3) for v in stats["angle_p50_p95_max"][:2]],
         uv_area_log2_p50_p95=[round(v, 3) for v in stats["area_log2_p50_p95_max"][:2]])


if __name__ == "__main__":
    main()
