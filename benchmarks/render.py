"""Rasterise + interpolate (3-channel attributes) a face mesh on CPU, median ms over 50 runs.

Usage: python benchmarks/render.py [--runs 50]   -> one JSON line

The mesh is the embedded default face model's mean shape when ``deep3dface.morphable`` provides it,
else a stand-in: a 188 x 188 grid (69,938 triangles) on the front of an ellipsoid, framed like a
Deep3D 224 crop (face ~60% of the width).  Backfaces are culled (a fitter renders front faces only).
Reports the numba and torch backends at 224² and 512², inference (no grad) and forward + backward
w.r.t. vertices and colours, and numba's first-call costs in fresh processes: compiling (empty
cache) and loading the on-disk cache.  The 1-minute load average is reported: the timings are only
meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
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


FIRST_CALLS = """
import json, time
t0 = time.perf_counter(); import numba; t1 = time.perf_counter()
import torch
from deep3dface.render import interpolate, rasterize
screen = (torch.rand(1, 3, 3) * 8).requires_grad_(); triangles = torch.tensor([[0, 1, 2]])
t2 = time.perf_counter(); raster = rasterize(screen, triangles, (8, 8), backend="numba"); t3 = time.perf_counter()
interpolate(torch.rand(3, 3), raster, triangles).sum().backward(); t4 = time.perf_counter()
print(json.dumps([t1 - t0, t3 - t2, t4 - t3]))
"""


def first_calls(cache_dir: str | None = None) -> list[float]:
    """Seconds, in a fresh process: import numba, first rasterize, first interpolate + backward
    (float32).  With ``cache_dir`` (empty) numba compiles; without, it loads the on-disk cache."""
    env = dict(os.environ, **({"NUMBA_CACHE_DIR": cache_dir} if cache_dir else {}))
    out = subprocess.run([sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True, check=True, env=env)
    return [round(t, 3) for t in json.loads(out.stdout)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    load = round(os.getloadavg()[0], 2)             # before our own compile runs add to it
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
                    interpolate(colours, raster, triangles, backend=backend)

            def train():
                s, c = screen.clone().requires_grad_(), colours.clone().requires_grad_()
                raster = rasterize(s, triangles, (size, size), cull_backfaces=True, backend=backend)
                interpolate(c, raster, triangles, backend=backend).sum().backward()

            results[f"{backend}_{size}_ms"] = median_ms(infer, runs=args.runs)
            results[f"{backend}_{size}_fwd_bwd_ms"] = median_ms(train, runs=args.runs)
        raster = rasterize(screen, triangles, (size, size), cull_backfaces=True)
        results[f"covered_pixels_{size}"] = int(raster.mask.sum())
    with tempfile.TemporaryDirectory() as empty:
        cold = first_calls(empty)
    first_calls()                                   # make sure the on-disk cache exists
    warm = first_calls()
    emit("render", load_average_1min=load, mesh=name, vertices=len(vertices), triangles=len(triangles),
         numba_threads=_numba_threads(), numba_import_s=warm[0], numba_cached_first_rasterize_s=warm[1],
         numba_cached_first_interpolate_backward_s=warm[2], numba_compile_rasterize_s=cold[1],
         numba_compile_interpolate_backward_s=cold[2], **results)


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


if __name__ == "__main__":
    main()
