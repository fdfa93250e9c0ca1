"""Baking photos into UV texture maps, and rendering a textured mesh (the inverse, for checks).

Conventions: UV and texture images as in ``texture.uv`` (v up; texel (i, j) centred at uv
((j + 0.5)/S, 1 − (i + 0.5)/S)); photo pixels and depths as in ``render.raster`` (corner origin,
y down, camera depth).  Normals and view directions share one frame, by default the posed model
frame of ``FaceGeometry.normals`` where the camera looks down −z, so the direction to a far camera
is +z; pass ``view`` (``view_directions``) for the exact perspective rays.

How a texel gets its colour (``bake_texture_set``):

1. The mesh is rasterised **in UV space** (``uv_raster``): each texel inside the chart learns its
   triangle and (affine) barycentrics, i.e. its point on the surface.
2. Per photo, that point's image is ``Σ b_k z_k (x_k, y_k) / Σ b_k z_k`` (exact perspective from
   the screen coordinates and depths alone) at depth ``Σ b_k z_k``.  The mesh is rasterised in the
   photo; the texel is **visible** when it is no deeper than the photo's depth buffer there plus a
   tolerance (a fraction of the face's depth extent), inside the photo and facing the camera.
3. Its **confidence** is a smooth ramp of cos(normal, view) (0 below ``COS_RAMP[0]``, 1 above
   ``COS_RAMP[1]``: grazing texels are smeared and shadowed) times the visibility mask softened
   inside by a blur in UV space (so occlusion edges such as the nose's silhouette blend instead of
   cutting).  Photos are fused with weights confidence × cos² (frontal views win); the fused
   confidence is 1 − Π(1 − confidence).
4. **Albedo** = photo colour / fitted irradiance.  Where confidence is below 1 the rest comes from
   the **mirror** texel (the same point on the other half of the face, via the model's mirror
   vertex map) as far as that one is confident, and then from the **fitted albedo**.  The shaded
   map uses the photo colour and falls back to albedo × irradiance.
5. Texels outside the chart are filled by push–pull (averages of a pyramid), so bilinear lookups
   and mipmaps at the chart's border do not bleed black.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..render import interpolate, rasterize
from .uv import sample_image, sample_texture, uv_to_texel

COS_RAMP = (0.15, 0.45)          # cos(view angle): ~81° → weight 0, ~63° → weight 1
DEPTH_TOLERANCE = 0.02           # of the face's depth extent: ~2.4 mm for a Deep3D face
EDGE_BLUR = 1 / 128              # half-width of the visibility softening, in uv units
IRRADIANCE_FLOOR = 0.05          # below this a texel is too dark to divide by


@dataclass(frozen=True)
class TextureMaps:
    """Baked maps of one face, all (…, S, S) float32 in the ``texture.uv`` image convention.

    albedo: (3, S, S) reflectance in [0, 1] (photo / irradiance, then mirror and fitted albedo).
    shaded: (3, S, S) the face as lit in the photos (photo colour, then albedo × irradiance).
    weight: (S, S) confidence of the photo data in [0, 1]: 1 photo only, 0 fallback only.
    coverage: (S, S) bool, True on texels inside the chart (the rest is gutter fill).
    """

    albedo: torch.Tensor
    shaded: torch.Tensor
    weight: torch.Tensor
    coverage: torch.Tensor


def bake_texture(photo, screen, normals, triangles, uv, albedo, irradiance, size: int = 1024, mirror=None,
                 view=None, texels: UVTexels | None = None) -> TextureMaps:
    """Bake one photo.  photo (3, H, W) float in [0, 1]; screen (N, 3) photo pixels and camera depth;
    normals (N, 3) unit, posed; triangles (F, 3) int64; uv (N, 2); albedo and irradiance (N, 3)
    fitted; mirror (N,) int64 vertex map (``morphable.topology.mirror_vertex_map``) or None;
    view (N, 3) unit directions to the camera or None (+z); texels: ``uv_texels(uv, triangles,
    size)`` when the caller keeps it (the same for every face of a model)."""
    return bake_texture_set([photo], [screen], [normals], triangles, uv, albedo, [irradiance], size, mirror,
                            None if view is None else [view], texels)


def bake_texture_set(photos: Sequence, screens: Sequence, normals: Sequence, triangles, uv, albedo,
                     irradiances: Sequence, size: int = 1024, mirror=None, views: Sequence | None = None,
                     texels: UVTexels | None = None) -> TextureMaps:
    """Bake and fuse several photos of one face (same mesh and albedo, per-photo pose and light)."""
    if not len(photos) == len(screens) == len(normals) == len(irradiances) or not photos:
        raise ValueError("photos, screens, normals and irradiances must be non-empty lists of one length")
    f32 = lambda t: torch.as_tensor(t).detach().to(torch.float32).cpu()  # noqa: E731
    triangles = torch.as_tensor(triangles, dtype=torch.int64).cpu()
    uv, albedo = f32(uv), f32(albedo)
    n = len(uv)
    if texels is None:
        texels = uv_texels(uv, triangles, size)
    elif texels.mask.shape != (size, size):
        raise ValueError(f"texels of a {tuple(texels.mask.shape)} map for a {size}² bake")
    corners, bary = texels.corners, texels.barycentrics
    at = lambda values: torch.einsum("pk,pkc->pc", bary, f32(values)[corners])  # noqa: E731

    fused_albedo, fused_colour = torch.zeros(len(bary), 3), torch.zeros(len(bary), 3)
    fused_weight, missing = torch.zeros(len(bary)), torch.ones(len(bary))
    lighting = torch.zeros(len(bary), 3)
    for k, (photo, screen, normal, irr) in enumerate(zip(photos, screens, normals, irradiances)):
        screen, normal = f32(screen), f32(normal)
        if screen.shape != (n, 3) or normal.shape != (n, 3):
            raise ValueError(f"photo {k}: screen and normals must be ({n}, 3)")
        view = f32(views[k]) if views is not None else torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
        colour, confidence, cos = observe(f32(photo), screen, normal, view, triangles, texels, size)
        irradiance_t = at(irr)
        w = confidence * cos.clamp(min=0) ** 2
        fused_albedo += w[:, None] * colour / irradiance_t.clamp(min=IRRADIANCE_FLOOR)
        fused_colour += w[:, None] * colour
        fused_weight += w
        missing *= 1 - confidence
        lighting += irradiance_t / len(photos)
    seen = fused_weight > 0
    photo_albedo = torch.where(seen[:, None], fused_albedo / fused_weight.clamp(min=1e-12)[:, None], 0.0)
    photo_colour = torch.where(seen[:, None], fused_colour / fused_weight.clamp(min=1e-12)[:, None], 0.0)
    weight = 1 - missing

    fallback = at(albedo)
    if mirror is not None:
        mirror = torch.as_tensor(mirror, dtype=torch.int64).cpu()
        mirrored_uv = torch.einsum("pk,pkc->pc", bary, uv[mirror][corners])
        grid = texels.scatter(torch.cat([weight[:, None] * photo_albedo, weight[:, None]], 1))
        sample = sample_texture(grid, mirrored_uv)
        w_m = sample[:, 3:].clamp(0, 1)
        mirrored = sample[:, :3] / sample[:, 3:].clamp(min=1e-6)
        fallback = w_m * mirrored + (1 - w_m) * fallback
    albedo_t = weight[:, None] * photo_albedo + (1 - weight[:, None]) * fallback
    shaded_t = weight[:, None] * photo_colour + (1 - weight[:, None]) * fallback * lighting
    maps = texels.scatter(torch.cat([albedo_t, shaded_t], 1))
    maps = fill_empty(maps, texels.mask)
    return TextureMaps(albedo=maps[:3].clamp(0, 1), shaded=maps[3:].clamp(0, 1),
                       weight=texels.scatter(weight[:, None])[0], coverage=texels.mask.clone())  # texels may be cached


def render_texture(screen, triangles, uv, texture, size: tuple[int, int], shading=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a textured mesh: screen (N, 3), triangles (F, 3), uv (N, 2), texture (3, S, S); optional
    per-vertex ``shading`` (N, 3) multiplies the texture (albedo map × irradiance).  Returns the
    image (3, H, W) (0 where empty) and the mask (H, W)."""
    screen = torch.as_tensor(screen, dtype=torch.float32)
    triangles = torch.as_tensor(triangles, dtype=torch.int64)
    raster = rasterize(screen, triangles, size)
    attributes = torch.as_tensor(uv, dtype=torch.float32)
    if shading is not None:
        attributes = torch.cat([attributes, torch.as_tensor(shading, dtype=torch.float32)], 1)
    values = interpolate(attributes, raster, triangles)[0]
    mask = raster.mask[0]
    colour = sample_texture(torch.as_tensor(texture, dtype=torch.float32), values[mask][:, :2])
    if shading is not None:
        colour = colour * values[mask][:, 2:]
    image = torch.zeros(3, *mask.shape)
    image[:, mask] = colour.T
    return image, mask


def view_directions(vertices, camera_distance: float) -> torch.Tensor:
    """(N, 3) unit directions from posed model-space vertices to the camera at (0, 0, distance)."""
    vertices = torch.as_tensor(vertices, dtype=torch.float32)
    return F.normalize(torch.tensor([0.0, 0.0, camera_distance]) - vertices, dim=-1)


# -- pieces ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UVTexels:
    """The texels inside the chart: mask (S, S), their triangles' corners (P, 3) and barycentrics (P, 3)."""

    mask: torch.Tensor
    corners: torch.Tensor
    barycentrics: torch.Tensor

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(P, C) per texel -> (C, S, S) map, 0 outside the chart."""
        out = values.new_zeros(values.shape[1], *self.mask.shape)
        out[:, self.mask] = values.T
        return out


def uv_texels(uv: torch.Tensor, triangles: torch.Tensor, size: int) -> UVTexels:
    """Rasterise the mesh in UV space (constant depth: the barycentrics are affine on the surface)."""
    flat = torch.cat([uv_to_texel(uv.to(torch.float64), size), torch.ones(len(uv), 1, dtype=torch.float64)], 1)
    raster = rasterize(flat, triangles, (size, size))
    mask = raster.mask[0]
    return UVTexels(mask, triangles[raster.triangle_id[0][mask]], raster.barycentrics[0][mask].to(torch.float32))


def observe(photo, screen, normals, view, triangles, texels: UVTexels, size: int):
    """Per texel of the chart: photo colour (P, 3), confidence (P,) and cos(normal, view) (P,)."""
    corners, bary = texels.corners, texels.barycentrics
    height, width = photo.shape[-2:]
    corner = screen[corners]                                       # (P, 3, 3): x, y, depth
    homogeneous = bary * corner[..., 2]                            # b_k z_k
    depth = homogeneous.sum(1)
    pixel = torch.einsum("pk,pkc->pc", homogeneous, corner[..., :2]) / depth[:, None]
    normal = F.normalize(torch.einsum("pk,pkc->pc", bary, normals[corners]), dim=-1)
    ray = F.normalize(torch.einsum("pk,pkc->pc", bary, view[corners]), dim=-1)
    cos = (normal * ray).sum(1)

    buffer = rasterize(screen, triangles, (height, width)).depth[0]
    col = pixel[:, 0].floor().long()
    row = pixel[:, 1].floor().long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    nearest = buffer[row.clamp(0, height - 1), col.clamp(0, width - 1)]
    extent = float(screen[:, 2].max() - screen[:, 2].min())
    visible = inside & (depth <= nearest + DEPTH_TOLERANCE * extent) & (cos > 0)

    ramp = ((cos - COS_RAMP[0]) / (COS_RAMP[1] - COS_RAMP[0])).clamp(0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)                            # smoothstep
    soft = soften(texels.scatter(visible[:, None].float())[0], texels.mask, max(1, round(EDGE_BLUR * size)))
    confidence = visible.float() * soft[texels.mask] * ramp
    colour = sample_image(photo, pixel)
    return colour, confidence, cos


def soften(visible: torch.Tensor, coverage: torch.Tensor, radius: int) -> torch.Tensor:
    """(S, S) 0/1 map -> (S, S) in [0, 1]: 1 deep inside the visible region, falling to 0 at its edge
    (the fraction of visible texels among chart texels in a (2·radius + 1)² box clipped at the map's
    edges, rescaled from [1/2, 1]).  Box sums by cumulative sums in integers: exact, and O(S²)
    whatever the radius (torch's avg_pool2d took 0.13 s per 1024² map)."""
    counted = box_sums(torch.stack([visible.round(), coverage.to(visible.dtype)]).to(torch.int32), radius)
    fraction = (counted[0] / counted[1].clamp(min=1)).to(visible.dtype)  # no chart texel: none visible
    return (2 * fraction - 1).clamp(0, 1)


def box_sums(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """(..., H, W) integer maps -> int32 sums over the (2·radius + 1)² box about each pixel,
    clipped at the edges: along each axis, the running sum ``R`` at ``min(i + r, n - 1)`` minus
    ``R`` at ``i - r - 1`` (0 before the start)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    for dim in (maps.ndim - 2, maps.ndim - 1):
        n, r = maps.shape[dim], min(radius, maps.shape[dim] - 1)
        running = maps.cumsum(dim, dtype=torch.int32)
        last = running.narrow(dim, n - 1, 1)
        high = torch.cat([running.narrow(dim, r, n - r)] + [last] * r, dim)
        low = torch.cat([torch.zeros_like(running.narrow(dim, 0, min(r + 1, n))),
                         running.narrow(dim, 0, n - min(r + 1, n))], dim)
        maps = high - low
    return maps


def fill_empty(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Push–pull: fill texels outside ``mask`` (S, S) from averages of ever coarser levels."""
    if mask.all() or not mask.any():
        return image
    height, width = mask.shape
    weight = mask.to(image.dtype)[None]
    pad = (0, width % 2, 0, height % 2)                       # odd sizes: pad with empty texels
    pooled = lambda t: 4 * F.avg_pool2d(F.pad(t, pad)[None], 2)[0]  # noqa: E731  (sums of 2 x 2 blocks)
    coarse_w = pooled(weight)
    coarse = pooled(image * weight) / coarse_w.clamp(min=1e-12)
    coarse = fill_empty(coarse, coarse_w[0] > 0)
    up = F.interpolate(coarse[None], scale_factor=2, mode="bilinear", align_corners=False)[0][:, :height, :width]
    return torch.where(mask[None], image, up)
