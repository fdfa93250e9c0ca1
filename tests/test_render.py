"""Renderer: fast backends against the naive reference, fill rule, depth test, culling, gradients."""
from __future__ import annotations

import pytest
import torch

from deep3dface.camera import Camera
from deep3dface.render import Raster, interpolate, pixel_barycentrics, rasterize
from deep3dface.render.reference import rasterize_reference

FAST = ["numba", "torch"]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def random_scene(seed: int, batch: int = 2, faces: int = 60, size=(20, 28), dtype=torch.float64):
    """Overlapping triangles of both windings, partly off screen, some behind the near plane, some
    degenerate, duplicated (exact depth ties), on constant-depth planes (ties everywhere) or with
    vertices on pixel centres / pixel corners (edge-function ties), a few with non-finite vertices."""
    assert faces >= 30, "the special cases take the first 30 triangles"
    g = torch.Generator().manual_seed(seed)
    height, width = size
    n = 3 * faces
    xy = torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    xy = xy * torch.tensor([width, height], dtype=torch.float64)
    snap = torch.rand(batch, n, 1, generator=g) < 0.3
    xy = torch.where(snap, (xy * 2).round() / 2, xy)               # pixel centres and corners
    z = torch.rand(batch, n, 1, generator=g, dtype=torch.float64) * 3 + 0.5
    z = torch.where(torch.rand(batch, n, 1, generator=g) < 0.2, torch.full_like(z, 2.0), z)
    z[:, :6] = -1.0                                                 # behind the camera
    z[:, 6] = 1e-4                                                  # in front, but nearer than near
    screen = torch.cat([xy, z], -1)
    screen[:, 9, 0] = float("nan")
    screen[:, 10, 2] = float("inf")
    screen[:, 12] = screen[:, 11]                                   # coincident vertices
    screen[:, 13, :2] = 2 * screen[:, 11, :2] - screen[:, 14, :2]   # collinear with 11 and 14
    triangles = torch.randint(0, n, (faces, 3), generator=g)
    triangles[:5] = torch.tensor([[0, 30, 31], [1, 2, 32], [3, 4, 5], [6, 33, 34], [35, 6, 36]])  # near plane
    triangles[8] = torch.tensor([11, 12, 20])                       # two coincident vertices
    triangles[9] = torch.tensor([11, 13, 14])                       # collinear
    triangles[10] = torch.tensor([21, 21, 22])                      # repeated index
    triangles[11] = torch.tensor([9, 23, 24])                       # NaN vertex
    triangles[12] = torch.tensor([10, 25, 26])                      # infinite depth
    triangles[20:25] = triangles[15:20]                             # duplicates: exact ties
    triangles[25:30] = triangles[15:20].flip(1)                     # other winding: depth may differ in the last bit
    return screen.to(dtype), triangles


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cull", [False, True])
def test_fast_backends_equal_reference(seed, cull, dtype):
    screen, triangles = random_scene(seed, dtype=dtype)
    ids, bary, depth = rasterize_reference(screen, triangles, 20, 28, cull=cull)
    assert 0.2 < (ids >= 0).float().mean() < 1, "the scene should leave some pixels empty"
    for backend in FAST + ["reference"]:
        raster = rasterize(screen, triangles, (20, 28), cull_backfaces=cull, backend=backend)
        assert torch.equal(raster.triangle_id, ids), backend
        assert raster.barycentrics.dtype == raster.depth.dtype == dtype
        torch.testing.assert_close(raster.barycentrics, bary.to(dtype), atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(raster.depth, depth.to(dtype), atol=TOL[dtype], rtol=TOL[dtype])


def test_torch_backend_in_many_small_chunks(monkeypatch):
    """Chunks of whole triangles: the depth test across chunks must keep the lower id on ties."""
    from deep3dface.render import _torch

    monkeypatch.setattr(_torch, "CHUNK", 16)
    screen, triangles = random_scene(1)
    ids = rasterize_reference(screen, triangles, 20, 28)[0]
    assert torch.equal(rasterize(screen, triangles, (20, 28), backend="torch").triangle_id, ids)


def test_numba_scratch_beyond_the_cap_is_not_kept(monkeypatch):
    """Scratch buffers are kept per thread up to SCRATCH_KEEP_BYTES; larger ones are per call (a
    4096² render held 128 MiB for the thread's life), with the same result."""
    from deep3dface.render import _numba

    screen, triangles = random_scene(1)
    ids = rasterize_reference(screen, triangles, 20, 28)[0]
    _numba._SCRATCH.__dict__.pop("buffers", None)
    monkeypatch.setattr(_numba, "SCRATCH_KEEP_BYTES", 20 * 28 * 8 - 1)  # the z-buffer is just over it
    assert torch.equal(_numba.rasterize_shaded(screen, triangles, 20, 28, 1e-3, False)[0], ids)
    held = _numba._SCRATCH.buffers
    assert ("zbuf", torch.float64) not in held and ("counts", torch.int64) in held
    assert all(b.numel() * b.element_size() <= _numba.SCRATCH_KEEP_BYTES for b in held.values())
    _numba._SCRATCH.__dict__.pop("buffers", None)  # the next test starts with the default's buffers


@pytest.mark.parametrize("split", [(1, 1), (3, 1), (7, 1), (1, 3), (2, 5), (1, 40)])
def test_numba_backend_in_parallel_chunks_and_bands(split):
    """Per-chunk z-buffers merged afterwards (the merge must keep the lower id on ties) and bands
    of rows (more bands than rows included)."""
    from deep3dface.render._numba import rasterize_shaded

    screen, triangles = random_scene(1)
    ids = rasterize_reference(screen, triangles, 20, 28)[0]
    assert torch.equal(rasterize_shaded(screen, triangles, 20, 28, 1e-3, False, split)[0], ids)


@pytest.mark.parametrize("seed", range(3))
def test_small_triangles_equal_the_reference(seed):
    """Boxes of at most 2 x 2 pixel centres take the numba kernel's vectorised path: many small
    triangles, vertices often on pixel centres or corners (edge ties), depths often equal."""
    g = torch.Generator().manual_seed(seed)
    faces = 600
    centre = torch.rand(faces, 1, 2, generator=g, dtype=torch.float64) * torch.tensor([30.0, 22.0]) - 1
    xy = centre + torch.rand(faces, 3, 2, generator=g, dtype=torch.float64) * 3 - 1.5
    xy = torch.where(torch.rand(faces, 3, 1, generator=g) < 0.5, (xy * 2).round() / 2, xy)
    z = torch.where(torch.rand(faces, 3, 1, generator=g) < 0.5, 2.0,
                    torch.rand(faces, 3, 1, generator=g, dtype=torch.float64) + 1)
    screen = torch.cat([xy, z], -1).reshape(1, -1, 3)
    triangles = torch.arange(3 * faces).view(faces, 3)
    for cull in (False, True):
        ids, bary, depth = rasterize_reference(screen, triangles, 20, 28, cull=cull)
        raster = rasterize(screen, triangles, (20, 28), cull_backfaces=cull, backend="numba")
        assert torch.equal(raster.triangle_id, ids)
        torch.testing.assert_close(raster.barycentrics, bary, atol=1e-10, rtol=0)
        torch.testing.assert_close(raster.depth, depth, atol=1e-10, rtol=1e-10)


def test_random_scene_exercises_the_special_cases():
    screen, triangles = random_scene(0)
    ids = rasterize(screen, triangles, (20, 28), backend="torch").triangle_id
    drawn = set(ids.unique().tolist())
    assert not drawn & {0, 1, 2, 3, 4, 8, 9, 10, 11, 12}, "near-plane, degenerate and non-finite triangles never cover"
    assert not drawn & set(range(20, 25)), "exact duplicates lose the tie to the lower id"
    assert drawn & set(range(15, 20))


def test_front_faces_have_negative_signed_area_in_pixels():
    # counter-clockwise seen from outside (+z, towards the camera) in the model's y-up frame
    model = torch.tensor([[[-0.1, -0.1, 0.0], [0.1, -0.1, 0.0], [0.0, 0.1, 0.0]]])
    screen = Camera.crop().screen(model)
    (x0, y0, _), (x1, y1, _), (x2, y2, _) = screen[0].tolist()
    assert (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0) < 0
    front = torch.tensor([[0, 1, 2]])
    for backend in FAST:
        assert rasterize(screen, front, (224, 224), cull_backfaces=True, backend=backend).mask.any()
        assert not rasterize(screen, front.flip(1), (224, 224), cull_backfaces=True, backend=backend).mask.any()
        assert rasterize(screen, front.flip(1), (224, 224), backend=backend).mask.any()


def grid_soup(step: float, offset: float, size: int, jitter: float, seed: int = 0):
    """A grid of quads split along alternating diagonals, covering more than the image, as a
    triangle soup (no shared vertex ids, only equal coordinates): (F, 3, 2) pixel positions."""
    g = torch.Generator().manual_seed(seed)
    count = int(size / step) + 3
    k = torch.arange(count, dtype=torch.float64) * step + offset - step
    points = torch.stack(torch.meshgrid(k, k, indexing="xy"), -1)
    points = points + jitter * (torch.rand(points.shape, generator=g, dtype=torch.float64) - 0.5)
    tl, tr, bl, br = points[:-1, :-1], points[:-1, 1:], points[1:, :-1], points[1:, 1:]
    flip = ((torch.arange(count - 1)[:, None] + torch.arange(count - 1)) % 2 == 1)[..., None, None]
    one = torch.where(flip, torch.stack([tl, bl, tr], -2), torch.stack([tl, bl, br], -2))
    two = torch.where(flip, torch.stack([tr, bl, br], -2), torch.stack([tl, br, tr], -2))
    return torch.cat([one.reshape(-1, 3, 2), two.reshape(-1, 3, 2)])


@pytest.mark.parametrize("step, offset, jitter", [(2.0, 0.5, 0.0), (1.0, 0.5, 0.0), (3.0, 0.0, 0.0),
                                                  (2.5, 0.25, 0.0), (2.0, 0.5, 0.8)])
def test_watertight_grid_covers_each_pixel_once(step, offset, jitter):
    """Vertices on pixel centres put edges (horizontal, vertical, diagonal) through centres: the
    top-left rule must give each centre to exactly one triangle.  Each triangle is drawn alone, in
    its own batch element (the others pushed behind the camera), to count coverage."""
    size = 12
    soup = grid_soup(step, offset, size, jitter)
    faces = len(soup)
    triangles = torch.arange(3 * faces).view(faces, 3)
    depth = torch.where(torch.eye(faces, dtype=torch.bool), 1.0, -1.0).double().repeat_interleave(3, 1)
    screen = torch.cat([soup.reshape(1, -1, 2).expand(faces, -1, -1), depth[..., None]], -1)
    for backend in FAST:
        count = rasterize(screen, triangles, (size, size), backend=backend).mask.sum(0)
        assert torch.equal(count, torch.ones_like(count)), backend
    together = torch.cat([soup.reshape(-1, 2), torch.ones(3 * faces, 1, dtype=torch.float64)], -1)
    reference = rasterize_reference(together[None], triangles, size, size)[0]
    assert (reference >= 0).all()
    for backend in FAST:
        assert torch.equal(rasterize(together, triangles, (size, size), backend=backend).triangle_id, reference)


@pytest.mark.parametrize("backend", FAST + ["reference"])
def test_depth_test_keeps_the_nearest_and_the_lower_id_on_ties(backend):
    square = torch.tensor([[1.0, 1.0], [9.0, 1.0], [1.0, 9.0]], dtype=torch.float64)
    def scene(z_first, z_second):
        xy = torch.cat([square, square])
        z = torch.tensor([z_first] * 3 + [z_second] * 3, dtype=torch.float64)[:, None]
        return torch.cat([xy, z], -1)
    triangles = torch.tensor([[0, 2, 1], [3, 5, 4]])
    pixel = (2, 2)
    assert rasterize(scene(2.0, 3.0), triangles, (10, 10), backend=backend).triangle_id[0][pixel] == 0
    assert rasterize(scene(3.0, 2.0), triangles, (10, 10), backend=backend).triangle_id[0][pixel] == 1
    raster = rasterize(scene(2.0, 2.0), triangles, (10, 10), backend=backend)
    assert raster.triangle_id[0][pixel] == 0
    assert raster.depth[0][pixel] == 2.0 and raster.depth[0, 9, 9] == float("inf")


@pytest.mark.parametrize("backend", FAST)
def test_near_plane_drops_whole_triangles(backend):
    screen = torch.tensor([[1.0, 1.0, 1.0], [9.0, 1.0, 1.0], [1.0, 9.0, 0.5]], dtype=torch.float64)
    triangles = torch.tensor([[0, 2, 1]])
    assert rasterize(screen, triangles, (10, 10), near=0.5, backend=backend).mask.any()
    assert not rasterize(screen, triangles, (10, 10), near=0.6, backend=backend).mask.any()


def test_perspective_correct_barycentrics_and_depth():
    """A slanted square imaged by a real camera: interpolated camera-space points lie on the square
    and re-project to the pixel centres; the raster depth is their z."""
    camera = Camera.crop(size=32, focal=100.0, dtype=torch.float64)
    corners = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, 1.0, 2.0]],
                           dtype=torch.float64)[None]
    screen = camera.screen(corners)
    triangles = torch.tensor([[0, 1, 2], [0, 2, 3]])
    raster = rasterize(screen, triangles, (32, 32))
    points = interpolate(camera.to_camera_space(corners), raster, triangles)[raster.mask]
    assert points.shape[0] > 200
    pixels = camera.project_camera_space(points[None])[0]
    i, j = torch.nonzero(raster.mask[0], as_tuple=True)
    torch.testing.assert_close(pixels, torch.stack([j + 0.5, i + 0.5], -1).double(), atol=1e-9, rtol=0)
    torch.testing.assert_close(points[:, 2], raster.depth[raster.mask], atol=1e-12, rtol=0)
    torch.testing.assert_close(raster.barycentrics.sum(-1)[raster.mask], torch.ones(len(points), dtype=torch.float64))


def test_without_autograd_numba_shades_exactly_like_pixel_barycentrics(dtype):
    screen, triangles = random_scene(1, dtype=dtype)
    fast = rasterize(screen, triangles, (20, 28), backend="numba")
    bary, depth = pixel_barycentrics(screen, triangles, fast.triangle_id)
    assert torch.equal(fast.barycentrics, bary) and torch.equal(fast.depth, depth)
    with_grad = rasterize(screen.clone().requires_grad_(), triangles, (20, 28), backend="numba")
    assert torch.equal(with_grad.barycentrics.detach(), bary)
    assert with_grad.barycentrics.grad_fn is not None


def test_numba_analytic_gradient_equals_torch_autograd(dtype):
    screen, triangles = random_scene(0, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    grad_bary = torch.randn(2, 20, 28, 3, generator=g, dtype=dtype)
    grad_depth = torch.randn(2, 20, 28, generator=g, dtype=dtype)
    grads = []
    for backend in FAST:
        s = screen.clone().requires_grad_()
        raster = rasterize(s, triangles, (20, 28), backend=backend)
        depth = torch.where(raster.mask, raster.depth, 0)
        ((raster.barycentrics * grad_bary).sum() + (depth * grad_depth).sum()).backward()
        grads.append(s.grad)
    assert grads[0].abs().sum() > 0 and grads[0].dtype == dtype
    torch.testing.assert_close(grads[0], grads[1], atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("used", ["barycentrics", "depth"])
def test_numba_gradient_when_the_loss_uses_one_output(used):
    """The other output's gradient arrives as None (no zero-filled tensor): read as zero."""
    screen, triangles = random_scene(3)
    weights = torch.randn(2, 20, 28, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for backend in FAST:
        s = screen.clone().requires_grad_()
        raster = rasterize(s, triangles, (20, 28), backend=backend)
        value = raster.barycentrics if used == "barycentrics" else torch.where(raster.mask, raster.depth, 0)[..., None]
        (value * weights).sum().backward()
        grads.append(s.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=TOL[torch.float64], rtol=TOL[torch.float64])


@pytest.mark.parametrize("batch", [(), (2,), (1,)], ids=["shared", "batched", "one"])
def test_interpolate_backends_agree_and_are_zero_when_empty(batch, dtype):
    screen, triangles = random_scene(2, faces=30, dtype=dtype)
    attributes = torch.rand(batch + (screen.shape[1], 4), generator=torch.Generator().manual_seed(0), dtype=dtype)
    outs = []
    for backend in FAST:
        s, a = screen.clone().requires_grad_(), attributes.clone().requires_grad_()
        raster = rasterize(s, triangles, (20, 28), backend=backend)
        out = interpolate(a, raster, triangles, backend=backend)
        assert out.shape == (2, 20, 28, 4) and out.dtype == dtype
        assert (out[~raster.mask] == 0).all() and (out[raster.mask] != 0).any()
        (out * torch.arange(1.0, 5.0, dtype=dtype)).sum().backward()
        outs.append((out, s.grad, a.grad))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y, atol=100 * TOL[dtype], rtol=TOL[dtype])


def test_interpolate_backward_takes_an_expanded_gradient():
    """.sum() hands back a stride-0 gradient: the numba backward reads it in place, same result."""
    screen, triangles = random_scene(2, faces=30)
    grads = []
    for backend in FAST:
        s, a = screen.clone().requires_grad_(), torch.rand(screen.shape[1], 3, dtype=torch.float64,
                                                           generator=torch.Generator().manual_seed(0)).requires_grad_()
        interpolate(a, rasterize(s, triangles, (20, 28), backend=backend), triangles, backend=backend).sum().backward()
        grads.append((s.grad, a.grad))
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, atol=100 * TOL[torch.float64], rtol=TOL[torch.float64])


def clear_scene():
    """Two triangles whose edges stay > 0.005 px from every pixel centre of an 8 x 8 image."""
    screen = torch.tensor([[[0.7, 0.6, 2.0], [7.3, 1.2, 3.0], [1.2, 7.1, 2.5], [7.6, 7.4, 4.0]]],
                          dtype=torch.float64)
    return screen, torch.tensor([[0, 2, 1], [1, 2, 3]])


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_interpolate(backend):
    screen, triangles = clear_scene()
    attributes = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    raster = rasterize(screen, triangles, (8, 8), backend=backend)
    assert raster.mask.sum() > 20

    def of_attributes(a):
        return interpolate(a, raster, triangles, backend=backend)

    def of_screen(s):
        return interpolate(attributes, rasterize(s, triangles, (8, 8), backend=backend), triangles, backend=backend)

    def depth_of_screen(s):
        return rasterize(s, triangles, (8, 8), backend=backend).depth.nan_to_num(posinf=0.0)

    # numba: each Jacobian row is a parallel kernel launch, slow on a busy machine; fast mode checks
    # random projections (test_numba_analytic_gradient_equals_torch_autograd covers the rest)
    fast = backend == "numba"
    assert torch.autograd.gradcheck(of_attributes, attributes.clone().requires_grad_(), fast_mode=fast)
    assert torch.autograd.gradcheck(of_screen, screen.clone().requires_grad_(), fast_mode=fast)
    assert torch.autograd.gradcheck(depth_of_screen, screen.clone().requires_grad_(), fast_mode=fast)


def test_unbatched_input_and_empty_mesh():
    screen, triangles = clear_scene()
    raster = rasterize(screen[0], triangles, (8, 8))
    assert isinstance(raster, Raster) and raster.triangle_id.shape == (1, 8, 8)
    for backend in FAST + ["reference"]:
        empty = rasterize(screen, triangles[:0], (8, 6), backend=backend)
        assert (empty.triangle_id == -1).all() and (empty.depth == float("inf")).all()
        assert empty.barycentrics.shape == (1, 8, 6, 3) and (empty.barycentrics == 0).all()


def test_invalid_input_is_rejected():
    screen, triangles = clear_scene()
    for backend in FAST + ["reference"]:
        with pytest.raises(ValueError):
            rasterize(screen, triangles + 10, (8, 8), backend=backend)
        with pytest.raises(ValueError):
            rasterize(screen, triangles - 1, (8, 8), backend=backend)
    with pytest.raises(ValueError):
        rasterize(screen[..., :2], triangles, (8, 8))
    with pytest.raises(TypeError):
        rasterize(screen, triangles.double(), (8, 8))
    with pytest.raises(TypeError):
        rasterize(screen.half(), triangles, (8, 8))
    with pytest.raises(ValueError):
        rasterize(screen, triangles, (8, 8), backend="opengl")
    with pytest.raises(ValueError):
        rasterize(screen, triangles, (0, 8))
    raster = rasterize(screen, triangles, (8, 8))
    for backend in FAST:
        with pytest.raises(ValueError):
            interpolate(torch.rand(3, 2), raster, triangles, backend=backend)      # 3 attributes, 4 vertices
        with pytest.raises(ValueError):
            interpolate(torch.rand(4, 2), raster, triangles[:1], backend=backend)  # not the raster's mesh
    with pytest.raises(ValueError):
        interpolate(torch.rand(3, 4, 2), raster, triangles)                # batch 3 for a raster of 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torch_backend_equals_numba(dtype):
    screen, triangles = random_scene(3, dtype=dtype)
    cpu = rasterize(screen, triangles, (20, 28), backend="numba")
    cuda = rasterize(screen.cuda(), triangles.cuda(), (20, 28))           # auto -> torch on CUDA
    assert torch.equal(cuda.triangle_id.cpu(), cpu.triangle_id)
    torch.testing.assert_close(cuda.barycentrics.cpu(), cpu.barycentrics, atol=TOL[dtype], rtol=0)
    attributes = torch.rand(screen.shape[1], 3, dtype=dtype)
    torch.testing.assert_close(interpolate(attributes.cuda(), cuda, triangles.cuda()).cpu(),
                               interpolate(attributes, cpu, triangles), atol=10 * TOL[dtype], rtol=0)


def test_numba_rendering_keeps_the_callers_torch_thread_count():
    """Numba's parallel kernels share torch's OpenMP runtime: rasterising, interpolating and their
    gradients must leave a caller's ``torch.set_num_threads(1)`` (the pipeline's) as it was."""
    screen, triangles = random_scene(0, dtype=torch.float64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        s = screen.clone().requires_grad_()
        raster = rasterize(s, triangles, (20, 28), backend="numba")
        assert torch.get_num_threads() == 1
        colours = interpolate(s, raster, triangles)
        assert torch.get_num_threads() == 1
        (colours.sum() + raster.barycentrics.sum()).backward()
        assert torch.get_num_threads() == 1 and s.grad.abs().sum() > 0
    finally:
        torch.set_num_threads(previous)
