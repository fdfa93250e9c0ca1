"""Skin attention on real photos: high on the face's skin, low on eyes, lips and background."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from deep3dface.fit.skin import rgb_to_ycbcr, skin_probability


def _polygon(points, width, height):
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, bool)


def test_ycbcr_of_grey_has_neutral_chroma():
    grey = torch.full((1, 3, 2, 2), 0.5)
    np.testing.assert_allclose(rgb_to_ycbcr(grey)[0, :, 0, 0].numpy(), [127.5, 128, 128], atol=1e-4)


@pytest.fixture(scope="module")
def frontal_photos(faces):
    manifest = json.loads((faces / "manifest.json").read_text())
    chosen = [r for r in manifest["images"] if r["source"] == "aflw2000_3d" and abs(r["yaw_deg"]) < 30][:12]
    return [(np.asarray(Image.open(faces / r["path"]).convert("RGB")),
             np.asarray(r["faces"][0]["landmarks68"]) + 0.5) for r in chosen]


def test_skin_weight_separates_skin_from_eyes_lips_and_background(frontal_photos):
    stats = []
    for image, lm in frontal_photos:
        h, w = image.shape[:2]
        photo = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        cheeks = _polygon(np.concatenate([lm[[1, 2, 3, 31, 35, 13, 14, 15, 28]]]), w, h)
        weight = skin_probability(photo, torch.as_tensor(cheeks)[None, None])[0, 0].numpy()
        face = _polygon(np.concatenate([lm[0:17], lm[26:16:-1]]), w, h)
        eyes = _polygon(lm[36:42], w, h) | _polygon(lm[42:48], w, h)
        lips = _polygon(lm[48:60], w, h) & ~_polygon(lm[60:68], w, h)
        x0, y0 = lm.min(0)
        x1, y1 = lm.max(0)
        far = np.ones((h, w), bool)
        pad = 0.4 * (x1 - x0)
        far[max(0, int(y0 - pad)):int(y1 + pad), max(0, int(x0 - pad)):int(x1 + pad)] = False
        stats.append([weight[cheeks].mean(), weight[face].mean(), weight[eyes].mean(), weight[lips].mean(),
                      weight[far].mean() if far.any() else np.nan])
    cheeks, face, eyes, lips, background = np.nanmean(np.array(stats), axis=0)
    assert cheeks > 0.9 and face > 0.75
    assert eyes < 0.6 * face and lips < cheeks - 0.1  # lips are redder than skin, and still part of the face
    assert background < 0.6 * face
