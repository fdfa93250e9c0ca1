"""Alignment: conformance with the reference's align_img on 25 photos, and the Alignment's geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deep3dface.align import LM3D_STD, Alignment, align, align_batch, alignment_for, pos
from deep3dface.camera import Camera, apply_homography


@pytest.fixture(scope="module")
def vectors(conformance):
    data = np.load(conformance / "align_vectors.npz")
    return {key: data[key] for key in data.files}


def _photo(conformance, name):
    folder = conformance / "examples"
    return next(p for p in folder.iterdir() if p.stem == name and p.suffix in (".jpg", ".png"))


def _corner_landmarks(vectors, i):
    """The reference's input landmarks (centre origin, y up, float32) in our corner y-down pixels."""
    W, H = vectors["image_size"][i]
    lm = vectors["lm5_input"][i].astype(np.float64)
    return np.stack([lm[:, 0] + 0.5, H - 0.5 - lm[:, 1]], axis=1)


def _crop_ref_to_corner(points):
    """Reference crop landmarks (centre origin, y up: row = 223 - y) -> corner y-down pixels."""
    return np.stack([points[:, 0] + 0.5, 224 - 1 - points[:, 1] + 0.5], axis=1)


def test_template_is_the_references(vectors):
    assert LM3D_STD.dtype == np.float32 and np.array_equal(LM3D_STD, vectors["lm3d_std"])


def test_conformance_on_all_examples(conformance, vectors):
    assert len(vectors["names"]) == 25
    for i, name in enumerate(vectors["names"]):
        lm = _corner_landmarks(vectors, i)
        crop, alignment, lm_crop = align(_photo(conformance, name), lm)
        np.testing.assert_allclose(alignment.trans_params.numpy(), vectors["trans_params"][i], rtol=1e-9)
        t, pos_scale = pos(vectors["lm5_input"][i])
        np.testing.assert_allclose(t, vectors["pos_t"][i], rtol=1e-9)
        assert pos_scale == pytest.approx(vectors["pos_s"][i], rel=1e-9)
        assert alignment.resized_size == tuple(vectors["resize_wh"][i])
        assert alignment.crop_box == tuple(vectors["crop_box"][i])
        assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
        assert np.array_equal(crop, vectors["crop"][i]), name
        assert np.array_equal(crop, np.asarray(Image.open(conformance / "align_crops" / f"{name}.png"))), name
        # the reference's landmark formula, as a matrix in our pixels, gives lm5_aligned
        ref = apply_homography(alignment.reference_matrix, torch.from_numpy(lm)).numpy()
        np.testing.assert_allclose(ref, _crop_ref_to_corner(vectors["lm5_aligned"][i]), rtol=0, atol=1e-6)
        # the pixels' map (w/W, truncated crop box) differs from that formula by at most ~1.7 px
        assert np.abs(lm_crop - ref).max() < 2.0


def test_truncated_crop_boxes_put_the_photo_edges_where_the_matrix_says(conformance, vectors):
    """015309: box (-22, 27, 202, 251) in a 201 x 302 resize -> 22 black columns left, 1 right;
    vd025: up = -5 -> 5 black rows on top (int32 truncation, not floor)."""
    names = list(vectors["names"])
    for name, check in (("015309", "columns"), ("vd025", "rows")):
        i = names.index(name)
        crop, alignment, _ = align(_photo(conformance, name), _corner_landmarks(vectors, i))
        W, H = alignment.image_size
        (x0, y0), (x1, y1) = alignment.to_crop(np.array([[0.0, 0.0], [W, H]]))
        dark = crop.max(axis=2) == 0
        if check == "columns":
            assert (x0, x1) == pytest.approx((22, 223)), (x0, x1)
            assert dark[:, :22].all() and not dark[:, 22].all() and dark[:, 223].all()
        else:
            assert y0 == pytest.approx(5)
            assert dark[:5].all() and not dark[5].all()


def _blob_photo(width, height, centre, sigma):
    y, x = np.mgrid[0:height, 0:width] + 0.5
    g = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(250 * g).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image):
    g = image[..., 0].astype(np.float64)
    y, x = np.mgrid[0:g.shape[0], 0:g.shape[1]] + 0.5
    return np.array([(g * x).sum(), (g * y).sum()]) / g.sum()


@pytest.mark.parametrize("face_px, seed", [(40, 0), (90, 1), (190, 2)])
def test_matrix_follows_the_crop_pixels(face_px, seed):
    """A smooth blob's centroid lands where ``to_crop`` sends it, to 0.05 px, at any scale."""
    rng = np.random.default_rng(seed)
    width, height = 520, 430
    cx, cy = 260 + rng.uniform(-20, 20), 215 + rng.uniform(-20, 20)
    e = face_px / 2
    lm = np.array([[cx - e, cy - e / 2], [cx + e, cy - e / 2], [cx, cy + e / 4],
                   [cx - 0.8 * e, cy + e], [cx + 0.8 * e, cy + e]])
    centre = np.array([cx + rng.uniform(-15, 15), cy + rng.uniform(-15, 15)])
    crop, alignment, _ = align(_blob_photo(width, height, centre, sigma=max(4.0, 0.1 * face_px)), lm)
    assert np.abs(alignment.to_crop(centre) - _centroid(crop)).max() < 0.05


def test_round_trips_and_types():
    lm = np.array([[200.0, 210.0], [260.0, 208.0], [231.0, 245.0], [208.0, 275.0], [255.0, 274.0]])
    alignment = alignment_for(lm, (480, 400))
    assert isinstance(alignment, Alignment) and alignment.crop_size == 224
    assert alignment.matrix.dtype == torch.float64 and alignment.matrix.shape == (3, 3)
    assert torch.allclose(alignment.matrix @ alignment.inverse, torch.eye(3, dtype=torch.float64))
    points = np.random.default_rng(0).uniform(-50, 500, (7, 2))
    assert np.abs(alignment.to_photo(alignment.to_crop(points)) - points).max() < 1e-9
    as_tensor = alignment.to_crop(torch.from_numpy(points).float())
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    assert isinstance(alignment.to_crop(points), np.ndarray)
    # the aligned landmarks sit around the template's place in the crop
    assert np.abs(alignment.to_crop(lm).mean(0) - 112).max() < 20
    with pytest.raises(ValueError):
        alignment_for(lm[:4], (480, 400))
    with pytest.raises(ValueError):
        alignment_for(np.full((5, 2), np.nan), (480, 400))


def test_tensor_input_and_batch(conformance, vectors):
    from deep3dface.io import read_image

    images, landmarks = [], []
    for i in (0, 17):
        images.append(read_image(_photo(conformance, vectors["names"][i])))
        landmarks.append(_corner_landmarks(vectors, i))
    crops, alignments, points = align_batch(images, landmarks)
    assert crops.shape == (2, 3, 224, 224) and crops.dtype == torch.float32 and points.shape == (2, 5, 2)
    assert torch.equal((crops[1] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(vectors["crop"][17]))
    assert torch.allclose(points[0], torch.from_numpy(alignments[0].to_crop(landmarks[0])))


def test_photo_camera_through_the_alignment():
    """Projecting with K_photo = A^-1 K_crop equals projecting in the crop and mapping back."""
    lm = np.array([[300.0, 310.0], [380.0, 305.0], [342.0, 355.0], [310.0, 395.0], [372.0, 392.0]])
    alignment = alignment_for(lm, (640, 720))
    crop_camera = Camera.crop(dtype=torch.float64)
    photo_camera = crop_camera.for_photo(alignment.matrix, 640, 720)
    vertices = torch.tensor([[[0.1, 0.2, 0.3], [-0.4, 0.1, -0.2], [0.0, -0.5, 0.5]]], dtype=torch.float64)
    expected = alignment.to_photo(crop_camera.project(vertices)[0])
    assert torch.allclose(photo_camera.project(vertices)[0], expected, atol=1e-9)


def test_huge_resizes_only_resample_the_crop(conformance, vectors, monkeypatch):
    """Above MAX_RESIZED_PIXELS only the crop's region is resampled: a few grey levels off."""
    import deep3dface.align as align_module

    for i in (0, 13, 18):  # a downscale, the left-padded 015309 and the top-padded vd025
        lm = _corner_landmarks(vectors, i)
        monkeypatch.setattr(align_module, "MAX_RESIZED_PIXELS", 0)
        crop, _, _ = align(_photo(conformance, vectors["names"][i]), lm)
        difference = np.abs(crop.astype(int) - vectors["crop"][i])
        assert difference.max() <= 6 and (difference > 0).mean() < 0.5
