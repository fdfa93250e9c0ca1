"""The README's Python examples run as written, on a real photo (users copy them first)."""
from __future__ import annotations

import re
import shutil

import pytest

from conftest import REPO

PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_example_runs(index, faces, conformance, tmp_path, monkeypatch):
    # the user's own licensed model is the conformance suite's tiny synthetic one in the same format
    code = PYTHON_BLOCKS[index].replace("path/to/BFM_model_front.mat", str(conformance / "tiny_bfm" / "BFM_model_front.mat"))
    # "photo.jpg" in the examples is a real dev photo here, in an empty working folder
    shutil.copy(faces / "aflw2000_3d" / "images" / "image00002.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    if "export_mesh(face.mesh()" in code:
        lines = (tmp_path / "face.obj").read_text().splitlines()
        assert sum(line.startswith("v ") for line in lines) == 37700  # the default model's vertices
        assert sum(line.startswith("f ") for line in lines) == 74837
    if "faces = Reconstructor()" in code:
        face = namespace["face"]
        assert face.landmarks68.shape == (68, 2) and 100 < float(face.landmarks68.mean()) < 350
    if "load_model(" in code and "BFM_model_front" in PYTHON_BLOCKS[index]:
        assert namespace["model"].num_vertices == 1517  # the tiny model's, not the default's
