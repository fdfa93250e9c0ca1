"""`deep3dface render`: a saved real face drawn again with another pose, light or expression.

One real photo is fitted once for the module (landmark and appearance stages: the edits need a
real shape and albedo, not the photometric refinement) and saved as ``outputs.face_mat`` writes it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deep3dface.align import align
from deep3dface.camera import Camera
from deep3dface.cli import main
from deep3dface.edit import LIGHT_PRESETS, edit_coefficients, light_gamma, load_face, render_face
from deep3dface.export import coefficients_to_mat
from deep3dface.fit.fitter import FitConfig
from deep3dface.io.images import read_image
from deep3dface.morphable.shading import irradiance
from deep3dface.outputs import face_mat
from deep3dface.pipeline import Reconstructor, ReconstructorConfig
from deep3dface.render.shaded import render_colours

SIZE = 256


@pytest.fixture(scope="module")
def saved(faces, tmp_path_factory):
    manifest = json.loads((faces / "manifest.json").read_text())
    entry = next(i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 20)
    photo = read_image(faces / entry["path"])
    recon = Reconstructor(config=ReconstructorConfig(fit=FitConfig(photometric=None)))
    face = recon.reconstruct(photo)[0]
    root = tmp_path_factory.mktemp("edit")
    (root / "face.mat").write_bytes(face_mat(face))
    return root, photo, face


def run(root, name: str, *options: str) -> tuple[np.ndarray, np.ndarray]:
    """Render face.mat through the CLI into ``name``; returns (RGB float (S, S, 3), mask (S, S))."""
    out = root / name
    assert main(["render", str(root / "face.mat"), "-o", str(out), "--size", str(SIZE), "-q", "--overwrite",
                 *options]) == 0
    rgba = np.asarray(Image.open(out), np.float64) / 255
    return rgba[..., :3], rgba[..., 3] > 0


def expected(face, **edits) -> tuple[np.ndarray, np.ndarray]:
    """The library's render of the fitted face with edits (quantised as the PNG is)."""
    image, mask = render_face(face.model, edit_coefficients(face.coefficients, **edits), face.albedo, SIZE)
    return np.rint(image.permute(1, 2, 0).double().numpy() * 255) / 255, mask[0].numpy() > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_unedited_render_is_the_fit_in_its_crop(saved):
    root, photo, face = saved
    image, mask = run(root, "plain.png", "--size", "224")
    g = face.geometry()
    fitted, fitted_mask = render_colours(g.vertices, g.colour, face.model.triangles, Camera.crop())
    np.testing.assert_array_equal(mask, fitted_mask[0, 0].numpy() > 0)      # coefficients round trip
    np.testing.assert_allclose(image[mask], fitted[0].permute(1, 2, 0).numpy()[mask], atol=1 / 255 + 1e-6)
    crop, _, _ = align(photo, face.detection.landmarks5)                    # and it looks like the photo
    assert np.abs(image[mask] - crop.permute(1, 2, 0).numpy()[mask]).mean() < 0.08


def test_pose_turns_the_face(saved):
    root, _, face = saved
    right, right_mask = run(root, "right.png", "--pose", "0,30,0")
    left, left_mask = run(root, "left.png", "--pose", "0,-30,0")
    want, want_mask = expected(face, pose_deg=(0.0, 30.0, 0.0))
    np.testing.assert_array_equal(right_mask, want_mask)
    np.testing.assert_allclose(right, want, atol=1 / 255 + 1e-6)
    # ±30° yaw: different silhouettes, each nearly the mirror image of the other (faces are symmetric)
    assert iou(right_mask, left_mask) < 0.85
    assert iou(right_mask, left_mask[:, ::-1]) > max(0.9, iou(right_mask, left_mask) + 0.05)
    # +yaw turns the face towards image right: the nose tip projects right of the eyes' midpoint
    with torch.no_grad():
        g = face.model(edit_coefficients(face.coefficients, pose_deg=(0.0, 30.0, 0.0)), albedo=face.albedo[None])
    points = Camera.crop(size=SIZE, focal=1015 * SIZE / 224).project(g.landmarks)[0]
    assert points[30, 0] > (points[36, 0] + points[45, 0]) / 2 + 5


def test_light_presets_and_files(saved, tmp_path):
    root, _, face = saved
    halves = {}
    for preset in ("left", "right"):
        image, mask = run(root, f"{preset}.png", "--light", preset, "--colour", "shaded")
        columns = np.nonzero(mask.any(0))[0]
        middle = (columns[0] + columns[-1]) // 2
        grey = image.mean(-1)
        halves[preset] = (grey[:, :middle][mask[:, :middle]].mean(), grey[:, middle:][mask[:, middle:]].mean())
    assert halves["left"][0] > halves["left"][1] + 0.1          # light from image left: left half brighter
    assert halves["right"][1] > halves["right"][0] + 0.1
    # a light borrowed from another file is that file's gamma, exactly
    gamma = torch.linspace(-0.2, 0.3, 27)[None]
    (tmp_path / "light.mat").write_bytes(coefficients_to_mat(face.coefficients.replace(gamma=gamma)))
    image, _ = run(root, "borrowed.png", "--light", str(tmp_path / "light.mat"))
    np.testing.assert_allclose(image, expected(face, gamma=gamma)[0], atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("preset", sorted(LIGHT_PRESETS))
def test_light_preset_irradiance(preset):
    ambient, strength, direction = LIGHT_PRESETS[preset]
    d = torch.nn.functional.normalize(torch.tensor(direction), dim=0)
    side = torch.nn.functional.normalize(torch.linalg.cross(d, torch.tensor([0.3, 0.5, 0.8])), dim=0)
    lit = irradiance(torch.stack([d, side])[None], light_gamma(preset))[0]
    np.testing.assert_allclose(lit[0].numpy(), ambient + strength, atol=1e-5)    # facing the light
    np.testing.assert_allclose(lit[1].numpy(), ambient, atol=1e-5)               # side-on: ambient only


def test_expression_swap(saved, tmp_path):
    root, _, face = saved
    exp = face.coefficients.exp.clone()
    exp[0, 0] = -2.5                                          # opens the mouth (see morphable.formats.embedded)
    other = face.coefficients.replace(exp=exp, angle=torch.zeros(1, 3), gamma=torch.zeros(1, 27))
    (tmp_path / "other.mat").write_bytes(coefficients_to_mat(other))
    swapped, swapped_mask = run(root, "swapped.png", "--expression", str(tmp_path / "other.mat"))
    want, want_mask = expected(face, exp=exp)               # only exp is taken: pose and light stay
    np.testing.assert_array_equal(swapped_mask, want_mask)
    np.testing.assert_allclose(swapped, want, atol=1 / 255 + 1e-6)
    plain, plain_mask = run(root, "plain.png")
    changed = np.abs(swapped - plain).max(-1) > 0.05
    assert changed.sum() > 200 and (changed.nonzero()[0].mean() > SIZE / 2)   # the change is low: the mouth


def test_saved_albedo_round_trips_and_missing_albedo_warns(saved, tmp_path, capsys):
    root, _, face = saved
    np.testing.assert_allclose(load_face(root / "face.mat").albedo.numpy(), face.albedo.numpy(), atol=1e-6)
    (tmp_path / "bare.mat").write_bytes(coefficients_to_mat(face.coefficients))
    assert main(["render", str(tmp_path / "bare.mat"), "-o", str(tmp_path / "bare.png"), "--size", "64"]) == 0
    assert "flat mean albedo" in capsys.readouterr().err


def test_render_errors_are_one_line(saved, conformance, tmp_path, capsys):
    root, _, _ = saved
    out = str(tmp_path / "x.png")
    assert main(["render", str(root / "face.mat"), "-o", out, "--pose", "30"]) == 2
    assert "pitch,yaw,roll" in capsys.readouterr().err
    assert main(["render", str(root / "face.mat"), "-o", out, "--light", "sunset"]) == 2
    assert "unknown light 'sunset'" in capsys.readouterr().err
    assert main(["render", str(root / "face.mat"), "-o", out, "--model", str(conformance / "tiny_bfm")]) == 2
    assert "do not fit model 'BFM_model_front'" in capsys.readouterr().err
    assert main(["render", str(root / "face.mat"), "-o", out, "--size", "32", "-q"]) == 0
    assert main(["render", str(root / "face.mat"), "-o", out, "--size", "32"]) == 1      # no overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["render", str(root / "face.mat"), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "the render is an RGBA PNG; give the output a .png name" in capsys.readouterr().err
    (tmp_path / "light.txt").write_text("bright and warm")
    assert main(["render", str(root / "face.mat"), "-o", out, "--light", str(tmp_path / "light.txt")]) == 2
    assert "light.txt: a light file holds 27 numbers" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["render", str(root / "face.mat"), "-o", str(tmp_path / "folder"), "--overwrite"]) == 2
    assert "folder is a folder: give the output a file name" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["render", str(root / "face.mat"), "-o", str(tmp_path / "afile" / "x.png")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "afile" in error and "Traceback" not in error
