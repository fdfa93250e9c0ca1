"""The Python API's checks on what callers pass: photos, sizes, opacities, set names."""
from __future__ import annotations

import shutil

import pytest
import torch

from deep3dface.io.images import read_image

PHOTO = ("aflw2000_3d", "images", "image00002.jpg")


@pytest.fixture(scope="module")
def reconstructor():
    from deep3dface import Reconstructor

    return Reconstructor()


@pytest.fixture(scope="module")
def fitted(reconstructor, faces):
    photo = read_image(faces.joinpath(*PHOTO))
    return photo, reconstructor.reconstruct(photo)[0]


@pytest.mark.parametrize("bad, message", [
    (lambda p: p[:, :100, :100], "the photo is 100x100; this face was fitted to a 450x450 one"),
    (lambda p: (p * 255).byte(), "expected a float (3, H, W) RGB photo in [0, 1], got torch.uint8"),
    (lambda p: p * 255, "divide 0-255 values by 255"),
    (lambda p: p[None], "expected a float (3, H, W) RGB photo in [0, 1], got torch.float32 (1, 3, 450, 450)"),
])
def test_texture_checks_its_photo_as_overlay_does(fitted, bad, message):
    """A wrong photo was baked without a word (a crop, 0-255 values: a washed-out texture) or
    failed deep in numba; now both methods give the same one-line reason."""
    photo, face = fitted
    for method in (lambda x: face.texture(x, 32), face.overlay):
        with pytest.raises(ValueError) as error:
            method(bad(photo))
        assert message in str(error.value)


def test_texture_takes_a_path_and_refuses_sizes_that_make_no_texture(fitted, faces):
    photo, face = fitted
    from_path = face.texture(faces.joinpath(*PHOTO), 32)
    from_tensor = face.texture(photo, 32)
    assert torch.equal(from_path.albedo, from_tensor.albedo) and from_tensor.albedo.shape[-1] == 32
    for size in (1, 15, 8193, 32.0, True):
        with pytest.raises(ValueError, match="texture size must be an integer in"):
            face.texture(photo, size)


@pytest.mark.parametrize("opacity", [2.0, -1.0, float("nan"), "0.5", None])
def test_overlay_refuses_an_opacity_outside_0_1(fitted, opacity):
    photo, face = fitted
    with pytest.raises(ValueError, match="opacity must be a number in"):
        face.overlay(photo, opacity=opacity)
    blended = face.overlay(photo, opacity=0.5)
    assert 0 <= float(blended.min()) and float(blended.max()) <= 1


def test_reconstruct_refuses_empty_and_nan_photos(reconstructor, fitted):
    photo, _ = fitted
    with pytest.raises(ValueError, match="the photo is empty"):
        reconstructor.reconstruct(torch.rand(3, 0, 10))
    speckled = photo.clone()
    speckled[:, ::10, ::10] = torch.nan  # 1% NaN pixels used to hide the face: 0 faces, no error
    with pytest.raises(ValueError, match="NaN or infinite"):
        reconstructor.reconstruct(speckled)


def test_reconstruct_set_names_photos_apart_and_counts_a_file_once(reconstructor, faces, tmp_path):
    """Two photos with the same file name crashed (StopIteration: the second's crops replaced the
    first's); the same file twice, a copy of it, or the same tensor twice would weigh twice in the
    identity."""
    folder = faces / "identity_face_recognition" / "obama"
    for sub, name in (("a", "obama1.jpg"), ("b", "obama2.jpg")):
        (tmp_path / sub).mkdir()
        shutil.copy(folder / name, tmp_path / sub / "obama.jpg")
    a, b = tmp_path / "a" / "obama.jpg", tmp_path / "b" / "obama.jpg"
    copy = tmp_path / "copy of a.jpg"
    shutil.copy(a, copy)
    result = reconstructor.reconstruct_set([a, b, a, copy], appearance=False)
    assert result.used == ("obama", "obama-2")
    assert [(d.name, d.reason) for d in result.dropped] == [("obama-3", "the same file as obama"),
                                                            ("copy of a", "the same pixels as obama")]
    # each used photo keeps its own face: the fitted points lie on that photo's face
    for photo, face in zip((a, b), result.faces):
        alone = reconstructor.reconstruct(photo)[0]
        assert float((face.landmarks68 - alone.landmarks68).norm(dim=1).mean()) < 0.1 * float(alone.detection.box[2] - alone.detection.box[0])
    # the same tensor twice (or equal pixels) counted twice too
    photo = read_image(a)
    twice = reconstructor.reconstruct_set([photo, photo.clone()], names=["x", "y"], appearance=False)
    assert twice.used == ("x",) and [(d.name, d.reason) for d in twice.dropped] == [("y", "the same pixels as x")]
    assert torch.equal(twice.identity, reconstructor.reconstruct_set([photo], names=["x"], appearance=False).identity)
    with pytest.raises(ValueError, match="photo names must be unique"):
        reconstructor.reconstruct_set([a, b], names=["x", "x"])
    with pytest.raises(ValueError, match="expected photo values in"):
        reconstructor.reconstruct_set([read_image(a) * 255])


@pytest.mark.parametrize("bad, message", [
    (lambda p: (p * 255).byte().permute(1, 2, 0), "expected a float (3, H, W) RGB photo in [0, 1], got torch.uint8"),
    (lambda p: p * 255, "divide 0-255 values by 255"),
    (lambda p: p[:, :0], "the photo is empty"),
    (lambda p: torch.where(torch.arange(p.numel()).reshape(p.shape) % 100 == 0, torch.nan, p), "NaN or infinite"),
])
def test_set_observer_checks_a_tensor_as_reconstruct_does(reconstructor, fitted, bad, message):
    """observe took any tensor: an (H, W, 3) one failed deep in the detector, 0-255 values or NaN
    pixels silently found no face."""
    from deep3dface.image_set import SetObserver

    photo, _ = fitted
    observer = SetObserver(reconstructor.detector, reconstructor.landmarker)
    with pytest.raises(ValueError) as error:
        observer.observe(bad(photo), "bad")
    assert message in str(error.value)
    assert len(observer.observe(photo, "good").faces) == 1


@pytest.mark.parametrize("fields, message", [
    (dict(max_faces=1.5), "max_faces must be None (all faces) or an integer of at least 1, got 1.5"),
    (dict(max_faces="2"), "max_faces must be None"),
    (dict(max_faces=-1), "max_faces must be None"),
    (dict(threads=0), "threads must be None (torch's default) or an integer of at least 1, got 0"),
    (dict(threads=-2), "threads must be None"),
    (dict(min_landmark_score=float("nan")), "min_landmark_score must be a number in [0, 1]"),
    (dict(min_landmark_score=2.0), "min_landmark_score must be a number in [0, 1]"),
    (dict(min_landmark_score="0.5"), "min_landmark_score must be a number in [0, 1]"),
])
def test_reconstructor_config_refuses_values_it_cannot_use(fields, message):
    """A float max_faces failed as a slice index after detection; threads=0 silently meant torch's
    default and -2 a torch error on every photo; a NaN min_landmark_score compared False with every
    score, so a lost face never fell back to the detector's points."""
    from deep3dface.pipeline import ReconstructorConfig

    with pytest.raises(ValueError) as error:
        ReconstructorConfig(**fields)
    assert message in str(error.value)
    import numpy as np
    ReconstructorConfig(max_faces=np.int64(2), threads=None, min_landmark_score=np.float64(0.0))


def test_reconstruct_takes_a_photo_that_requires_grad(reconstructor, fitted):
    """A photo with requires_grad (from a differentiable pipeline) crashed in the landmarker with
    torch's "Can't call numpy() on Tensor that requires grad"."""
    photo, face = fitted
    again = reconstructor.reconstruct(photo.clone().requires_grad_())[0]
    assert torch.equal(again.landmarks68, face.landmarks68)


def test_reconstruct_set_refuses_what_is_not_a_list_of_photos_before_any_work(reconstructor, faces):
    """A str was taken one character a photo (each "dropped", no error); a Path failed as "not
    iterable"; an empty list gave an empty result without a word; names="xy" named two photos."""
    a = faces / "identity_face_recognition" / "obama" / "obama1.jpg"
    for photos in (str(a), a, torch.rand(3, 8, 8)):
        with pytest.raises(TypeError, match=r"photos must be a list of photos .*; pass \[photo\]"):
            reconstructor.reconstruct_set(photos)
    with pytest.raises(ValueError, match="photos is empty"):
        reconstructor.reconstruct_set([])
    for names in ("xy", [1, 2]):
        with pytest.raises(TypeError, match="names must be a list of str"):
            reconstructor.reconstruct_set([a, a], names=names)
    with pytest.raises(ValueError, match="1 names for 2 photos"):  # a generator is read once, not used up
        reconstructor.reconstruct_set((p for p in (a, a)), names=["x"])


def test_reconstruct_set_names_a_bad_photo_by_its_position_before_reading_any(reconstructor, faces, monkeypatch):
    """A malformed tensor (or an int) in the list failed only when its turn came, after the photos
    before it had been detected and landmarked, with a message that did not say which one."""
    import deep3dface.image_set as image_set

    a = faces / "identity_face_recognition" / "obama" / "obama1.jpg"
    observed = []
    monkeypatch.setattr(image_set.SetObserver, "observe", lambda self, image, name: observed.append(name))
    with pytest.raises(ValueError, match=r"photos\[2\]: .*\(3, H, W\)"):
        reconstructor.reconstruct_set([a, torch.rand(3, 32, 32), torch.rand(32, 32, 3)])
    with pytest.raises(TypeError, match=r"photos\[1\]: cannot read an image from int"):
        reconstructor.reconstruct_set([a, 7])
    assert observed == []  # refused before any photo was looked at


def test_api_type_errors_name_the_argument(tmp_path, fitted):
    """model=42 failed in pathlib ("expected str, bytes or os.PathLike object, not int"), config={}
    as an AttributeError, export_mesh(None) as "'NoneType' object has no attribute ...", and a
    mesh written under a file as a bare "[Errno 17] File exists"."""
    import numpy as np

    from deep3dface.export import coefficients_to_mat, export_mesh, write_output
    from deep3dface.pipeline import Reconstructor

    with pytest.raises(TypeError, match="model must be 'default', a path to a face model or a MorphableModel, got int"):
        Reconstructor(model=42)
    with pytest.raises(TypeError, match="config must be a ReconstructorConfig, got dict"):
        Reconstructor(config={})
    with pytest.raises(TypeError, match="export_mesh needs a Mesh .*got NoneType"):
        export_mesh(None, "obj")
    # a format of None, a whole face for its coefficients: named, not AttributeErrors deep inside
    with pytest.raises(TypeError, match="fmt must be a format name"):
        export_mesh(fitted[1].mesh(), None)
    with pytest.raises(TypeError, match=r"needs Coefficients \(a face's .coefficients\), got FaceReconstruction"):
        coefficients_to_mat(fitted[1])
    assert fitted[1].texture(fitted[0], size=np.int64(64)).albedo.shape[-1] == 64  # numpy's integers are sizes
    with pytest.raises(ValueError, match="'meta' tensor: it has a shape but no pixels"):
        Reconstructor().reconstruct(torch.empty(3, 8, 8, device="meta"))
    with pytest.raises(TypeError, match="posed must be True or False, got 'yes'"):
        fitted[1].mesh(posed="yes")
    from deep3dface.io import ImageReadError
    with pytest.raises(ImageReadError, match="a URL: deep3dface reads local files only"):
        read_image("https://example.com/face.jpg")
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a folder"):
        write_output(tmp_path / "afile" / "face.obj", b"x")
    assert (tmp_path / "afile").read_text() == "mine"


def test_same_pixels_are_found_in_a_bfloat16_photo():
    """A bfloat16 photo crashed the same-pixels check (numpy has no bfloat16); now its bytes are
    hashed: the same bfloat16 pixels twice are one photo, other pixels or another dtype are not."""
    from deep3dface.image_set_inputs import read_photos

    photo = torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    other = photo.clone()
    other[0, 0, 0] = 0.5 if float(photo[0, 0, 0]) != 0.5 else 0.25
    dropped = []
    used = [name for name, _ in read_photos([photo, photo.clone(), other, photo.float()], ["a", "b", "c", "d"],
                                            lambda name, reason: dropped.append((name, reason)))]
    assert used == ["a", "c", "d"] and dropped == [("b", "the same pixels as a")]


@pytest.mark.parametrize("make, recipe", [
    (lambda p: (p * 255).round().to(torch.uint8), r"; try photo\.float\(\) / 255$"),
    (lambda p: p.permute(1, 2, 0), r"photo\[\.\.\., :3\]\.permute\(2, 0, 1\)"),
    (lambda p: p[None], r"photo\[0\] \(one photo, not a batch\)"),
    (lambda p: p[0], r"photo\.expand\(3, -1, -1\)"),
    (lambda p: (p.permute(1, 2, 0) * 255).to(torch.uint8), r"permute\(2, 0, 1\) \(channels first\), then photo\.float\(\) / 255"),
])
def test_a_wrong_photo_tensor_is_refused_with_the_way_to_fix_it(reconstructor, make, recipe):
    """uint8, channels-last, batched and grey tensors were refused naming dtype and shape only;
    the error now says how to make the (3, H, W) float photo it wants."""
    photo = torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=recipe):
        reconstructor.reconstruct(make(photo))


def test_numpy_arrays_and_pil_images_are_photos_everywhere(reconstructor, faces, fitted):
    """np.asarray(PIL) / imageio / OpenCV arrays were 'cannot read an image from ndarray', and
    reconstruct_set refused PIL images that reconstruct takes; both now read as the file does."""
    import numpy as np
    from PIL import Image

    path = faces / "identity_face_recognition" / "obama" / "obama1.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert torch.equal(read_image(rgb), read_image(path))
    assert torch.equal(read_image(rgb[..., 0]), read_image(Image.fromarray(rgb[..., 0])))
    with pytest.raises(TypeError, match=r"float64 array of shape \(2, 2, 3\).*permute\(2, 0, 1\)"):
        read_image(np.zeros((2, 2, 3)))
    from_array = reconstructor.reconstruct(rgb)
    assert torch.equal(from_array[0].landmarks68, reconstructor.reconstruct(path)[0].landmarks68)
    pil = [Image.open(path), Image.open(faces / "identity_face_recognition" / "obama" / "obama2.jpg")]
    result = reconstructor.reconstruct_set(pil, appearance=False)
    assert result.used == ("photo0", "photo1")


def test_reconstruct_detections_takes_what_reconstruct_takes(reconstructor, faces):
    """A 0-255 photo ran to the end with lost landmarks and a wrong light, a path failed as
    "'str' object has no attribute 'shape'", [] in torch.stack and one Detection as not iterable."""
    path = faces / "identity_face_recognition" / "obama" / "obama1.jpg"
    photo = read_image(path)
    detections = reconstructor.detector.detect(photo)
    one = reconstructor.reconstruct_detections(path, detections[0])
    assert len(one) == 1 and torch.equal(one[0].landmarks68, reconstructor.reconstruct_detections(photo, detections[:1])[0].landmarks68)
    assert reconstructor.reconstruct_detections(photo, []) == []
    with pytest.raises(ValueError, match="divide 0-255 values by 255"):
        reconstructor.reconstruct_detections(photo * 255, detections)
    with pytest.raises(TypeError, match="detections must be a list of Detection"):
        reconstructor.reconstruct_detections(photo, [detections[0].box])


def test_a_home_folder_path_from_python_is_the_home_folder(fitted, faces, tmp_path, monkeypatch):
    """Python leaves '~' to the shell: write_output('~/face.obj') made a folder named '~' in the
    working directory, and read_image('~/photo.jpg') said 'no such file'; now '~' is the home
    folder in the API's reads and writes (and in fit-set list files)."""
    import shutil

    from deep3dface.cli_sets import read_sets
    from deep3dface.edit import load_face, render_command
    from deep3dface.export import read_coefficients_mat, write_output
    from deep3dface.outputs import face_mat

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    shutil.copy(faces / "identity_face_recognition" / "obama" / "obama1.jpg", home / "photo.jpg")
    assert torch.equal(read_image("~/photo.jpg"), read_image(home / "photo.jpg"))
    assert write_output("~/face.mat", face_mat(fitted[1])) == home / "face.mat"
    assert torch.equal(read_coefficients_mat("~/face.mat").id, load_face(home / "face.mat").coefficients.id)
    assert render_command("~/face.mat", "~/turned.png", pose="0,30,0", size=64)[0] == home / "turned.png"
    (home / "list.txt").write_text("barack\t~/photo.jpg\n")
    assert read_sets(home / "list.txt", [], []) == {"barack": [home / "photo.jpg"]}
    assert list(work.iterdir()) == []  # no '~' folder


def test_results_print_in_a_few_lines(reconstructor, fitted, faces):
    """print(faces) in a notebook gave ~29,000 characters (albedo, 468 landmark points, ...); the
    results now print what a reader looks for."""
    photo, face = fitted
    text = repr(face)
    assert len(text) < 400 and text.startswith("FaceReconstruction(box=[") and "angles_deg=" in text
    assert len(repr(face.landmarks)) < 200 and "backend='mediapipe'" in repr(face.landmarks)
    result = reconstructor.reconstruct_set([faces / "identity_face_recognition" / "obama" / "obama1.jpg"], appearance=False)
    assert len(repr(result)) < 300 and "used=('obama1',)" in repr(result)
    assert len(repr(result.photos[0])) < 200 and repr(result.photos[0]).startswith("PhotoFit(name='obama1'")


def test_a_model_off_the_cpu_and_mps_are_refused_up_front(monkeypatch):
    """The fit runs on the CPU: a MorphableModel on another device failed deep inside it, and on
    MPS the detector's float64 tables cannot run. Both are clear errors before any work."""
    import deep3dface.pipeline as pipeline
    from deep3dface.morphable import load_model
    from deep3dface.pipeline import Reconstructor

    with pytest.raises(ValueError, match=r"the fit runs on the CPU, and this model is on meta: pass model.cpu\(\)"):
        Reconstructor(model=load_model("default").to("meta"))
    monkeypatch.setattr(pipeline, "resolve_device", lambda name: torch.device("mps"))  # no Mac here
    with pytest.raises(ValueError, match="mps: MTCNN's float64 summed-area tables cannot run on MPS"):
        Reconstructor(device="mps")



def test_an_unreadable_dense_correspondence_is_warned_about(monkeypatch):
    """A broken data file silently turned the dense points off (a less accurate fit); now it warns."""
    import deep3dface.detect.correspondence as correspondence
    from deep3dface.pipeline import Reconstructor

    def broken(model):
        raise ValueError("mediapipe_to_default.json: not JSON")

    monkeypatch.setattr(correspondence, "dense_correspondence", broken)
    with pytest.warns(UserWarning, match=r"dense MediaPipe correspondence is unavailable \(ValueError: "
                                         r"mediapipe_to_default.json: not JSON\); fitting the 68 points only"):
        recon = Reconstructor()
    assert recon.dense is None


def test_photos_smaller_than_the_detector_s_window_have_no_faces(reconstructor):
    """MTCNN's smallest window is 12 px: an 8x8 photo, or one 11 px high, has no face (not an error)."""
    for height, width in ((8, 8), (11, 300)):
        assert reconstructor.reconstruct(torch.full((3, height, width), 0.5)) == []
