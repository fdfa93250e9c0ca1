"""Dense MediaPipe-468 -> model correspondence: the packaged file, transfer to other models, and a
fit with the dense points on real held-out photos against the 68-point fit."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deep3dface.detect import dense_correspondence
from deep3dface.detect.correspondence import (load_correspondence, point_weights,
                                              similarity, transfer)
from deep3dface.morphable import load_model


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", dtype=torch.float64)


def test_the_packaged_file_is_valid_and_states_its_provenance(default_model):
    data = load_correspondence()
    assert data["provenance"]["script"] == "scripts/build_dense_correspondence.py"
    assert "held_out_validation" in data["provenance"]
    corr = dense_correspondence(default_model)
    assert corr.vertex_ids.shape == (468,) and corr.vertex_ids.dtype == torch.int64
    assert int(corr.vertex_ids.max()) < default_model.num_vertices
    # the stored positions are those vertices of the mean shape (what transfers rely on)
    assert torch.allclose(default_model.mean_shape[corr.vertex_ids], torch.tensor(data["positions"], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(default_model.mean_shape[default_model.keypoints], torch.tensor(data["keypoint_positions"], dtype=torch.float64),
                          atol=1e-5)
    assert ((corr.weights > 0) & (corr.weights <= 1)).all() and corr.weights.max() == 1
    # the outline is a ring of a few dozen points; the face's inner points are distinct vertices
    assert 20 <= int(corr.contour.sum()) <= 60
    assert len(set(corr.vertex_ids[~corr.contour].tolist())) > 0.9 * int((~corr.contour).sum())
    with pytest.raises(ValueError):
        load_correspondence(json.dumps({**data, "vertex_ids": data["vertex_ids"][:-1]}))


def test_mirror_partners_land_on_mirrored_vertices(default_model):
    """The build pools each point with its partner's mirrored samples: partners are mirror images."""
    from deep3dface.detect.landmarks import mesh_mirror

    corr = dense_correspondence(default_model)
    p = default_model.mean_shape[corr.vertex_ids]
    q = default_model.mean_shape[corr.vertex_ids[mesh_mirror()]] * torch.tensor([-1.0, 1.0, 1.0], dtype=p.dtype)
    assert float((p - q).norm(dim=1).median()) < 0.02  # decimetres: 2 mm


def test_similarity_recovers_a_known_transform():
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(68, 3, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    rotation = q * torch.sign(torch.det(q))
    target = 2.5 * source @ rotation.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    scale, r, t = similarity(source, target)
    assert scale == pytest.approx(2.5) and torch.allclose(r, rotation)
    assert torch.allclose(scale * source @ r.T + t, target)


def test_transfer_to_the_default_model_itself_is_the_identity(default_model):
    """Transferring the default's correspondence to a copy of the default (moved, scaled, in other
    units) returns the same vertices."""
    data = load_correspondence()
    mean = default_model.mean_shape * 1e4 + torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)  # µm, shifted
    ids = transfer(torch.tensor(data["positions"], dtype=torch.float64),
                   torch.tensor(data["keypoint_positions"], dtype=torch.float64), mean, default_model.keypoints)
    assert torch.equal(ids, dense_correspondence(default_model).vertex_ids)


def test_transfer_to_the_tiny_conformance_bfm(conformance, default_model):
    tiny = load_model(conformance / "tiny_bfm" / "BFM_model_front.mat", dtype=torch.float64)
    corr = dense_correspondence(tiny)
    assert corr.vertex_ids.shape == (468,) and int(corr.vertex_ids.max()) < tiny.num_vertices
    assert torch.equal(corr.contour, dense_correspondence(default_model).contour)
    # the transferred vertices sit where the default's are: compare after the keypoint alignment
    data = load_correspondence()
    scale, rotation, shift = similarity(tiny.mean_shape[tiny.keypoints], torch.tensor(data["keypoint_positions"], dtype=torch.float64))
    moved = scale * tiny.mean_shape[corr.vertex_ids] @ rotation.T + shift
    gap = (moved - torch.tensor(data["positions"], dtype=torch.float64)).norm(dim=1)
    spacing = torch.cdist(tiny.mean_shape, tiny.mean_shape).topk(2, largest=False).values[:, 1].median() * scale
    inner = ~corr.contour
    assert float(gap[inner].median()) < 1.5 * float(spacing)  # as near as the coarse mesh allows
    assert len(set(corr.vertex_ids.tolist())) > 100  # a coarse mesh shares vertices, but not all


def test_point_weights_drop_the_contour_beyond_the_yaw_limit(default_model):
    corr = dense_correspondence(default_model)
    w = point_weights(corr, torch.tensor([0.0, 50.0, -50.0]), contour_max_yaw=30)
    assert w.shape == (3, 468) and torch.allclose(w.sum(1), torch.full((3,), 68.0, dtype=torch.float64))
    assert (w[0, corr.contour] > 0).all() and (w[1:, corr.contour] == 0).all()


def test_dense_fit_is_at_least_as_good_as_the_68_point_fit_on_held_out_photos(faces, default_model):
    """Twelve AFLW dev photos of the held-out half (odd manifest positions; the file was built on the
    even ones), |yaw| < 60: fit the model to MediaPipe's points, score its 68 keypoints vs the GT."""
    from deep3dface.align import alignment_for
    from deep3dface.camera import Camera
    from deep3dface.detect import create_landmarker
    from deep3dface.detect.landmarks import box_from_ibug68, roll_from_eyes
    from deep3dface.fit.landmark_fit import fit_landmarks
    from deep3dface.io import read_image

    manifest = json.loads((faces / "manifest.json").read_text())
    aflw = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"]
    items = [i for i in aflw[1::2] if abs(i["yaw_deg"]) < 60][:12]
    landmarker = create_landmarker("mediapipe")
    corr = dense_correspondence(default_model)
    camera = Camera.crop(dtype=torch.float64)
    errors = {"68": [], "dense": []}
    for item in items:
        gt = np.asarray(item["faces"][0]["landmarks68"]) + 0.5
        five = np.stack([gt[36:42].mean(0), gt[42:48].mean(0), gt[30], gt[48], gt[54]])
        result = landmarker(read_image(faces / item["path"]), box_from_ibug68(torch.as_tensor(gt)),
                            roll=roll_from_eyes(five[0], five[1]))
        ib = result.ibug68.double()
        crop = alignment_for(torch.stack([ib[36:42].mean(0), ib[42:48].mean(0), ib[30], ib[48], ib[54]]).numpy(),
                             tuple(item["width_height"]))
        for name, targets, ids, weights in (
                ("68", ib, default_model.keypoints, None),
                ("dense", result.points.double(), corr.vertex_ids, point_weights(corr, torch.zeros(1)))):
            coeffs = fit_landmarks(default_model, crop.to_crop(targets)[None], camera, weights, ids)
            fitted = crop.to_photo(camera.project(default_model(coeffs).landmarks)[0]).numpy()
            box = gt.max(0) - gt.min(0)
            errors[name].append(np.linalg.norm(fitted - gt, axis=1).mean() / np.sqrt(box.prod()))
    mean = {k: 100 * float(np.mean(v)) for k, v in errors.items()}
    print(mean)
    assert mean["dense"] <= mean["68"] + 0.05 and mean["dense"] < 4.0
