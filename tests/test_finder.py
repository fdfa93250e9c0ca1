"""The second detector: BlazeFace's decoding, and FaceFinder on photos MTCNN misses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deep3dface.detect.blazeface import MODELS, decode, ssd_anchors, weighted_merge
from deep3dface.detect.finder import FaceFinder, FinderConfig, mtcnn_like_box, provisional_detection
from deep3dface.detect.blazeface import BlazeDetection
from deep3dface.detect.landmarks import five_points

# clear faces MTCNN misses on the AFLW2000-3D dev photos (|yaw| 68, 83, 74 deg)
MISSED = ("image00036", "image00722", "image00731")


def _size(gt: np.ndarray) -> float:
    return float(np.sqrt(np.prod(gt.max(0) - gt.min(0))))


@pytest.fixture(scope="module")
def blazeface(litert):
    from deep3dface.detect.blazeface import BlazeFace

    return BlazeFace("short")


@pytest.fixture(scope="module")
def recon(litert):
    from deep3dface.pipeline import Reconstructor

    return Reconstructor()


@pytest.fixture(scope="module")
def aflw(faces):
    from deep3dface.io import read_image

    manifest = {i["id"]: i for i in json.loads((faces / "manifest.json").read_text())["images"]}

    def load(name):
        item = manifest[f"aflw2000_3d/{name}"]
        return read_image(faces / item["path"]), np.asarray(item["faces"][0]["landmarks68"]) + 0.5

    return load


class NoFaces:
    """An MTCNN stand-in that finds nothing (what MTCNN does on the MISSED photos)."""

    class config:
        max_faces = None

    def detect(self, image):
        return []


def test_anchor_layout_matches_the_networks_outputs():
    for name, count in (("short", 896), ("full", 2304)):
        spec = MODELS[name]
        assert len(ssd_anchors(spec.size, spec.strides, spec.anchors_per_cell)) == count
    anchors = ssd_anchors(128, (8, 16, 16, 16), 2)
    # stride 8: 16 x 16 cells, two anchors each, row by row
    assert torch.equal(anchors[0], anchors[1]) and torch.allclose(anchors[0], torch.tensor([1 / 32, 1 / 32], dtype=torch.float64))
    assert torch.allclose(anchors[2], torch.tensor([3 / 32, 1 / 32], dtype=torch.float64))
    assert torch.allclose(anchors[32], torch.tensor([1 / 32, 3 / 32], dtype=torch.float64))
    # stride 16 (three layers share the 8 x 8 cells: six anchors per cell)
    assert torch.allclose(anchors[512:518], torch.tensor([1 / 16, 1 / 16], dtype=torch.float64).expand(6, 2))
    assert torch.allclose(anchors[518], torch.tensor([3 / 16, 1 / 16], dtype=torch.float64))


def test_decode_offsets_are_input_pixels_around_the_anchor():
    anchors = torch.tensor([[0.25, 0.5], [0.75, 0.75]], dtype=torch.float64)
    raw = torch.zeros(2, 16)
    raw[0, :4] = torch.tensor([12.8, -6.4, 32.0, 64.0])          # size 128: 0.1, -0.05, 0.25, 0.5
    raw[0, 4:6] = torch.tensor([-12.8, 12.8])
    boxes, keypoints, scores = decode(raw, torch.tensor([0.0, 2.0]), anchors, 128)
    assert torch.allclose(boxes[0], torch.tensor([0.35 - 0.125, 0.45 - 0.25, 0.35 + 0.125, 0.45 + 0.25], dtype=torch.float64))
    assert torch.allclose(keypoints[0, 0], torch.tensor([0.15, 0.6], dtype=torch.float64))
    assert torch.allclose(keypoints[1], anchors[1].expand(6, 2)) and torch.equal(boxes[1], anchors[1].repeat(2))
    assert torch.allclose(scores, torch.sigmoid(torch.tensor([0.0, 2.0], dtype=torch.float64)))


def test_weighted_merge_averages_each_cluster_by_score():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [5.0, 5.0, 6.0, 6.0]], dtype=torch.float64)
    keypoints = torch.arange(36, dtype=torch.float64).reshape(3, 6, 2)
    merged = weighted_merge(boxes, keypoints, torch.tensor([0.6, 0.9, 0.7], dtype=torch.float64))
    assert [round(score, 6) for score, _, _ in merged] == [0.9, 0.7]
    assert torch.allclose(merged[0][1], (0.6 * boxes[0] + 0.9 * boxes[1]) / 1.5)
    assert torch.allclose(merged[0][2], (0.6 * keypoints[0] + 0.9 * keypoints[1]) / 1.5)
    assert torch.allclose(merged[1][1], boxes[2]) and torch.allclose(merged[1][2], keypoints[2])
    assert weighted_merge(boxes[:0], keypoints[:0], torch.zeros(0, dtype=torch.float64)) == []


def test_mtcnn_like_box_and_provisional_points():
    box = mtcnn_like_box(torch.tensor([100.0, 200.0, 300.0, 400.0]))
    # width 0.92 and height 1.23 of BlazeFace's 200, centre 20 px higher than (200, 300)
    assert torch.allclose(box, torch.tensor([108.0, 157.0, 292.0, 403.0]))
    keypoints = torch.tensor([[10.0, 20.0], [30.0, 21.0], [20.0, 30.0], [20.0, 40.0], [0.0, 25.0], [40.0, 25.0]])
    detection = provisional_detection(BlazeDetection(torch.tensor([0.0, 0.0, 40.0, 50.0]), 0.8, keypoints))
    assert detection.detector == "blazeface" and detection.score == 0.8
    assert torch.equal(detection.landmarks5[:3], keypoints[:3]) and torch.equal(detection.landmarks5[3:], keypoints[[3, 3]])


def test_blazeface_finds_the_faces_mtcnn_misses(blazeface, aflw):
    for name in MISSED:
        image, gt = aflw(name)
        found = blazeface(image)
        assert found and found[0].score >= 0.5, name
        centre = found[0].box.view(2, 2).mean(0).numpy()
        assert np.linalg.norm(centre - gt.mean(0)) < 0.25 * _size(gt), name


def test_blazeface_keypoints_on_a_frontal_face(blazeface, aflw):
    image, gt = aflw("image00002")
    (face,) = blazeface(image)
    right_eye, left_eye = face.keypoints[:2].numpy()       # the subject's: image left, image right
    assert np.linalg.norm(right_eye - gt[36:42].mean(0)) < 0.06 * _size(gt)
    assert np.linalg.norm(left_eye - gt[42:48].mean(0)) < 0.06 * _size(gt)
    # nose tip and mouth centre are coarser (7 % on this face, tilted 20 deg), but in their order
    assert np.linalg.norm(face.keypoints[2].numpy() - gt[30]) < 0.1 * _size(gt)
    assert np.linalg.norm(face.keypoints[3].numpy() - gt[[62, 66]].mean(0)) < 0.1 * _size(gt)
    assert right_eye[1] < face.keypoints[2, 1] < face.keypoints[3, 1]


def test_blazeface_finds_nothing_without_a_face(blazeface):
    skimage = pytest.importorskip("skimage.data")
    for name in ("coffee", "rocket"):
        image = torch.from_numpy(getattr(skimage, name)().copy()).permute(2, 0, 1).float() / 255
        assert blazeface(image) == [], name


def test_finder_confirms_blazeface_faces_with_the_landmarker(blazeface, mediapipe, aflw):
    finder = FaceFinder(NoFaces(), mediapipe, blazeface)
    for name in MISSED:
        image, gt = aflw(name)
        (face,) = finder.detect(image)
        assert face.detector == "blazeface" and face.score >= 0.5
        # 5 points from the landmarker's 68: near the annotation's on these profiles
        error = np.linalg.norm(face.landmarks5.numpy() - five_points(torch.as_tensor(gt)).numpy(), axis=1)
        assert error.mean() < 0.08 * _size(gt), (name, error)
    assert FaceFinder(NoFaces(), mediapipe, blazeface, FinderConfig(second_detector=False)).detect(image) == []


def test_finder_rejects_what_the_landmarker_does_not_confirm(blazeface, mediapipe):
    skimage = pytest.importorskip("skimage.data")
    cat = torch.from_numpy(skimage.chelsea().copy()).permute(2, 0, 1).float() / 255
    assert blazeface(cat), "BlazeFace takes the cat's face for a face: the landmarker must say no"
    assert FaceFinder(NoFaces(), mediapipe, blazeface).detect(cat) == []


def test_finder_keeps_mtcnns_faces_without_running_blazeface(mediapipe, aflw):
    from deep3dface.detect import MTCNN

    class Unused:
        def __call__(self, image):
            raise AssertionError("the second detector ran on a photo where MTCNN found a face")

    mtcnn = MTCNN.pretrained()
    image, _ = aflw("image00002")
    faces = FaceFinder(mtcnn, mediapipe, Unused()).detect(image)
    expected = mtcnn.detect(image)
    assert len(faces) == len(expected) == 1 and torch.equal(faces[0].box, expected[0].box)
    assert faces[0].detector == "mtcnn"


def test_reconstructor_fits_a_face_only_the_second_detector_finds(recon, aflw):
    from deep3dface.outputs import face_record
    from deep3dface.pipeline import Reconstructor, ReconstructorConfig

    image, gt = aflw("image00036")
    (face,) = recon.reconstruct(image)
    assert face.detection.detector == "blazeface"
    assert any("second detector" in flag for flag in face.flags)
    nme = np.linalg.norm(face.landmarks68.double().numpy() - gt, axis=1).mean() / _size(gt)
    assert nme < 0.08, nme
    assert face_record(face, {}, None)["detector"] == "blazeface"
    alone = Reconstructor(config=ReconstructorConfig(finder=FinderConfig(second_detector=False)))
    assert alone.reconstruct(image) == []


def test_second_look_finds_a_face_the_landmarker_lost_at_mtcnns_box(blazeface, mediapipe, aflw_face):
    """image00204: a face lying on its side; MTCNN's eye points send the landmarker the wrong way
    (it loses the face), BlazeFace's eye line does not."""
    from deep3dface.detect import MTCNN
    from deep3dface.detect.landmarks import landmarks_of

    image, gt, detection = aflw_face("image00204", MTCNN.pretrained())
    first = landmarks_of(mediapipe, image, detection)
    assert first.score < 0.05
    finder = FaceFinder(NoFaces(), mediapipe, blazeface)
    look = finder.second_look(image, [detection], [first], 0.05)
    (after,), (marks,) = look.detections, look.marks
    assert look.found_again == [True] and look.proposals[0] is not None and marks.score > 0.9
    nme = np.linalg.norm(marks.ibug68.double().numpy() - gt, axis=1).mean() / _size(gt)
    assert nme < 0.06, nme
    assert torch.equal(after.box, detection.box) and after.detector == "mtcnn"
    assert torch.allclose(after.landmarks5, five_points(marks.ibug68.double()).float())
    off = FaceFinder(NoFaces(), mediapipe, blazeface, FinderConfig(second_look=False))
    assert off.second_look(image, [detection], [first], 0.05).found_again == [False]


def test_second_look_leaves_found_faces_alone(mediapipe, aflw_face):
    from deep3dface.detect import MTCNN
    from deep3dface.detect.landmarks import landmarks_of

    class Unused:
        def __call__(self, image):
            raise AssertionError("BlazeFace ran although no face was lost")

    image, _, detection = aflw_face("image00002", MTCNN.pretrained())
    marks = landmarks_of(mediapipe, image, detection)
    look = FaceFinder(NoFaces(), mediapipe, Unused()).second_look(image, [detection], [marks], 0.05)
    assert look.detections[0] is detection and look.marks[0] is marks
    assert look.found_again == [False] and look.proposals == [None]


@pytest.mark.parametrize("name, flag", [
    ("image00204", "second detector's"),        # found again at BlazeFace's box; on MTCNN's 5 points 42 %
    ("image00010", "BlazeFace's 4, averaged"),  # lost at both boxes; on MTCNN's 5 points 12.2 %, both 4.1 %
])
def test_reconstructor_recovers_faces_the_landmarker_lost(recon, aflw_face, name, flag):
    image, gt, detection = aflw_face(name, recon.detector)
    (face,) = recon.reconstruct_detections(image, [detection])
    assert any(flag in f for f in face.flags), face.flags
    nme = np.linalg.norm(face.landmarks68.double().numpy() - gt, axis=1).mean() / _size(gt)
    assert nme < 0.08, nme


def test_detector_targets_average_the_two_detectors():
    from deep3dface.fit.fitter import detector_targets, five_point_targets

    five = torch.tensor([[10.0, 20.0], [30.0, 20.0], [20.0, 30.0], [12.0, 40.0], [28.0, 40.0]])
    blaze = torch.tensor([[12.0, 22.0], [32.0, 22.0], [22.0, 34.0], [20.0, 44.0]])
    assert all(torch.equal(a, b) for a, b in zip(detector_targets(five), five_point_targets(five)))
    targets, weights = detector_targets(five, blaze)
    assert torch.equal(torch.nonzero(weights)[:, 0], torch.tensor([30, 36, 39, 42, 45, 48, 54, 62, 66]))
    assert torch.allclose(targets[36], torch.tensor([11.0, 21.0])) and torch.allclose(targets[45], torch.tensor([31.0, 21.0]))
    assert torch.allclose(targets[30], torch.tensor([21.0, 32.0]))
    assert torch.equal(targets[48], five[3]) and torch.equal(targets[62], blaze[3]) and torch.equal(targets[66], blaze[3])


def test_finder_without_the_packaged_network_warns_and_uses_mtcnn_alone(monkeypatch):
    import deep3dface.detect.blazeface as blazeface_module
    from deep3dface.assets import AssetMissingError

    def missing(*args, **kwargs):
        raise AssetMissingError("face_detection_short_range.tflite is missing")

    monkeypatch.setattr(blazeface_module, "BlazeFace", missing)
    with pytest.warns(UserWarning, match="second face detector unavailable"):
        finder = FaceFinder.create(NoFaces(), landmarker=object())
    assert finder.blazeface is None and finder.detect(torch.zeros(3, 64, 64)) == []
    assert FaceFinder.create(NoFaces(), object(), FinderConfig(second_detector=False)).blazeface is None
