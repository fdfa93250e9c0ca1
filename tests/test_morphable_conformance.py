"""The Deep3D face model against the reference's own outputs (../shared/conformance, README §2).

The reference measures projected points with y up and pixel centres at integers; we convert its
arrays to our conventions here, at the boundary, and nowhere in the library.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deep3dface.camera import Camera
from deep3dface.morphable import load_model, load_model_data
from deep3dface.types import DEEP3D_LAYOUT, Coefficients

# README "Suggested acceptance limits": (float32 atol, float64 atol)
TOLERANCES = {
    "face_shape": (2e-6, 1e-9),
    "face_vertex": (2e-6, 1e-9),
    "rotation": (1e-6, 1e-9),
    "face_norm": (2e-5, 1e-9),
    "face_norm_roted": (2e-5, 1e-9),
    "face_texture": (1e-6, 1e-9),
    "face_color": (1e-5, 1e-9),
    "face_proj": (2e-4, 1e-8),
    "landmark": (2e-4, 1e-8),
}
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def reference_pixels_to_ours(points: np.ndarray, size: int = 224) -> np.ndarray:
    """Reference (x, y up, centres at integers) -> ours (x, y down, corner origin)."""
    return np.stack([points[..., 0] + 0.5, size - 1 - points[..., 1] + 0.5], axis=-1)


@pytest.fixture(scope="module")
def vectors(conformance):
    return dict(np.load(conformance / "bfm_vectors.npz"))


@pytest.fixture(scope="module")
def tiny_path(conformance):
    return conformance / "tiny_bfm" / "BFM_model_front.mat"


def test_loader_matches_reference_buffers(tiny_path, vectors):
    data = load_model_data(tiny_path)
    np.testing.assert_array_equal(data.triangles, vectors["model_face_buf"])
    np.testing.assert_array_equal(data.point_buf, vectors["model_point_buf"])
    np.testing.assert_array_equal(data.keypoints, vectors["model_keypoints"])
    np.testing.assert_array_equal(data.front_vertices, vectors["model_front_mask"])
    np.testing.assert_array_equal(data.front_triangles, vectors["model_front_mask"][vectors["model_front_face_buf"]])
    np.testing.assert_array_equal(data.skin_mask, vectors["model_skin_mask"])
    np.testing.assert_allclose(data.mean_shape, vectors["mean_shape_recentered_f64"], atol=1e-12, rtol=0)
    assert data.sizes == {"id": 80, "exp": 64, "tex": 80} and data.unit == "decimetre"


def test_folder_spec_finds_the_mat(tiny_path):
    assert load_model_data(tiny_path.parent).num_vertices == 1517


def _outputs(model, coeff_vector):
    coeffs = Coefficients.from_vector(torch.as_tensor(coeff_vector), DEEP3D_LAYOUT)
    geometry = model(coeffs)
    camera = Camera.crop(dtype=model.mean_shape.dtype)
    cam = camera.to_camera_space(geometry.vertices)
    # reference camera space keeps y up: (x, y, 10 - z)
    face_vertex = cam * cam.new_tensor([1.0, -1.0, 1.0])
    return {
        "face_shape": geometry.shape,
        "rotation": geometry.rotation.transpose(1, 2),  # the reference stores Rᵀ
        "face_norm": geometry.normals_model,
        "face_norm_roted": geometry.normals,
        "face_texture": geometry.albedo,
        "face_color": geometry.colour,
        "face_vertex": face_vertex,
        "face_proj": camera.project(geometry.vertices),
        "landmark": camera.project(geometry.landmarks),
    }


def test_model_matches_reference(tiny_path, vectors, dtype):
    suffix = SUFFIX[dtype]
    model = load_model(tiny_path, dtype=dtype)
    ours = _outputs(model, vectors[f"coeffs_{suffix}"])
    for name, (atol32, atol64) in TOLERANCES.items():
        expected = vectors[f"{name}_{suffix}"]
        if name in ("face_proj", "landmark"):
            expected = reference_pixels_to_ours(expected)
        got = ours[name].detach().numpy()
        assert got.dtype == expected.dtype, name
        atol = atol32 if dtype == torch.float32 else atol64
        np.testing.assert_allclose(got, expected, atol=atol, rtol=0, err_msg=name)


def test_landmarks_are_the_keypoint_projections(tiny_path, vectors):
    model = load_model(tiny_path, dtype=torch.float64)
    ours = _outputs(model, vectors["coeffs_f64"])
    np.testing.assert_array_equal(ours["landmark"].numpy(), ours["face_proj"].numpy()[:, model.keypoints.numpy()])


def test_bad_model_files_are_clear_errors(tmp_path):
    from scipy.io import savemat

    with pytest.raises(FileNotFoundError, match="no such face model"):
        load_model_data(tmp_path / "absent.mat")
    partial = tmp_path / "partial.mat"
    savemat(partial, {"meanshape": np.zeros((1, 9)), "idBase": np.zeros((9, 2))})
    with pytest.raises(ValueError, match=r"partial\.mat.*missing keys.*exBase"):
        load_model_data(partial)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="junk.mat: not a face model"):
        load_model_data(junk)



def test_model_file_is_read_by_the_name_given(tiny_path, tmp_path):
    """scipy's loadmat reads NAME.mat when NAME is missing; the loader reads the name it is given
    (a .mat under another name too) or says that name is missing."""
    import shutil

    from deep3dface.morphable.formats.deep3d import load_deep3d_mat

    shutil.copy(tiny_path, tmp_path / "mine.mat")
    shutil.copy(tiny_path, tmp_path / "bfm")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'mine'}: no such face-model file"):
        load_deep3d_mat(tmp_path / "mine")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'mine'}: no such face model"):
        load_model_data(tmp_path / "mine")
    np.testing.assert_array_equal(load_deep3d_mat(tmp_path / "bfm").mean_shape, load_model_data(tiny_path).mean_shape)
    assert load_model_data(tmp_path / "mine.mat").num_vertices == 1517
    # the format is told by the contents, not the suffix: a model file without .mat loads too
    np.testing.assert_array_equal(load_model_data(tmp_path / "bfm").mean_shape, load_model_data(tiny_path).mean_shape)
    (tmp_path / "notes.mat").write_text("not a model")
    with pytest.raises(ValueError, match="notes.mat: not a face model in a known format"):
        load_model_data(tmp_path / "notes.mat")


def test_posed_vertices_equal_the_forward_pass(conformance):
    """``posed_vertices`` (the rows of a few vertices) equals the full forward pass at those vertices."""
    model = load_model(conformance / "tiny_bfm", dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    coeffs = Coefficients.from_vector(0.5 * torch.randn(3, 257, generator=generator, dtype=torch.float64))
    geometry = model(coeffs)
    ids = torch.tensor([0, 7, 3, model.num_vertices - 1])
    torch.testing.assert_close(model.posed_vertices(coeffs, ids), geometry.vertices[:, ids], atol=1e-12, rtol=0)
    torch.testing.assert_close(model.posed_vertices(coeffs, model.keypoints), geometry.landmarks, atol=1e-12, rtol=0)
