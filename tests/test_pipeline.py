"""The Reconstructor on real photos: the staged fit beats the 2D landmarker, and its outputs agree
with each other (photo landmarks, crop camera, photo camera, render)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deep3dface.camera import Camera
from deep3dface.detect.finder import FinderConfig
from deep3dface.fit.fitter import FitConfig, FitTargets, LandmarkStage, fit_faces
from deep3dface.io.images import read_image
from deep3dface.morphable import load_model
from deep3dface.pipeline import Reconstructor


def bbox_nme(pred, gt):
    wh = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(wh[0] * wh[1]))


@pytest.fixture(scope="module")
def recon():
    return Reconstructor()


@pytest.fixture(scope="module")
def aflw(faces):
    """Six AFLW2000-3D photos spread over |yaw| 0–75 degrees, with GT in corner-origin pixels."""
    manifest = json.loads((faces / "manifest.json").read_text())
    items = sorted((i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 75),
                   key=lambda i: abs(i["yaw_deg"]))
    chosen = items[:: len(items) // 6][:6]
    return [(read_image(faces / i["path"]), np.asarray(i["faces"][0]["landmarks68"]) + 0.5, i["yaw_deg"])
            for i in chosen]


@pytest.fixture(scope="module")
def fitted(recon, aflw):
    out = []
    for photo, gt, yaw in aflw:
        found = recon.reconstruct(photo)
        assert found, "no face found on an AFLW photo"
        face = min(found, key=lambda f: np.linalg.norm(f.detection.box.view(2, 2).mean(0).numpy() - gt.mean(0)))
        out.append((photo, gt, yaw, face))
    return out


def test_fit_beats_the_landmarker_on_real_photos(fitted):
    fit = [bbox_nme(f.landmarks68.double().numpy(), gt) for _, gt, _, f in fitted]
    marks = [bbox_nme(f.landmarks.ibug68.double().numpy(), gt) for _, gt, _, f in fitted]
    assert np.mean(fit) < np.mean(marks)
    assert max(fit) < 0.08  # no face fitted far off


def test_photo_landmarks_are_the_crop_projection_mapped_back(fitted):
    from deep3dface.fit.annotation import hidden_weights

    for _, _, _, face in fitted:
        in_crop = Camera.crop().project(face.landmarks68_model.float()[None])[0]
        back = face.alignment.to_photo(in_crop.double())
        np.testing.assert_allclose(face.landmarks68.double().numpy(), back.numpy(), atol=2e-3)
        # they are the model's keypoints wherever the point is not hidden (fit.annotation)
        shown = hidden_weights(face.model, face.coefficients)[0] == 0
        keypoints = face.geometry().landmarks[0]
        assert int(shown.sum()) >= 40
        torch.testing.assert_close(face.landmarks68_model[shown], keypoints[shown].to(face.landmarks68_model))


def test_render_lies_on_the_face(fitted):
    for photo, gt, _, face in fitted:
        image, mask = face.render()
        assert image.shape == photo.shape and mask.shape == (1, *photo.shape[1:])
        # nose and eyes lie inside the rendered face; brow ends and inner lips sit on the mesh's
        # border (the face crop's edge, the mouth hole), so they are not part of this check
        inner = gt[27:48]
        cols = np.clip(inner[:, 0].astype(int), 0, photo.shape[2] - 1)
        rows = np.clip(inner[:, 1].astype(int), 0, photo.shape[1] - 1)
        assert bool(mask[0, rows, cols].all())


def test_mesh_and_render_share_one_colour_vocabulary_and_overlay_takes_a_path(fitted, faces, tmp_path):
    photo, _, _, face = fitted[0]
    geometry = face.geometry()
    for colour in ("shaded", "albedo", "geometry"):
        image, mask = face.render(colour, geometry=geometry)
        colours = face.mesh(colour=colour, geometry=geometry).colours
        # the clay is grey (equal channels); the photo's colours are not
        assert np.allclose(colours[:, 0], colours[:, 2]) == (colour == "geometry")
        inside = mask[0] > 0
        assert bool((image[0][inside] == image[2][inside]).all()) == (colour == "geometry")
    for wrong in (lambda: face.mesh(colour="clay"), lambda: face.render("clay")):
        with pytest.raises(ValueError, match="colour must be one of shaded, albedo, geometry"):
            wrong()
    from PIL import Image
    path = tmp_path / "photo.png"
    Image.fromarray((photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    assert (face.overlay(path) - face.overlay(photo)).abs().max() < 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="this face was fitted to a"):
        face.overlay(photo[:, :100])


def test_bad_devices_and_face_counts_are_clear_errors():
    from deep3dface.pipeline import ReconstructorConfig

    with pytest.raises(ValueError, match="max_faces must be None"):
        ReconstructorConfig(max_faces=0)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        Reconstructor(device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Reconstructor(device="cuda")


def test_pose_follows_the_head(fitted):
    """Yaw of the fit has AFLW's magnitude (its sign convention is the opposite of ours)."""
    yaws = np.array([y for _, _, y, _ in fitted])
    ours = np.array([f.angles_deg[1] for *_, f in fitted])
    assert np.corrcoef(np.abs(yaws), np.abs(ours))[0, 1] > 0.9
    assert np.median(np.abs(np.abs(ours) - np.abs(yaws))) < 10


def test_mesh_outputs(fitted):
    face = fitted[0][3]
    canonical, posed = face.mesh(), face.mesh(posed=True)
    assert canonical.vertices.shape == posed.vertices.shape == (face.model.num_vertices, 3)
    assert np.isfinite(canonical.vertices).all() and (0 <= canonical.colours).all() and (canonical.colours <= 1).all()
    # posed = R·canonical + t
    R = face.geometry().rotation[0].double().numpy()
    t = face.coefficients.trans[0].double().numpy()
    np.testing.assert_allclose(posed.vertices, canonical.vertices @ R.T + t, atol=1e-4)


def test_hidden_jaw_points_are_down_weighted_on_profiles():
    """A synthetic profile: 2D targets for the hidden jaw put on the wrong place do not move the fit."""
    model = load_model("default")
    truth = model.zero_coefficients(1).replace(angle=torch.tensor([[0.0, 1.1, 0.0]]),
                                               trans=torch.tensor([[0.0, 0.0, 0.3]]))
    camera = Camera.crop()
    target = camera.project(model(truth).landmarks)
    corrupted = target.clone()
    corrupted[:, 11:17, 0] -= 25.0  # the far jaw (image right at this yaw) "seen" 25 px off
    crops = torch.zeros(1, 3, 224, 224)
    # exact synthetic points have no landmarker yaw bias to correct (test_yaw_correction_...)
    result = fit_faces(model, FitTargets(crops, corrupted), FitConfig(landmarks=LandmarkStage(yaw_gain=0.0), appearance=None))
    projected = camera.project(model(result.coefficients).landmarks)
    assert (result.landmark_weights[0, 11:17] == 0).all() and (result.landmark_weights[0, :6] == 1).all()
    assert (projected - target).norm(dim=-1)[0, 11:17].mean() < 4.0
    plain = fit_faces(model, FitTargets(crops, corrupted), FitConfig(landmarks=LandmarkStage(rounds=1, yaw_gain=0.0,
                                                                     visible_cosine=-2.0), appearance=None))
    plain_projected = camera.project(model(plain.coefficients).landmarks)
    assert (projected - target).norm(dim=-1).mean() < (plain_projected - target).norm(dim=-1).mean()


def test_a_profile_found_on_the_stretched_photo_is_flagged_and_fitted_to_it(recon, aflw_face):
    """AFLW2000-3D image00170 (|yaw| 78): MediaPipe loses it at the detector's box (score 0.03)
    and finds it on the photo stretched sideways; the fit uses those landmarks and says so."""
    photo, gt, detection = aflw_face("image00170", recon.detector)
    face = recon.reconstruct_detections(photo, [detection])[0]
    assert face.landmarks.stretch > 1 and "stretched" in face.landmarks.backend and face.landmarks.score >= recon.config.min_landmark_score
    assert any("stretched sideways" in flag for flag in face.flags)
    assert not any("5 points" in flag for flag in face.flags)
    assert bbox_nme(face.landmarks68.double().numpy(), gt) < 0.08


def test_a_face_the_landmarker_loses_is_fitted_to_the_detector_points(recon, aflw_face):
    """AFLW2000-3D image00188 (|yaw| 74): MediaPipe's mesh lands beside the face (its face score
    ~0.001); the fit falls back to MTCNN's 5 points, says so, and lands far nearer the truth."""
    from dataclasses import replace

    photo, gt, detection = aflw_face("image00188", recon.detector)
    face = recon.reconstruct_detections(photo, [detection])[0]
    assert face.landmarks.score < recon.config.min_landmark_score
    # BlazeFace finds it too (the second look loses it as well): both detectors' points, averaged
    assert any("MTCNN's 5 points and BlazeFace's 4" in flag for flag in face.flags), face.flags
    trusting = Reconstructor(config=replace(recon.config, min_landmark_score=0.0))
    trusted = trusting.reconstruct_detections(photo, [detection])[0]
    assert not any("5 points" in flag for flag in trusted.flags)
    assert bbox_nme(face.landmarks68.double().numpy(), gt) < 0.5 * bbox_nme(trusted.landmarks68.double().numpy(), gt)
    # MTCNN alone: the five stand-in keypoints sit on its points (without the yaw correction,
    # which turns this face further than its five points say)
    exact = Reconstructor(config=replace(recon.config, finder=FinderConfig(second_detector=False),
                                         fit=FitConfig(landmarks=LandmarkStage(yaw_gain=0.0))))
    face = exact.reconstruct_detections(photo, [detection])[0]
    assert any("the detector's 5 points" in flag for flag in face.flags), face.flags
    five = face.detection.landmarks5.double().numpy()
    kp = face.landmarks68.double().numpy()
    centres = np.stack([kp[[36, 39]].mean(0), kp[[42, 45]].mean(0), kp[30], kp[48], kp[54]])
    iod = np.linalg.norm(five[0] - five[1])
    assert np.linalg.norm(centres - five, axis=1).mean() < 0.25 * iod


def test_no_face_gives_an_empty_list(recon):
    assert recon.reconstruct(torch.full((3, 160, 200), 0.5)) == []


def test_a_tensor_photo_that_is_not_0_to_1_rgb_is_a_clear_error(recon, aflw_face):
    photo, _, _ = aflw_face("image00002", recon.detector)
    with pytest.raises(ValueError, match="divide 0-255 values by 255"):
        recon.reconstruct(photo * 255)
    for wrong in (photo.permute(1, 2, 0), photo[None], (photo * 255).to(torch.uint8)):
        with pytest.raises(ValueError, match=r"expected a float \(3, H, W\) RGB photo"):
            recon.reconstruct(wrong)


def test_photometric_stage_pulls_a_perturbed_face_back():
    """Render a synthetic face, start the photometric stage from a shifted pose: the render-based loss
    (no landmarks at all) moves it back towards the truth, and gradients reach every group."""
    from deep3dface.fit.fitter import PhotometricStage
    from deep3dface.fit.photometric import refine_photometric
    from deep3dface.render.shaded import render_colours

    model = load_model("default")
    camera = Camera.crop()
    gamma = torch.zeros(1, 27)
    gamma[0, [2, 11, 20]] = 0.3  # light from the camera
    truth = model.zero_coefficients(1).replace(angle=torch.tensor([[0.05, 0.3, 0.0]]), gamma=gamma)
    geometry = model(truth)
    # a photo: the shaded face over a mid-grey background, with skin-like albedo
    image, mask = render_colours(geometry.vertices, geometry.colour, model.front_triangles, camera)
    photo = image * mask + 0.3 * (1 - mask)
    start = truth.replace(angle=truth.angle + torch.tensor([[0.0, 0.06, 0.0]]), trans=torch.tensor([[0.08, 0.0, 0.0]]))
    targets = FitTargets(photo, torch.zeros(1, 68, 2))
    stage = PhotometricStage(iterations=25, learning_rate=0.015, landmark=0.0)
    flags = [[]]
    fitted, _ = refine_photometric(model, targets, stage, camera, start, None, torch.zeros(1, 68), flags)
    before = (start.angle - truth.angle).abs().sum() + (start.trans - truth.trans).abs().sum()
    after = (fitted.angle - truth.angle).abs().sum() + (fitted.trans - truth.trans).abs().sum()
    assert after < 0.5 * before
    assert flags == [[]]


def test_keypoint_geometry_equals_the_full_model():
    """The fit's cheap keypoint normals (one-ring only) are the full model's, at random coefficients."""
    from deep3dface.fit.keypoint_residuals import keypoint_geometry

    model = load_model("default", dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    coeffs = model.zero_coefficients(3).replace(
        id=torch.randn(3, model.layout.id, generator=generator, dtype=torch.float64),
        exp=torch.randn(3, model.layout.exp, generator=generator, dtype=torch.float64),
        angle=0.6 * torch.randn(3, 3, generator=generator, dtype=torch.float64),
        trans=0.1 * torch.randn(3, 3, generator=generator, dtype=torch.float64))
    full = model(coeffs)
    points, normals = keypoint_geometry(model, coeffs)
    torch.testing.assert_close(points, full.vertices[:, model.keypoints], atol=1e-12, rtol=0)
    torch.testing.assert_close(normals, full.normals[:, model.keypoints], atol=1e-12, rtol=0)
    # the two visibility rules, against the full model's normals computed the plain way
    from deep3dface.camera import Camera
    from deep3dface.fit.keypoint_residuals import facing_camera, visible_points

    n, p = full.normals[:, model.keypoints], full.vertices[:, model.keypoints]
    towards = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, Camera.crop().distance], dtype=p.dtype) - p, dim=-1)
    assert torch.equal(facing_camera(model, coeffs, 0.1), (n * towards).sum(-1) > 0.1)
    assert torch.equal(facing_camera(model, coeffs, 0.1, perspective=False), n[..., 2] > 0.1)
    expected = torch.ones(3, 68, dtype=torch.float64)
    expected[:, :17] = (n[:, :17, 2] > 0.1).double()
    assert torch.equal(visible_points(model, coeffs, 0.1), expected)
    assert 0 < int((expected[:, :17] == 0).sum()) < 3 * 17  # random poses: some jaw points hidden, not all


def test_yaw_correction_turns_only_faces_beyond_the_knee():
    """``LandmarkStage.yaw_gain``: a face whose landmarks (68 + dense) say |yaw| 50 deg is believed
    to be turned 50 + gain·(50 − knee); one at 15 deg keeps the yaw its landmarks give."""
    from deep3dface.detect.correspondence import dense_correspondence

    model = load_model("default")
    dense = dense_correspondence(model)
    yaws = torch.tensor([50.0, -50.0, 15.0])
    truth = model.zero_coefficients(3).replace(angle=torch.stack([torch.zeros(3), torch.deg2rad(yaws), torch.zeros(3)], 1),
                                               trans=torch.tensor([[0.0, 0.0, 0.3]]).expand(3, -1))
    camera = Camera.crop()
    geometry = model(truth)
    targets = FitTargets(torch.zeros(3, 3, 224, 224), camera.project(geometry.landmarks),
                         dense=camera.project(geometry.vertices[:, dense.vertex_ids]), dense_vertex_ids=dense.vertex_ids,
                         dense_weights=torch.ones(3, len(dense.vertex_ids)), dense_contour=dense.contour)
    def fitted_yaw(stage):
        return torch.rad2deg(fit_faces(model, targets, FitConfig(landmarks=stage, appearance=None)).coefficients.angle[:, 1])

    # the belief is a prior weighed against the points (sum of w·d²): with the dense points at the
    # weight of the 68 it holds the believed 60 deg; at the default 3x weight most of the way
    corrected = fitted_yaw(LandmarkStage(yaw_gain=0.5, yaw_knee=30.0, dense_weight=1.0))
    plain = fitted_yaw(LandmarkStage(yaw_gain=0.0))
    torch.testing.assert_close(plain, yaws, atol=1.0, rtol=0)
    torch.testing.assert_close(corrected[:2], torch.tensor([60.0, -60.0]), atol=1.0, rtol=0)
    default = fitted_yaw(LandmarkStage(yaw_gain=0.5, yaw_knee=30.0))
    assert (default[:2].abs() > 58.0).all() and (default[:2].abs() < 60.5).all()
    # only the turned faces are refitted (faces are independent): the third is untouched. Compared
    # at the same dense weight: the weight-1 fit of the 15 deg face differs in the last float bit
    torch.testing.assert_close(default[2], plain[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(default[2], plain[2], atol=1e-6, rtol=0)


def test_faces_fitted_together_equal_faces_fitted_alone(recon, aflw_face):
    """image00204: three faces found (a batch of 3 once gave every face a wrong photo camera)."""
    photo, _, _ = aflw_face("image00204", recon.detector)
    detections = recon.detector.detect(photo)
    assert len(detections) == 3
    together = recon.reconstruct_detections(photo, detections)
    for detection, face in zip(detections, together):
        (alone,) = recon.reconstruct_detections(photo, [detection])
        assert torch.allclose(face.landmarks68, alone.landmarks68, atol=1e-3)
        assert torch.allclose(face.camera.K, alone.camera.K)


def test_the_render_keeps_the_eyes(recon, aflw_face, monkeypatch):
    """The skin attention leaves out the iris: with the albedo's data gated by it alone the eyes
    rendered pale and featureless.  Inside the eye openings the albedo takes the photo; the shaded
    render there is twice as near the photo (image00014: mean |render - photo| 0.06 against 0.13)."""
    import deep3dface.fit.fitter as fitter
    from deep3dface.fit.vertex_evidence import eye_vertices

    photo, _, detection = aflw_face("image00014", recon.detector)
    eyes = eye_vertices(recon.model.data)
    assert 100 < int(eyes.sum()) < 1000

    def eye_difference() -> float:
        (face,) = recon.reconstruct_detections(photo, [detection])
        pixels = face.camera.screen(face.geometry().vertices)[0, eyes, :2].long()
        x, y = pixels[:, 0].clamp(0, photo.shape[2] - 1), pixels[:, 1].clamp(0, photo.shape[1] - 1)
        return float((face.render("shaded")[0][:, y, x] - photo[:, y, x]).abs().mean())

    with_eyes = eye_difference()
    monkeypatch.setattr(fitter, "albedo_weights", lambda model, visibility, skin: visibility * skin)
    skin_only = eye_difference()
    assert with_eyes < 0.6 * skin_only, (with_eyes, skin_only)


def test_inside_polygon():
    from deep3dface.fit.vertex_evidence import inside_polygon

    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    points = np.array([[1.0, 1.0], [3.0, 1.0], [-0.5, 0.5], [1.9, 0.1], [1.0, 2.5]])
    assert inside_polygon(points, square).tolist() == [True, False, False, True, False]
