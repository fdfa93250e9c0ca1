"""The numba kernel on a real face mesh (the embedded default model, ~75k triangles at 224²):
every way of sharing it out among threads equals the naive reference and the torch backend."""
from __future__ import annotations

import math

import pytest
import torch

from deep3dface.camera import Camera
from deep3dface.render import rasterize
from deep3dface.render.reference import rasterize_reference


@pytest.fixture(scope="module")
def face():
    """Screen positions (3, N, 3) float32 of the default mean face turned by 0, 35 and -70 degrees of
    yaw (the last with much self-occlusion), triangles (F, 3)."""
    from deep3dface.morphable.formats import load_model

    try:
        model = load_model("default")
    except Exception as error:  # the embedded model is an optional download
        pytest.skip(f"the default model is not installed: {error}")
    vertices = model(model.zero_coefficients(1)).vertices[0].detach()
    turned = []
    for yaw in (0.0, 35.0, -70.0):
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        turned.append(vertices @ rotation.T)
    return Camera.crop(size=224).screen(torch.stack(turned)), model.triangles


@pytest.mark.parametrize("cull", [False, True])
def test_numba_splits_equal_the_reference_on_a_face(face, cull):
    from deep3dface.render._numba import rasterize_shaded

    screen, triangles = face
    ids = rasterize_reference(screen[2:], triangles, 224, 224, cull=cull)[0]
    assert (ids >= 0).sum() > 10_000
    vectorised = rasterize(screen, triangles, (224, 224), cull_backfaces=cull, backend="torch")
    assert torch.equal(vectorised.triangle_id[2:], ids)
    for split in [(1, 1), (2, 2), (3, 7), (8, 1)]:
        fast = rasterize_shaded(screen, triangles, 224, 224, 1e-3, cull, split)
        assert torch.equal(fast[0], vectorised.triangle_id), split
        assert torch.equal(fast[1], vectorised.barycentrics) and torch.equal(fast[2], vectorised.depth), split
