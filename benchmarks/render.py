"""Rasterise + interpolate (3-channel attributes) a face mesh on CPU, median ms over 50 runs.

Usage: python benchmarks/render.py [--runs 50]   -> one JSON line

The mesh is the embedded default face model's mean shape when ``deep3dface.morphable`` provides it,
else a stand-in: a 188 x 188 grid (69,938 triangles) on the front of an ellipsoid, framed like a
Deep3D 224 crop (face ~60% of the width).  Backfaces are culled (a fitter renders front faces only).
Reports the numba and torch backends at 224² and 512², inference (no grad) and forward + backward
w.r.t. vertices and colours, and the numba first-call time (compile, or load from the disk cache).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_ms  # noqa: E402

from deep3dface.camera import Camera  # noqa: E402
from deep3dface.render import interpolate, rasterize  # noqa: E402


def ellipsoid_face(rows: int = 188, cols: int = 188, axes=(0.66, 0.80, 0.60)) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) model-space vertices (y up, +z to the camera) and (F, 3) CCW-outward triangles."""
    elevation = torch.linspace(math.radians(58), math.radians(-58), rows, dtype=torch.float64)
    azimuth = torch.linspace(math.radians(-78), math.radians(78), cols, dtype=torch.float64)
    phi, theta = torch.meshgrid(elevation, azimuth, indexing="ij")
    a, b, c = axes
    vertices = torch.stack([a * phi.cos() * theta.sin(), b * phi.sin(), c * phi.cos() * theta.cos()], -1)
    r, k = torch.meshgrid(torch.arange(rows - 1), torch.arange(cols - 1), indexing="ij")
    top_left = (r * cols + k).reshape(-1)
    # row 0 is the top: (top-left, bottom-left, bottom-right) is counter-clockwise seen from +z
    quads = torch.stack([top_left, top_left + cols, top_left + cols + 1, top_left + 1], -1)
    triangles = torch.cat([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    return vertices.reshape(-1, 3).float(), triangles


def face_mesh() -> tuple[str, torch.Tensor, torch.Tensor]:
    try:
        from deep3dface.morphable.formats import load_model

        model = load_model("default")
        coeffs = model.zero_coefficients(1)
        return "embedded default (mean shape)", model(coeffs).vertices[0].detach(), model.triangles
    except Exception:  # the embedded model is optional here: fall back to the stand-in
        vertices, triangles = ellipsoid_face()
        return "ellipsoid stand-in 188x188 grid", vertices, triangles


def first_call_ms() -> float:
    """Numba first call in a fresh process (loads the on-disk cache once it exists)."""
    code = ("import time, torch; from deep3dface.render import rasterize; s = torch.rand(1, 3, 3) * 8;"
            "t = time.perf_counter(); rasterize(s, torch.tensor([[0, 1, 2]]), (8, 8), backend='numba');"
            "print((time.perf_counter() - t) * 1e3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip()), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    first = first_call_ms()
    name, vertices, triangles = face_mesh()
    colours = torch.rand(vertices.shape, generator=torch.Generator().manual_seed(0))
    results = {}
    for size in (224, 512):
        camera = Camera.crop(size=size, focal=1015.0 * size / 224)
        screen = camera.screen(vertices[None])
        for backend in ("numba", "torch"):
            def infer():
                with torch.no_grad():
                    raster = rasterize(screen, triangles, (size, size), cull_backfaces=True, backend=backend)
                    interpolate(colours, raster, triangles)

            def train():
                s, c = screen.clone().requires_grad_(), colours.clone().requires_grad_()
                raster = rasterize(s, triangles, (size, size), cull_backfaces=True, backend=backend)
                interpolate(c, raster, triangles).sum().backward()

            results[f"{backend}_{size}_ms"] = median_ms(infer, runs=args.runs)
            results[f"{backend}_{size}_fwd_bwd_ms"] = median_ms(train, runs=max(5, args.runs // 5))
        raster = rasterize(screen, triangles, (size, size), cull_backfaces=True)
        results[f"covered_pixels_{size}"] = int(raster.mask.sum())
    emit("render", load_average_1min=round(os.getloadavg()[0], 2), mesh=name, vertices=len(vertices), triangles=len(triangles),
         numba_first_call_ms=first, numba_threads=_numba_threads(), **results)


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


if __name__ == "__main__":
    main()
