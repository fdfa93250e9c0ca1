"""MTCNN detection speed: median ms per photo at 450x450, 1280x720 and 640x480 -> one JSON line.

The photos are the 25 conformance examples (real faces), resized with Pillow to each size; every
run detects one photo (or, for ``batch8``, eight photos of one size in one call, per photo).

Usage: python benchmarks/detect.py [--runs 3] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from deep3dface.detect import MTCNN  # noqa: E402
from deep3dface.io import read_image  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "examples"
SIZES = {"450x450": (450, 450), "1280x720": (1280, 720), "640x480": (640, 480)}


def photos(size: tuple[int, int], device: str) -> list[torch.Tensor]:
    paths = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
    return [read_image(Image.open(p).convert("RGB").resize(size, Image.BICUBIC)).to(device) for p in paths]


def per_photo_ms(detector: MTCNN, images: list[torch.Tensor], runs: int, batch: int = 1) -> float:
    def sync():
        if images[0].is_cuda:
            torch.cuda.synchronize()

    for image in images[:3]:  # warm-up: compiled kernels, allocator, oneDNN primitive caches
        detector([image] * batch)
    times = []
    for _ in range(runs):
        for image in images:
            sync()
            start = time.perf_counter()
            detector([image] * batch)
            sync()
            times.append((time.perf_counter() - start) * 1e3 / batch)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="passes over the 25 photos per size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = MTCNN.pretrained().to(args.device)
    results = {}
    for name, size in SIZES.items():
        images = photos(size, args.device)
        results[f"ms_per_photo_{name}"] = per_photo_ms(detector, images, args.runs)
    results["ms_per_photo_640x480_batch8"] = per_photo_ms(detector, photos(SIZES["640x480"], args.device),
                                                         max(1, args.runs // 2), batch=8)
    emit("detect", device=args.device, photos=25, **results)


if __name__ == "__main__":
    main()
