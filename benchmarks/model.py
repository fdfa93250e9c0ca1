"""Face-model forward pass (shape + normals + colour + projection) on CPU, median ms over 50 runs.

Usage: python benchmarks/model.py [--model default|PATH]   -> one JSON line
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_ms  # noqa: E402

from deep3dface.camera import Camera  # noqa: E402
from deep3dface.morphable import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    model = load_model(args.model)
    camera = Camera.crop()
    results = {}
    for batch in (1, 16):
        coeffs = model.zero_coefficients(batch)
        generator = torch.Generator().manual_seed(0)
        coeffs = coeffs.replace(id=torch.randn(coeffs.id.shape, generator=generator),
                                exp=torch.randn(coeffs.exp.shape, generator=generator),
                                angle=0.3 * torch.randn(coeffs.angle.shape, generator=generator))

        @torch.inference_mode()
        def forward():
            face = model(coeffs)
            camera.screen(face.vertices)

        ms = median_ms(forward, runs=args.runs)
        results[f"B{batch}_ms"] = ms
        results[f"B{batch}_ms_per_face"] = round(ms / batch, 3)
    emit("model_forward", model=model.name, vertices=model.num_vertices, triangles=len(model.triangles), **results)


if __name__ == "__main__":
    main()
