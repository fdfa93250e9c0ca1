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


def test_a_larger_render_is_the_crop_scaled_up(saved):
    """At size S the face sits where the 224 crop puts it, times S/224: the crop camera's
    off-centre principal point (112.5, 111.5) scales too (it was kept at +-0.5 px of the centre,
    1.5 px off at 896)."""
    _, _, face = saved
    def centroid(size):
        _, mask = render_face(face.model, face.coefficients, face.albedo, size)
        rows, cols = np.nonzero(mask[0].numpy() > 0)
        return np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # pixel centres, corner-origin pixels

    np.testing.assert_allclose(centroid(896), 4 * centroid(224), atol=0.3)


def test_geometry_colour_is_a_grey_render_of_the_same_face(saved):
    root, _, face = saved
    grey, grey_mask = run(root, "geometry.png", "--colour", "geometry")
    _, mask = run(root, "shaded.png")
    np.testing.assert_array_equal(grey_mask, mask)
    assert np.abs(grey[mask] - grey[mask].mean(1, keepdims=True)).max() < 1.5 / 255  # R = G = B
    assert grey[mask].std() > 0.05  # shaded by the normals, not flat


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
    # refused before the model is loaded and the face rendered: a bogus --model is never opened
    assert main(["render", str(root / "face.mat"), "-o", out, "--size", "32", "--model", str(tmp_path / "nothing")]) == 1
    assert "x.png exists; pass overwrite=True" in capsys.readouterr().err
    assert main(["render", str(root / "face.mat"), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "the render is an RGBA PNG; give the output a .png name" in capsys.readouterr().err
    (tmp_path / "light.txt").write_text("bright and warm")
    assert main(["render", str(root / "face.mat"), "-o", out, "--light", str(tmp_path / "light.txt")]) == 2
    assert "light.txt: a light file holds 27 numbers" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["render", str(root / "face.mat"), "-o", str(tmp_path / "folder"), "--overwrite"]) == 2
    assert "folder is a folder: give the output a file name" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["render", str(root / "face.mat"), "-o", str(tmp_path / "afile" / "x.png")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "afile" in error and "Traceback" not in error


def refused(capsys, code: int, argv: list[str], folder) -> str:
    """Run ``deep3dface`` expecting exit ``code`` and a one-line error, with ``folder`` left as it was."""
    before = sorted(folder.rglob("*"))
    assert main(argv) == code
    error = capsys.readouterr().err
    assert error.startswith("deep3dface: error: ") and error.count("\n") == 1, error
    assert sorted(folder.rglob("*")) == before          # no render, no half-written temporary file
    return error



def test_a_face_file_is_read_by_the_name_given(saved, tmp_path, capsys):
    """scipy's loadmat reads NAME.mat when NAME is missing, so a mistyped face or --expression
    drew another file without a word; now a missing name is an error naming it, and a .mat
    under another name still reads."""
    import shutil

    root, _, face = saved
    shutil.copy(root / "face.mat", tmp_path / "face.mat")
    shutil.copy(root / "face.mat", tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="face: no such file"):
        load_face(tmp_path / "face")
    again = load_face(tmp_path / "saved")
    assert torch.equal(again.coefficients.to_vector(), load_face(root / "face.mat").coefficients.to_vector())
    np.testing.assert_allclose(again.albedo.numpy(), face.albedo.numpy(), atol=1e-6)
    out = str(tmp_path / "b.png")
    error = refused(capsys, 2, ["render", str(tmp_path / "face"), "-o", out], tmp_path)
    assert error == f"deep3dface: error: {tmp_path / 'face'}: no such file\n"
    error = refused(capsys, 2, ["render", str(tmp_path / "saved"), "-o", out, "--expression", str(tmp_path / "face")],
                    tmp_path)
    assert error == f"deep3dface: error: --expression {tmp_path / 'face'}: no such file\n"

@pytest.mark.parametrize("option", ["--light", "--expression"])
def test_a_missing_option_file_reads_alike_whatever_its_suffix(saved, tmp_path, capsys, option):
    """A missing --light file was taken for an unknown preset, and read_option said 'no such file'
    for a .mat but 'cannot read it (No such file or directory)' for a text file: now the option
    and the file, once, and the same reason for both."""
    root, _, _ = saved
    for name in ("missing.mat", "missing.txt", "sub/missing"):
        missing = tmp_path / name
        error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(tmp_path / "b.png"), option,
                                    str(missing)], tmp_path)
        assert error == f"deep3dface: error: {option} {missing}: no such file\n"


def test_read_option_names_the_option_and_file_once_for_any_read_error(tmp_path):
    """read_option took an OSError without strerror for one of ours naming the file: any other
    (io.UnsupportedOperation...) lost the file name.  And a file gone between the CLI's check and
    the read reads as a missing file whatever its suffix."""
    import io

    from deep3dface.edit import read_gamma, read_option

    def unsupported(path):
        raise io.UnsupportedOperation("read")

    with pytest.raises(ValueError) as caught:
        read_option("--light", unsupported, tmp_path / "light.txt")
    assert str(caught.value) == f"--light {tmp_path / 'light.txt'}: cannot read it (read)"
    for name in ("gone.mat", "gone.txt", "gone.npy"):
        with pytest.raises(ValueError) as caught:
            read_option("--light", read_gamma, tmp_path / name)
        assert str(caught.value) == f"--light {tmp_path / name}: no such file"


@pytest.mark.parametrize("pose", ["nan,0,0", "0,inf,0", "0,0,-1e400"])
def test_non_finite_pose_is_refused(saved, tmp_path, capsys, pose):
    root, _, _ = saved
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(tmp_path / "b.png"), f"--pose={pose}"],
                    tmp_path)
    assert f"--pose: values must be finite, got '{pose}'" in error


@pytest.mark.parametrize("kind", ["txt", "npy", "npy-overflow", "mat"])
def test_non_finite_light_is_refused(saved, tmp_path, capsys, kind):
    root, _, face = saved
    light = tmp_path / f"light.{kind.split('-')[0]}"
    if kind == "txt":
        light.write_text(" ".join(["nan"] * 27))          # was: garbage colours and a PIL RuntimeWarning
        what = "the light holds values"
    elif kind == "npy":
        np.save(light, np.full(27, np.inf))
        what = "the light holds values"
    elif kind == "npy-overflow":
        np.save(light, np.full(27, 1e300))                # finite float64, infinite as the float32 drawn
        what = "the light holds values"
    else:
        gamma = torch.full((1, 27), float("nan"))
        light.write_bytes(coefficients_to_mat(face.coefficients.replace(gamma=gamma)))
        what = "'gamma' holds values"
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(tmp_path / "b.png"), "--light", str(light)],
                    tmp_path)
    assert f"--light {light}: {what} that are not finite" in error


@pytest.mark.parametrize("kind", ["txt", "npy", "mat"])
def test_a_light_beyond_the_documented_range_is_refused(saved, tmp_path, capsys, kind):
    """A finite but huge light (1e6) drew the face white all over, without a word; now each SH
    coefficient must lie within ±MAX_LIGHT, and the error names the option, file and value."""
    from deep3dface.edit_limits import MAX_LIGHT

    root, _, face = saved
    gamma = np.full(27, 0.1)
    gamma[4] = 1e6
    light = tmp_path / f"light.{kind}"
    if kind == "txt":
        light.write_text(" ".join(str(v) for v in gamma))
    elif kind == "npy":
        np.save(light, gamma)
    else:
        light.write_bytes(coefficients_to_mat(face.coefficients.replace(gamma=torch.tensor(gamma[None]))))
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(tmp_path / "b.png"), "--light", str(light)],
                    tmp_path)
    assert error == (f"deep3dface: error: --light {light}: light coefficients must be within ±{MAX_LIGHT:g} "
                     "(fitted lights stay within ±0.4), got 1e+06 (coefficient 4 of 27)\n")


def test_the_light_range_holds_in_the_api_and_its_edges_are_accepted(saved, tmp_path, capsys):
    from deep3dface.edit_limits import MAX_LIGHT

    root, _, face = saved
    for value in (-2.5 * MAX_LIGHT, 1.01 * MAX_LIGHT, float("nan")):
        gamma = torch.zeros(1, 27)
        gamma[0, 9] = value
        with pytest.raises(ValueError, match=f"light coefficients must be within ±{MAX_LIGHT:g}.*coefficient 9 of 27"):
            edit_coefficients(face.coefficients, gamma=gamma)
    edge = torch.full((1, 27), -MAX_LIGHT)
    assert torch.equal(edit_coefficients(face.coefficients, gamma=edge).gamma, edge)
    bright = torch.zeros(1, 27)
    bright[0, ::9] = MAX_LIGHT                              # the brightest ambient light allowed
    light = tmp_path / "edge.txt"
    light.write_text(" ".join(str(float(v)) for v in bright[0]))
    image, mask = run(root, "edge.png", "--light", str(light))
    np.testing.assert_allclose(image, expected(face, gamma=bright)[0], atol=1 / 255 + 1e-6)
    assert image[mask].mean() > 0.8                          # mostly white, as asked for, but drawn
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    assert f"each within ±{MAX_LIGHT:g}" in " ".join(capsys.readouterr().out.split())


def test_non_finite_expression_and_face_are_refused(saved, tmp_path, capsys):
    root, _, face = saved
    other = tmp_path / "other.mat"
    nan_exp = torch.full_like(face.coefficients.exp, np.nan)
    other.write_bytes(coefficients_to_mat(face.coefficients.replace(exp=nan_exp)))
    out = str(tmp_path / "b.png")
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", out, "--expression", str(other)], tmp_path)
    assert f"--expression {other}: 'exp' holds values that are not finite" in error
    error = refused(capsys, 2, ["render", str(other), "-o", out], tmp_path)       # the face itself
    assert f"{other}: 'exp' holds values that are not finite" in error


def test_size_has_an_upper_bound_checked_first(saved, tmp_path, capsys):
    root, _, _ = saved
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(tmp_path / "b.png"), "--size", "100000"],
                    tmp_path)
    assert "--size must be 16 to 8192 pixels, got 100000" in error
    # before any work: a missing face file is not even looked at
    error = refused(capsys, 2, ["render", str(tmp_path / "missing.mat"), "-o", str(tmp_path / "b.png"),
                                "--size", "8193"], tmp_path)
    assert "--size must be 16 to 8192 pixels, got 8193" in error



def test_size_help_states_the_limits_the_check_enforces(tmp_path, capsys):
    """The help typed out "16 to 8192" beside the constants the check uses; both now read
    deep3dface.edit_limits, which the CLI imports without loading torch."""
    import subprocess
    import sys

    from deep3dface.edit_limits import MAX_SIZE, MIN_SIZE

    with pytest.raises(SystemExit):
        main(["render", "--help"])
    assert f"(square, {MIN_SIZE} to {MAX_SIZE}; default 512)" in " ".join(capsys.readouterr().out.split())
    for size in (MIN_SIZE - 1, MAX_SIZE + 1):
        error = refused(capsys, 2, ["render", str(tmp_path / "missing.mat"), "-o", str(tmp_path / "b.png"),
                                    "--size", str(size)], tmp_path)
        assert f"--size must be {MIN_SIZE} to {MAX_SIZE} pixels, got {size}" in error
    light = "import sys; from deep3dface.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, check=True).stdout == "False\n"

def write_bad_light(tmp_path, kind: str):
    """A light file that is not 27 numbers, and the reason the error must give."""
    from scipy.io import savemat

    if kind == "text.npy":
        (tmp_path / kind).write_text(" ".join(["0.1"] * 27))        # text under a .npy name
        return tmp_path / kind, "not a .npy file (no NumPy header)"
    if kind == "object.npy":
        np.save(tmp_path / kind, np.array([object()] * 27, dtype=object), allow_pickle=True)
        return tmp_path / kind, "not a .npy array of numbers"
    if kind == "string.npy":
        np.save(tmp_path / kind, np.array(["0.1"] * 27))
        return tmp_path / kind, "the light holds text, not real numbers"
    if kind == "string.mat":
        savemat(tmp_path / kind, {"coeff": "hello"})
        return tmp_path / kind, "'coeff' holds text, not real numbers"
    (tmp_path / kind).mkdir()
    return tmp_path / kind, "is a folder, not a light file"


@pytest.mark.parametrize("kind", ["text.npy", "object.npy", "string.npy", "string.mat", "folder"])
def test_bad_light_files_name_the_option_file_and_reason(saved, tmp_path, capsys, kind):
    root, _, _ = saved
    light, reason = write_bad_light(tmp_path, kind)
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(tmp_path / "b.png"), "--light", str(light)],
                    tmp_path)
    assert error.startswith(f"deep3dface: error: --light {light}") and reason in error
    assert "pickle" not in error and "Errno" not in error


def test_bad_face_and_expression_files_name_the_file_and_reason(saved, tmp_path, capsys):
    from scipy.io import savemat

    root, _, _ = saved
    text = tmp_path / "text.mat"
    savemat(text, {"coeff": "hello"})
    out = str(tmp_path / "b.png")
    error = refused(capsys, 2, ["render", str(text), "-o", out], tmp_path)
    assert f"error: {text}: 'coeff' holds text, not real numbers" in error
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", out, "--expression", str(text)], tmp_path)
    assert f"error: --expression {text}: 'coeff' holds text, not real numbers" in error
    (tmp_path / "folder").mkdir()
    error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", out, "--expression", str(tmp_path / "folder")],
                    tmp_path)
    assert f"error: --expression {tmp_path / 'folder'} is a folder, not a .mat file" in error


def test_output_under_a_file_says_the_parent_is_a_file(saved, tmp_path, capsys):
    """A bad -o is a bad argument: exit 2, as for reconstruct (it was 1, the code of a failed write)."""
    root, _, _ = saved
    (tmp_path / "x.json").write_text("{}")
    for output in (tmp_path / "x.json" / "y.png", tmp_path / "x.json" / "deeper" / "y.png"):
        error = refused(capsys, 2, ["render", str(root / "face.mat"), "-o", str(output)], tmp_path)
        assert f"error: -o {output}: {tmp_path / 'x.json'} is a file, not a folder" in error
        assert "Errno" not in error
    assert (tmp_path / "x.json").read_text() == "{}"


def test_the_python_edit_api_checks_what_the_command_checks():
    """From Python, a NaN pose was taken (the render came out empty), a 2-angle pose failed as
    "coefficient group 'angle' must have 3 values", a preset light name as "invalid data type
    'str'", size 64.5 rendered 64 and size 0 failed in the rasteriser, a (1, N, 3) albedo 'had 1
    vertices'; load_model(device='cuda') on a CPU build was torch's AssertionError."""
    import math

    from deep3dface.edit import edit_coefficients, light_gamma, render_face
    from deep3dface.morphable import load_model

    model = load_model("default")
    coefficients = model.zero_coefficients(1)
    for pose in ((0.0, float("nan"), 0.0), (0.0, 30.0)):
        with pytest.raises(ValueError, match="pose_deg must be three finite angles"):
            edit_coefficients(coefficients, pose_deg=pose)
    edited = edit_coefficients(coefficients, pose_deg="0,30,0", gamma="left")
    assert torch.allclose(edited.angle, torch.tensor([[0.0, math.radians(30), 0.0]]))
    assert torch.equal(edited.gamma, light_gamma("left"))
    for size in (64.5, 0, True):
        with pytest.raises(ValueError, match="size must be a whole number of pixels"):
            render_face(model, coefficients, size=size)
    albedo = model.mean_albedo[None]
    image, mask = render_face(model, coefficients, albedo=albedo, size=32)
    assert image.shape == (3, 32, 32) and bool(mask.any())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda: CUDA is not available"):
            load_model("default", device="cuda")
    with pytest.raises(TypeError, match="a face model is a built-in name"):
        load_model(None)
