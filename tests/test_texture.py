"""UV charts, BFM_UV indexing, photo → texture baking and textured exports.

The baking tests render a synthetic photo of the default model wearing a known texture (the
renderer, SH lighting, a random pose), bake it back with the known geometry and compare."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.io import savemat

from deep3dface.camera import Camera
from deep3dface.export import OutputExistsError, TexturedMesh, export_textured, write_textured
from deep3dface.morphable import load_model, load_model_data
from deep3dface.morphable.shading import irradiance
from deep3dface.morphable.topology import mirror_vertex_map
from deep3dface.texture import (bake_texture, bake_texture_set, distortion, front_model_bfm_ids, render_texture,
                                signed_areas, uv_coordinates)
from deep3dface.texture.uv import BFM_FULL_VERTICES, BFM_TRIMMED_VERTICES
from deep3dface.types import Mesh

PHOTO = 320   # synthetic photo size (square)
MAP = 256     # baked texture size


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def uv(model):
    return torch.as_tensor(uv_coordinates(model))


@pytest.fixture(scope="module")
def mirror(model):
    return mirror_vertex_map(model.mean_shape.numpy())[0]


def known_texture(size: int, symmetric: bool = False) -> torch.Tensor:
    """A smooth colourful pattern (3, S, S); ``symmetric``: mirror-symmetric about u = 0.5."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    if symmetric:
        x = (x - 0.5).abs()
    return torch.stack([0.5 + 0.3 * torch.sin(2 * math.pi * 3 * x) * torch.cos(2 * math.pi * 2 * y),
                        0.45 + 0.25 * torch.cos(2 * math.pi * 3 * y + 1),
                        0.4 + 0.2 * torch.sin(2 * math.pi * (2 * x + y))])


def scene(model, uv, texture, yaw: float, seed: int, photo_size: int = PHOTO):
    """Render the textured, lit default face in a random pose: returns what baking needs."""
    gen = torch.Generator().manual_seed(seed)
    gamma = torch.zeros(1, 27)
    gamma[0, [1, 10, 19]] = 0.2
    gamma[0, [3, 12, 21]] = -0.15
    angle = torch.tensor([[0.0, yaw, 0.0]]) + 0.1 * (torch.rand(1, 3, generator=gen) - 0.5)
    coeffs = model.zero_coefficients(1).replace(id=0.7 * torch.randn(1, model.layout.id, generator=gen),
                                                 angle=angle, gamma=gamma)
    geometry = model(coeffs)
    camera = Camera.crop(size=photo_size, focal=1015 * photo_size / 224)
    screen = camera.screen(geometry.vertices)[0]
    light = irradiance(geometry.normals, coeffs.gamma)[0]
    photo, mask = render_texture(screen, model.triangles, uv, texture, (photo_size, photo_size), shading=light)
    return {"photo": photo, "mask": mask, "screen": screen, "normals": geometry.normals[0],
            "albedo": geometry.albedo[0], "irradiance": light, "vertices": geometry.vertices[0]}


@pytest.fixture(scope="module")
def baked(model, uv, mirror):
    texture = known_texture(MAP)
    shot = scene(model, uv, texture, yaw=0.45, seed=1)
    maps = bake_texture(shot["photo"], shot["screen"], shot["normals"], model.triangles, uv, shot["albedo"],
                        shot["irradiance"], size=MAP, mirror=mirror)
    return texture, shot, maps


# -- UV charts ------------------------------------------------------------------------------------
def test_default_uv_has_no_flips_and_bounded_distortion(model, uv):
    assert uv.shape == (model.num_vertices, 2) and 0 < uv.min() and uv.max() < 1
    triangles = model.triangles.numpy()
    assert (signed_areas(uv.numpy(), triangles) > 0).all()
    stats = distortion(model.mean_shape.numpy(), uv.numpy(), triangles)
    assert stats["flipped"] == 0
    assert stats["angle_p50_p95_max"][0] < 1.5 and stats["angle_p50_p95_max"][1] < 2.0
    assert stats["area_log2_p50_p95_max"][1] < 1.2                     # 95 % of the area within ×2.3
    # the map shows the face upright as seen from the front: the subject's right eye (36) on the left
    kp = uv.numpy()[model.keypoints.numpy()]
    assert kp[36, 0] < kp[45, 0] and kp[8, 1] < kp[30, 1] < kp[27, 1]


def test_distortion_of_a_similarity_is_one():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]])
    triangles = np.array([[0, 1, 2], [1, 3, 2]])
    stats = distortion(vertices, 0.3 * vertices[:, :2] + 0.1, triangles)
    np.testing.assert_allclose(stats["area"], 1)
    np.testing.assert_allclose(stats["angle"], 1)
    assert distortion(vertices, vertices[:, [1, 0]], triangles)["flipped"] == 2     # a reflection folds


def synthetic_bfm(uv_front: np.ndarray, front_idx: np.ndarray, seed: int = 0):
    """A full-BFM-sized UV table holding ``uv_front`` at rows trimIndex[front_idx], like the real
    BFM_UV.mat, and random rows elsewhere.  trimIndex (53,215 increasing ids into 53,490) is random."""
    rng = np.random.default_rng(seed)
    trim_index = np.sort(rng.choice(BFM_FULL_VERTICES, BFM_TRIMMED_VERTICES, replace=False))
    table = rng.uniform(0, 1, (BFM_FULL_VERTICES, 2))
    table[trim_index[front_idx]] = uv_front
    return table, trim_index


def test_bfm_uv_needs_full_bfm_ids_not_front_idx(model, uv):
    """The default model's crop ids play BFM_front_idx (ids into the 53,215 topology)."""
    front_idx = model.data.source_vertex_ids
    table, trim_index = synthetic_bfm(uv.numpy(), front_idx)
    triangles = model.triangles.numpy()
    right = table[front_model_bfm_ids(front_idx, trim_index)]
    np.testing.assert_array_equal(right, uv.numpy())
    assert (signed_areas(right, triangles) > 0).all()
    wrong = table[front_idx]                          # the seed port's indexing: other vertices' rows
    areas = signed_areas(wrong, triangles)
    assert (areas <= 0).mean() > 0.05                 # thousands of folds ...
    assert np.abs(areas).sum() > 10 * signed_areas(right, triangles).sum()    # ... overlapping many times
    assert (np.linalg.norm(wrong - right, axis=1) > 0.01).mean() > 0.8


def test_deep3d_model_uv_from_mat_files(conformance, tmp_path):
    """The tiny Deep3D model is a 41 × 37 grid (id = row·41 + col, row 0 on top, col along +x): its
    natural chart goes through BFM_UV.mat and select_vertex_id.mat files and comes back unfolded."""
    data = load_model_data(conformance / "tiny_bfm")
    ids = np.arange(data.num_vertices)
    grid = np.stack([(ids % 41) / 40, 1 - (ids // 41) / 36], 1)
    front_idx = np.random.default_rng(3).choice(BFM_TRIMMED_VERTICES, data.num_vertices, replace=False)
    table, trim_index = synthetic_bfm(grid, front_idx)
    savemat(tmp_path / "BFM_UV.mat", {"UV": table})
    savemat(tmp_path / "select_vertex_id.mat", {"select_id": (trim_index[front_idx] + 1).astype(np.float64)[:, None]})
    got = uv_coordinates(data, bfm_uv=tmp_path / "BFM_UV.mat", bfm_vertex_ids=tmp_path / "select_vertex_id.mat")
    np.testing.assert_allclose(got, grid, atol=1e-6)
    assert (signed_areas(got, data.triangles) > 0).all()
    with pytest.raises(ValueError, match="bfm_vertex_ids"):
        uv_coordinates(data, bfm_uv=table)
    with pytest.raises(ValueError, match="BFM_UV.mat"):
        uv_coordinates(data)


# -- baking ---------------------------------------------------------------------------------------
def test_bake_recovers_the_known_texture(baked):
    texture, _, maps = baked
    assert maps.albedo.shape == maps.shaded.shape == (3, MAP, MAP) and maps.weight.shape == (MAP, MAP)
    confident = maps.weight > 0.99
    error = (maps.albedo - texture).abs().mean(0)[confident].mean()
    print(f"bake mean abs error over {int(confident.sum())} confident texels: {error:.5f}")
    assert error < 0.01
    # a pose of 26° yaw shows most of the chart, hides some (behind the nose, the far cheek)
    chart = maps.coverage.sum()
    assert 0.5 < confident.sum() / chart < 0.95 and (maps.weight[maps.coverage] == 0).sum() > 0.03 * chart


def test_bake_falls_back_to_fitted_albedo_then_mirror(model, uv, mirror):
    shot = scene(model, uv, known_texture(MAP, symmetric=True), yaw=0.6, seed=2)
    args = (shot["photo"], shot["screen"], shot["normals"], model.triangles, uv, shot["albedo"], shot["irradiance"])
    plain = bake_texture(*args, size=MAP)
    hidden = plain.coverage & (plain.weight == 0)
    skin = shot["albedo"][0]                            # the default model's constant placeholder albedo
    torch.testing.assert_close(plain.albedo[:, hidden], skin[:, None].expand(3, int(hidden.sum())), atol=1e-5, rtol=0)
    # with the mirror the hidden half is the visible half's texture (symmetric here)
    mirrored = bake_texture(*args, size=MAP, mirror=mirror)
    truth = known_texture(MAP, symmetric=True)
    error = (mirrored.albedo - truth).abs().mean(0)[hidden]
    assert error.median() < 0.03 < (plain.albedo - truth).abs().mean(0)[hidden].median()


def test_two_photos_fuse(model, uv):
    texture = known_texture(MAP)
    shots = [scene(model, uv, texture, yaw=y, seed=s) for y, s in ((0.7, 4), (-0.7, 5))]
    single = [bake_texture(s["photo"], s["screen"], s["normals"], model.triangles, uv, s["albedo"], s["irradiance"],
                           size=MAP) for s in shots]
    fused = bake_texture_set([s["photo"] for s in shots], [s["screen"] for s in shots], [s["normals"] for s in shots],
                             model.triangles, uv, shots[0]["albedo"], [s["irradiance"] for s in shots], size=MAP)
    confident = fused.weight > 0.99
    assert confident.sum() > 1.15 * max((m.weight > 0.99).sum() for m in single)
    assert (fused.albedo - texture).abs().mean(0)[confident].mean() < 0.01


# -- textured exports -----------------------------------------------------------------------------
def textured(model, uv, maps, shot) -> TexturedMesh:
    mesh = Mesh(vertices=shot["vertices"].numpy(), triangles=model.triangles.numpy(),
                normals=shot["normals"].numpy())
    return TexturedMesh(mesh, uv.numpy(), maps.albedo.permute(1, 2, 0).numpy())


def loaded_texture(loaded: trimesh.Trimesh) -> np.ndarray:
    material = loaded.visual.material
    image = material.baseColorTexture if isinstance(material, trimesh.visual.material.PBRMaterial) else material.image
    return np.array(image.convert("RGB"))


@pytest.mark.parametrize("fmt", ["obj", "ply", "glb"])
def test_textured_round_trip(model, uv, baked, tmp_path, fmt):
    _, shot, maps = baked
    item = textured(model, uv, maps, shot)
    written = write_textured(item, tmp_path / f"head.{fmt}")
    assert sorted(p.name for p in written) == sorted(export_textured(item, fmt, "head"))
    loaded = trimesh.load(tmp_path / f"head.{fmt}", process=False, force="mesh")
    scale = 10.0 if fmt == "glb" else 1.0
    np.testing.assert_allclose(loaded.vertices * scale, item.mesh.vertices, atol=1e-5)
    np.testing.assert_array_equal(loaded.faces, item.mesh.triangles)
    np.testing.assert_allclose(loaded.visual.uv, item.uv, atol=1e-6)
    np.testing.assert_array_equal(loaded_texture(loaded), np.rint(item.texture.astype(np.float64) * 255))


def test_rerendered_export_matches_the_photo(model, uv, baked, tmp_path):
    """The exported OBJ (loaded by trimesh, uv and PNG) rendered again with the photo's light gives the photo."""
    _, shot, maps = baked
    write_textured(textured(model, uv, maps, shot), tmp_path / "face.obj")
    loaded = trimesh.load(tmp_path / "face.obj", process=False, force="mesh")
    image = torch.as_tensor(loaded_texture(loaded), dtype=torch.float32) / 255
    rendered, mask = render_texture(shot["screen"], model.triangles, loaded.visual.uv, image.permute(2, 0, 1),
                                    (PHOTO, PHOTO), shading=shot["irradiance"])
    assert torch.equal(mask, shot["mask"])
    error = (rendered - shot["photo"]).abs().mean(0)[mask].mean()
    print(f"re-render mean abs error: {error:.5f}")
    assert error < 0.02


def test_write_textured_refuses_to_overwrite(model, uv, baked, tmp_path):
    _, shot, maps = baked
    item = textured(model, uv, maps, shot)
    (tmp_path / "face.png").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="face.png"):
        write_textured(item, tmp_path / "face.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]
    assert len(write_textured(item, tmp_path / "face.obj", overwrite=True)) == 3
    with pytest.raises(ValueError, match="unknown textured format"):
        export_textured(item, "stl")


def test_box_sums_and_soften_against_plain_windows():
    """The cumulative-sum box filter equals summing each clipped window; ``soften`` equals its
    definition with torch's average pooling (the means' window counts cancel in the fraction)."""
    import torch.nn.functional as F

    from deep3dface.texture.bake import box_sums, soften

    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 3, (2, 9, 7), generator=gen)
    for radius in (0, 1, 3, 20):
        plain = torch.stack([torch.stack([torch.stack([counts[c, max(i - radius, 0):i + radius + 1,
                                                             max(j - radius, 0):j + radius + 1].sum()
                                                      for j in range(7)]) for i in range(9)]) for c in range(2)])
        assert torch.equal(box_sums(counts, radius).long(), plain), radius
    coverage = torch.rand(64, 48, generator=gen) > 0.3
    visible = ((torch.rand(64, 48, generator=gen) > 0.4) & coverage).float()
    for radius in (1, 4):
        mean = lambda m: F.avg_pool2d(m[None, None], 2 * radius + 1, stride=1, padding=radius,  # noqa: E731
                                      count_include_pad=False)[0, 0]
        expected = (2 * mean(visible) / mean(coverage.float()).clamp(min=1e-6) - 1).clamp(0, 1)
        torch.testing.assert_close(soften(visible, coverage, radius), expected, atol=1e-6, rtol=0)


def test_compiled_bilinear_lookup_equals_the_torch_one():
    """sample_image's compiled loop gives the torch formula's values bit for bit (both dtypes,
    points inside, on the border and far outside), NaN for a NaN point, and gradients still flow
    through the torch path."""
    from deep3dface.texture.uv import sample_image, sample_image_reference

    generator = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        image = torch.rand(3, 37, 53, generator=generator, dtype=dtype)
        points = torch.rand(5000, 2, generator=generator, dtype=dtype) * torch.tensor([70.0, 50.0], dtype=dtype) - 8
        points[:4] = torch.tensor([[0.0, 0.0], [53.0, 37.0], [0.5, 36.5], [1e9, -1e9]], dtype=dtype)
        assert torch.equal(sample_image(image, points), sample_image_reference(image, points))
    nan = sample_image(image, torch.tensor([[float("nan"), 2.0], [3.0, 4.0]], dtype=torch.float64))
    assert torch.isnan(nan[0]).all() and torch.isfinite(nan[1]).all()
    image.requires_grad_(True)
    sample_image(image, points[:10]).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_compiled_lookup_keeps_torch_thread_count():
    """A parallel numba launch shares torch's OpenMP runtime: sample_image must leave a caller's
    ``torch.set_num_threads(1)`` as it was (``threads.numba_follows_torch``)."""
    from deep3dface.texture.uv import sample_image
    from deep3dface.threads import torch_threads

    with torch_threads(1):
        sample_image(torch.rand(3, 16, 16), torch.rand(100, 2) * 16)
        assert torch.get_num_threads() == 1


def test_vertex_id_and_uv_files_are_read_by_the_name_given(tmp_path):
    """scipy's loadmat reads NAME.mat when NAME is missing; these read the name they are given."""
    from deep3dface.texture.uv import load_bfm_uv, load_vertex_ids

    savemat(tmp_path / "ids.mat", {"select_id": np.array([[3, 1, 2]])})
    (tmp_path / "ids_copy").write_bytes((tmp_path / "ids.mat").read_bytes())
    savemat(tmp_path / "uv.mat", {"UV": np.zeros((BFM_FULL_VERTICES, 2))})
    for load, name in ((load_vertex_ids, "ids"), (load_bfm_uv, "uv")):
        with pytest.raises(FileNotFoundError, match=f"'{tmp_path / name}'"):
            load(tmp_path / name)
    np.testing.assert_array_equal(load_vertex_ids(tmp_path / "ids_copy"), [2, 0, 1])
