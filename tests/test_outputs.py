"""Per-photo outputs on a real photo: pose matrices, 3D landmarks, depth and normal maps, textures.

One real photo is reconstructed once for the module (landmark and appearance stages; the photometric
refinement changes no convention checked here and costs a third of the time); every check reads
the files ``photo_outputs`` made (decoded from their bytes) and compares them with the fitted mesh
seen by the photo camera.
Deep3D models get their full-BFM vertex ids (and so a UV chart) from companion files: those tests
use the tiny conformance model with synthetic companions."""
from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.io import loadmat, savemat

from deep3dface.fit.fitter import FitConfig
from deep3dface.io.images import read_image
from deep3dface.morphable import load_model
from deep3dface.morphable.geometry import angles_from_rotation
from deep3dface.outputs import (DEPTH_SCALE, GL_FROM_CV, photo_outputs, read_depth_png, read_normal_png,
                                write_photo_outputs)
from deep3dface.pipeline import FaceReconstruction, Reconstructor, ReconstructorConfig
from deep3dface.texture import sample_texture

TEXTURE = 512   # the smallest size the contract allows; the default (1024) costs more time to bake


@pytest.fixture(scope="module")
def real(faces):
    manifest = json.loads((faces / "manifest.json").read_text())
    entry = next(i for i in manifest["images"] if i["source"] == "aflw2000_3d" and abs(i["yaw_deg"]) < 20)
    photo = read_image(faces / entry["path"])
    face = Reconstructor(config=ReconstructorConfig(fit=FitConfig(photometric=None))).reconstruct(photo)[0]
    record, blobs = photo_outputs(entry["path"], "img", photo, [face], "default", texture_size=TEXTURE)
    return photo, face, record["faces"][0], blobs


@pytest.fixture(scope="module")
def seen(real):
    """The fitted mesh in the photo camera: camera-space vertices, their pixels, posed normals and
    which vertices face the camera and land on the face's own depth map."""
    _, face, record, blobs = real
    g = face.geometry()
    camera_space = face.camera.to_camera_space(g.vertices.double())[0].numpy()
    pixels = face.camera.project(g.vertices.double())[0].numpy()
    normals = g.normals[0].double().numpy()      # posed model frame = OpenGL camera axes
    towards_camera = -camera_space / np.linalg.norm(camera_space, axis=1, keepdims=True) * [1, -1, -1]
    col, row = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
    _, mask = read_depth_png(blobs[record["files"]["depth"]])
    facing = ((normals * towards_camera).sum(1) > 0.3) & mask[row, col]
    return {"camera": camera_space, "pixels": pixels, "normals": normals, "col": col, "row": row,
            "facing": facing, "shape": g.shape[0].double().numpy()}


def test_record_keeps_schema_1_and_adds_the_new_keys(real):
    photo, face, record, blobs = real
    for key in ("bbox", "score", "landmarks5", "landmarks68", "angles_deg", "intrinsics", "landmark_error_px",
                "flags", "files"):
        assert key in record, key
    assert record["unit"] == "decimetre" and record["depth_scale"] == DEPTH_SCALE
    assert record["texture_size"] == TEXTURE
    assert record["pose"]["angles_deg"] == record["angles_deg"]
    files = record["files"]
    for key in ("mesh", "mesh_posed", "coefficients", "overlay", "geometry_overlay", "depth", "normals",
                "textured_glb", "textured_obj", "textured_mtl", "texture", "texture_shaded"):
        assert files[key] in blobs, key
    assert json.loads(blobs["img.json"])["faces"][0] == record


def test_landmark_error_is_in_photo_pixels(real):
    """The fit measures its distance to the landmarker's points in the 224 crop; the JSON gives it
    in photo pixels: divided by the crop's scale, measured here by mapping the landmarker's points."""
    _, face, record, _ = real
    photo_points = face.landmarks.ibug68.double()
    crop_points = face.alignment.to_crop(photo_points)
    scale = float(torch.pdist(crop_points).mean() / torch.pdist(photo_points).mean())
    assert abs(scale - 1) > 0.2  # the two units differ here, so the check means something
    assert record["landmark_error_px"] == pytest.approx(face.landmark_error / scale, rel=1e-3)


def test_pose_maps_the_canonical_mesh_to_the_camera(real, seen):
    _, face, record, _ = real
    opencv, opengl = np.asarray(record["pose"]["opencv_4x4"]), np.asarray(record["pose"]["opengl_4x4"])
    homogeneous = np.c_[seen["shape"], np.ones(len(seen["shape"]))]
    # the camera-space points the photo camera projects (up to the JSON's 6 decimals)
    np.testing.assert_allclose((homogeneous @ opencv.T)[:, :3], seen["camera"], atol=5e-5)
    projected = (homogeneous @ opencv.T)[:, :3] @ np.asarray(record["intrinsics"]).T
    np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], seen["pixels"], atol=0.02)
    # OpenGL: y up, z backward; both rotations proper, angles those of the OpenGL rotation
    np.testing.assert_allclose(opengl, GL_FROM_CV @ opencv, atol=1e-6)
    assert (homogeneous @ opengl.T)[:, 2].max() < 0                # the face lies in front: z < 0
    for m in (opencv, opengl):
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1, abs=1e-5)
    angles = angles_from_rotation(torch.as_tensor(opengl[None, :3, :3])).numpy()[0]
    np.testing.assert_allclose(np.degrees(angles), record["pose"]["angles_deg"], atol=1e-3)


def test_landmarks_3d_project_to_the_landmarks(real):
    _, face, record, _ = real
    points = np.asarray(record["landmarks68_3d"])
    assert points.shape == (68, 3) and (points[:, 2] > 5).all()   # ~1 m in front of the camera, decimetres
    projected = points @ np.asarray(record["intrinsics"]).T
    np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], record["landmarks68"], atol=0.01)


def test_depth_map_holds_the_camera_depth_of_visible_vertices(real, seen):
    photo, _, record, blobs = real
    depth, mask = read_depth_png(blobs[record["files"]["depth"]])
    assert depth.shape == photo.shape[-2:] and 0.05 < mask.mean() < 0.9
    # the map holds the depth at pixel centres: carry it to each vertex's own point along the
    # map's local slope, then it must equal the vertex's camera depth up to the 16-bit step
    slope_y, slope_x = np.gradient(np.where(mask, depth, np.nan))
    row, col, pixels, facing = seen["row"], seen["col"], seen["pixels"], seen["facing"]
    at_vertex = (depth[row, col] + slope_x[row, col] * (pixels[:, 0] - col - 0.5)
                 + slope_y[row, col] * (pixels[:, 1] - row - 0.5))
    error = np.abs(at_vertex - seen["camera"][:, 2])[facing & np.isfinite(at_vertex)]
    assert len(error) > 5000
    assert np.median(error) < DEPTH_SCALE / 2
    assert (error <= DEPTH_SCALE).mean() > 0.95


def test_normal_map_holds_the_mesh_normals(real, seen):
    _, _, record, blobs = real
    normals, mask = read_normal_png(blobs[record["files"]["normals"]])
    _, depth_mask = read_depth_png(blobs[record["files"]["depth"]])
    np.testing.assert_array_equal(mask, depth_mask)
    facing = seen["facing"]
    at_vertex = normals[seen["row"], seen["col"]][facing]
    angle = np.degrees(np.arccos(np.clip((at_vertex * seen["normals"][facing]).sum(1), -1, 1)))
    assert np.median(angle) < 1.5 and np.percentile(angle, 90) < 5
    assert (normals[mask][:, 2] > 0).mean() > 0.95                # OpenGL frame: the face looks at +z


def test_textured_glb_and_obj_round_trip(real, tmp_path):
    photo, face, record, blobs = real
    write_photo_outputs(tmp_path, blobs)
    files = record["files"]
    glb = trimesh.load(tmp_path / files["textured_glb"], force="mesh", process=False)
    image = glb.visual.material.baseColorTexture
    assert image.size == (TEXTURE, TEXTURE)
    mesh = face.mesh(posed=False)
    np.testing.assert_allclose(glb.vertices, mesh.vertices * 0.1, atol=1e-6)          # metres
    uv, _ = FaceReconstruction.uv_chart(face.model)
    np.testing.assert_allclose(glb.visual.uv, uv.numpy(), atol=1e-6)
    obj = trimesh.load(tmp_path / files["textured_obj"], force="mesh", process=False)
    assert obj.visual.material.image.size == (TEXTURE, TEXTURE)
    assert f"map_Kd {files['texture']}" in (tmp_path / files["textured_mtl"]).read_text()
    np.testing.assert_array_equal(np.asarray(obj.visual.material.image.convert("RGB")),
                                  np.asarray(image.convert("RGB")))


def test_shaded_texture_shows_the_photo(real, seen):
    """Where the photo sees the face, the lit texture holds the photo's colours (the bake's error)."""
    photo, face, record, blobs = real
    shaded = torch.as_tensor(np.asarray(Image.open(io.BytesIO(blobs[record["files"]["texture_shaded"]])),
                                        np.float32) / 255).permute(2, 0, 1)
    uv, _ = FaceReconstruction.uv_chart(face.model)
    facing = torch.as_tensor(seen["facing"])
    from_texture = sample_texture(shaded, uv[facing])
    row, col = seen["row"][seen["facing"]], seen["col"][seen["facing"]]
    from_photo = photo[:, row, col].T
    assert float((from_texture - from_photo).abs().mean()) < 0.04
    # read as a viewer reads it: the exported OBJ's vt, the image row at (1 - v)·S (OBJ's convention),
    # sampled by hand, not by our sampler (a bake flipped upside down passed the check above)
    vt = np.array([line.split()[1:3] for line in blobs[record["files"]["textured_obj"]].decode().splitlines()
                   if line.startswith("vt ")], np.float64)
    size = shaded.shape[-1]
    texel_col = np.clip((vt[seen["facing"], 0] * size).astype(int), 0, size - 1)
    texel_row = np.clip(((1 - vt[seen["facing"], 1]) * size).astype(int), 0, size - 1)
    by_hand = shaded[:, texel_row, texel_col].T
    assert float((by_hand - from_photo).abs().mean()) < 0.05


def test_mat_holds_the_fitted_albedo(real):
    _, face, record, blobs = real
    mat = loadmat(io.BytesIO(blobs[record["files"]["coefficients"]]))
    np.testing.assert_allclose(mat["albedo"], face.albedo.numpy(), atol=1e-6)


def test_mat_lm68_is_deep3ds_keypoint_projection_and_ours_is_beside_it(real):
    from deep3dface.camera import Camera
    from deep3dface.export.coefficients import to_reference_pixels
    from deep3dface.fit.annotation import output_keypoints

    _, face, record, blobs = real
    mat = loadmat(io.BytesIO(blobs[record["files"]["coefficients"]]))
    crop = Camera.crop(dtype=torch.float64).project(output_keypoints(face.model, face.coefficients, None).double())[0]
    np.testing.assert_allclose(mat["lm68"][0], to_reference_pixels(crop.numpy()), atol=1e-3)
    # and written out as Deep3DFaceRecon's save_coeff does: its y-up projection (1015·p/(10 − z) + 112,
    # pixel centres at integers) turned to image rows, 223 − y, straight from the posed keypoints
    x, y, z = output_keypoints(face.model, face.coefficients, None).double()[0].numpy().T
    deep3d = np.stack([1015 * x / (10 - z) + 112, 223 - (1015 * y / (10 - z) + 112)], 1)
    np.testing.assert_allclose(mat["lm68"][0], deep3d, atol=1e-3)
    np.testing.assert_allclose(mat["landmarks68_photo"][0], face.landmarks68.double().numpy(), atol=1e-6)


# -- Deep3D models: full-BFM ids from companion files, then a UV chart ---------------------------
@pytest.fixture()
def tiny_folder(conformance, tmp_path):
    shutil.copy(conformance / "tiny_bfm" / "BFM_model_front.mat", tmp_path)
    return tmp_path


def test_deep3d_model_reads_select_vertex_id(tiny_folder):
    n = load_model(tiny_folder).num_vertices
    assert load_model(tiny_folder).data.source_vertex_ids is None
    assert not _has_uv(load_model(tiny_folder))
    ids = np.random.default_rng(0).choice(53490, n, replace=False)
    savemat(tiny_folder / "select_vertex_id.mat", {"select_id": (ids + 1).astype(np.float64)[:, None]})
    model = load_model(tiny_folder)
    np.testing.assert_array_equal(model.data.source_vertex_ids, ids)
    assert not _has_uv(model)                                  # ids alone: still no BFM_UV.mat
    table = np.random.default_rng(1).random((53490, 2))
    savemat(tiny_folder / "BFM_UV.mat", {"UV": table})
    model = load_model(tiny_folder)
    uv, mirror = FaceReconstruction.uv_chart(model)
    np.testing.assert_allclose(uv.numpy(), table[ids], atol=1e-6)
    assert mirror.shape == (n,)


def test_deep3d_model_composes_front_idx_and_trim_index(tiny_folder):
    n = load_model(tiny_folder).num_vertices
    rng = np.random.default_rng(2)
    trim_index = rng.choice(53490, 53215, replace=False)
    front_idx = rng.choice(53215, n, replace=False)
    savemat(tiny_folder / "BFM_front_idx.mat", {"idx": (front_idx + 1)[:, None].astype(np.float64)})
    savemat(tiny_folder / "BFM_exp_idx.mat", {"trimIndex": (trim_index + 1)[:, None].astype(np.float64)})
    np.testing.assert_array_equal(load_model(tiny_folder).data.source_vertex_ids, trim_index[front_idx])


def test_deep3d_companions_that_do_not_fit_are_ignored_with_a_warning(tiny_folder):
    savemat(tiny_folder / "select_vertex_id.mat", {"select_id": np.arange(1, 11, dtype=np.float64)[:, None]})
    with pytest.warns(UserWarning, match="select_vertex_id.mat"):
        model = load_model(tiny_folder)
    assert model.data.source_vertex_ids is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tiny_folder / "select_vertex_id.mat").unlink()
        load_model(tiny_folder)


def _has_uv(model) -> bool:
    return FaceReconstruction.uv_chart(model) is not None


def test_an_overwrite_never_mixes_new_files_with_an_old_json(tmp_path, monkeypatch):
    """With overwrite=True a folder where one file goes made the rename phase fail after other
    files were already replaced, beside the old JSON that marked the photo done. Now a folder in
    the way is refused before any rename, and a rename that fails anyway leaves no JSON (a rerun
    redoes the photo) and no temporary file."""
    import json
    import os

    import deep3dface.outputs as outputs
    from deep3dface.export import OutputExistsError

    old = {"p.json": json.dumps({"faces": [{"files": {"mesh": "p_face0.obj"}}, {"files": {"mesh": "p_face1.obj"}}]}).encode(),
           "p_face0.obj": b"old mesh", "p_face0.mat": b"old mat", "p_face1.obj": b"old second face"}
    write_photo_outputs(tmp_path, old)
    new = {"p.json": b'{"faces": []}', "p_face0.obj": b"new mesh", "p_face0.mat": b"new mat"}
    (tmp_path / "p_face0.mat").unlink()
    (tmp_path / "p_face0.mat").mkdir()
    with pytest.raises(OutputExistsError, match="p_face0.mat is a folder where this photo's file goes"):
        write_photo_outputs(tmp_path, new, overwrite=True)
    assert (tmp_path / "p_face0.obj").read_bytes() == b"old mesh" and (tmp_path / "p.json").exists()
    (tmp_path / "p_face0.mat").rmdir()
    real, renames = os.replace, []

    def failing(source, target):
        renames.append(target)
        if len(renames) == 2:
            raise OSError(5, "Input/output error")
        return real(source, target)

    monkeypatch.setattr(outputs.os, "replace", failing)
    with pytest.raises(OSError, match="Input/output error"):
        write_photo_outputs(tmp_path, new, overwrite=True)
    assert not (tmp_path / "p.json").exists()  # not done: a rerun redoes it
    # renamed before the failure; no temporaries; the old second face (listed only by the old JSON) gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_face0.obj"]
    monkeypatch.setattr(outputs.os, "replace", real)
    write_photo_outputs(tmp_path, new, overwrite=True)  # the same command again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p_face0.mat", "p_face0.obj"]
