"""Area resampling (OpenCV's INTER_AREA for shrinking) through summed-area tables.

MTCNN was trained on images shrunk with area averaging: an output pixel is the mean of the input
over its footprint, counting partly covered input pixels by the covered fraction.  With the image
seen as piecewise constant, its integral S(y, x) = ∫∫ image over [0, y] x [0, x] is *exactly*
bilinear inside every pixel cell, so bilinear interpolation of the summed-area table at the corners
of a footprint gives the exact footprint integral.  Every resize the detector needs (pyramid levels
and hundreds of box crops of any size) then costs O(output pixels), whatever the input size.
Outside the image the integral does not grow, so crops are padded with black, as MTCNN pads them.

Coordinates are continuous, origin at the top-left corner of the top-left pixel.  Tables are
float64: a float32 running sum over a photo loses whole grey levels.

For footprints smaller than a pixel (enlarging) this is the box-filtered image, where OpenCV
switches to bilinear interpolation; MTCNN only enlarges faces smaller than its 24/48-pixel crops.

Two implementations of the same formulas: numba loops for CPU tensors (fast: no temporaries, no
Python loop over boxes), and torch gathers for any device (used on GPUs, and as the tests' oracle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from ..threads import numba_follows_torch


# -- torch (any device) -------------------------------------------------------------------------
def summed_area_table(image: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H + 1, W + 1) float64 with S[..., i, j] = sum of image[..., :i, :j]."""
    s = image.to(torch.float64).cumsum(-1).cumsum(-2)
    return torch.nn.functional.pad(s, (1, 0, 1, 0))


def _cells(edges: torch.Tensor, size: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell index and fraction of continuous coordinates clamped to [0, size]."""
    edges = torch.minimum(edges.clamp(min=0), torch.as_tensor(size, dtype=edges.dtype, device=edges.device))
    index = torch.minimum(edges.floor(), torch.as_tensor(size, dtype=edges.dtype, device=edges.device) - 1)
    return index.long(), edges - index


def _sample(flat: torch.Tensor, base: torch.Tensor, stride: torch.Tensor, iy, fy, ix, fx) -> torch.Tensor:
    """Bilinear samples of tables stored in ``flat`` (C, total) at rows iy+fy (N, m), cols ix+fx (N, n)."""
    index = base[:, None, None] + iy[:, :, None] * stride[:, None, None] + ix[:, None, :]
    n, m, k = index.shape

    def at(offset):
        return flat[:, (index + offset).reshape(-1)].reshape(-1, n, m, k)

    fy, fx = fy[:, :, None], fx[:, None, :]
    s1 = stride[:, None, None]
    top = at(0) * (1 - fx) + at(1) * fx
    bottom = at(s1) * (1 - fx) + at(s1 + 1) * fx
    return top * (1 - fy) + bottom * fy  # (C, N, m, k)


# -- numba (CPU) ---------------------------------------------------------------------------------
@numba.njit(cache=True, parallel=True)
def _table_nb(img, out):  # pragma: no cover - compiled
    """out (C, H+1, W+1) float64 = summed-area table of img (C, H, W)."""
    C, H, W = img.shape
    # Pass 1, prefix sums along rows: four rows per task, so that four independent running sums
    # hide the latency of the additions.  Pass 2, sums down columns in blocks that vectorise.
    groups = (H + 3) // 4
    for k in numba.prange(C * groups):
        c, y0 = k // groups, (k % groups) * 4
        out[c, y0 + 1:min(y0 + 5, H + 1), 0] = 0.0
        if y0 + 4 <= H:
            r0 = r1 = r2 = r3 = 0.0
            for x in range(W):
                r0 += img[c, y0, x]
                r1 += img[c, y0 + 1, x]
                r2 += img[c, y0 + 2, x]
                r3 += img[c, y0 + 3, x]
                out[c, y0 + 1, x + 1] = r0
                out[c, y0 + 2, x + 1] = r1
                out[c, y0 + 3, x + 1] = r2
                out[c, y0 + 4, x + 1] = r3
        else:
            for y in range(y0, H):
                run = 0.0
                for x in range(W):
                    run += img[c, y, x]
                    out[c, y + 1, x + 1] = run
    block = 256
    nblocks = (W + block) // block
    for k in numba.prange(C * nblocks):
        c, x0 = k // nblocks, (k % nblocks) * block
        x1 = min(x0 + block, W + 1)
        out[c, 0, x0:x1] = 0.0
        for y in range(1, H + 1):
            for x in range(x0, x1):
                out[c, y, x] += out[c, y - 1, x]


@numba.njit(cache=True, inline="always")
def _cell(e, size):  # pragma: no cover - compiled
    e = min(max(e, 0.0), float(size))
    i = min(int(np.floor(e)), size - 1)
    return i, e - i


@numba.njit(cache=True)
def _box_to_grid(flat, c, o, h, w, y0, y1, x0, x1, n_out_h, n_out_w, gain, bias, out):  # pragma: no cover
    """out[i, j] = gain x (mean of the image over output pixel (i, j)'s footprint in box [x0,x1]x[y0,y1])
    + bias."""
    stride = w + 1
    grid = np.empty((n_out_h + 1, n_out_w + 1))
    ixs = np.empty(n_out_w + 1, dtype=np.int64)
    fxs = np.empty(n_out_w + 1)
    for j in range(n_out_w + 1):
        ixs[j], fxs[j] = _cell(x0 + (x1 - x0) * j / n_out_w, w)
    for i in range(n_out_h + 1):
        iy, fy = _cell(y0 + (y1 - y0) * i / n_out_h, h)
        r0 = o + iy * stride
        r1 = r0 + stride
        for j in range(n_out_w + 1):
            ix, fx = ixs[j], fxs[j]
            top = flat[c, r0 + ix] * (1 - fx) + flat[c, r0 + ix + 1] * fx
            bottom = flat[c, r1 + ix] * (1 - fx) + flat[c, r1 + ix + 1] * fx
            grid[i, j] = top * (1 - fy) + bottom * fy
    inv_area = gain / max((x1 - x0) * (y1 - y0) / (n_out_h * n_out_w), 1e-12)
    for i in range(n_out_h):
        for j in range(n_out_w):
            out[i, j] = (grid[i + 1, j + 1] - grid[i, j + 1] - grid[i + 1, j] + grid[i, j]) * inv_area + bias


@numba.njit(cache=True, parallel=True)
def _crops_nb(flat, offsets, heights, widths, image_index, boxes, size, gain, bias, out):  # pragma: no cover
    C = flat.shape[0]
    for k in numba.prange(boxes.shape[0] * C):
        n, c = k // C, k % C
        b = image_index[n]
        _box_to_grid(flat, c, offsets[b], heights[b], widths[b], boxes[n, 1], boxes[n, 3], boxes[n, 0],
                     boxes[n, 2], size, size, gain, bias, out[n, c])


@numba.njit(cache=True, parallel=True)
def _resize_nb(flat, o, h, w, gain, bias, out):  # pragma: no cover
    for c in numba.prange(out.shape[0]):
        _box_to_grid(flat, c, o, h, w, 0.0, float(h), 0.0, float(w), out.shape[1], out.shape[2], gain, bias, out[c])


# -- public ----------------------------------------------------------------------------------------
def _use_numba(tensor: torch.Tensor) -> bool:
    """The numba kernels serve CPU tensors; everything else takes the torch path."""
    return tensor.device.type == "cpu"


@dataclass(frozen=True)
class SummedAreaTables:
    """Summed-area tables of B images (sizes may differ), flattened into one (C, total) float64 tensor.

    Image b's table has (H_b + 1) x (W_b + 1) entries starting at ``offsets[b]``.
    """

    flat: torch.Tensor      # (C, total) float64
    offsets: torch.Tensor   # (B,) int64
    heights: torch.Tensor   # (B,) int64
    widths: torch.Tensor    # (B,) int64

    @classmethod
    def from_images(cls, images: list[torch.Tensor]) -> "SummedAreaTables":
        """Tables of (C, H, W) images, all on one device."""
        dev = images[0].device
        heights = torch.tensor([im.shape[-2] for im in images], device=dev)
        widths = torch.tensor([im.shape[-1] for im in images], device=dev)
        sizes = (heights + 1) * (widths + 1)
        offsets = torch.cumsum(sizes, 0) - sizes
        if _use_numba(images[0]):
            C = images[0].shape[0]
            flat = torch.empty(C, int(sizes.sum()), dtype=torch.float64)
            with numba_follows_torch():
                for im, o, size in zip(images, offsets.tolist(), sizes.tolist()):
                    table = flat.numpy()[:, o:o + size].reshape(C, im.shape[-2] + 1, im.shape[-1] + 1)  # a view
                    _table_nb(im.to(torch.float32).contiguous().numpy(), table)
        else:
            flat = torch.cat([summed_area_table(im).flatten(1) for im in images], dim=1)
        return cls(flat, offsets, heights, widths)

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def resize(self, image: int, size: tuple[int, int], gain: float = 1.0, bias: float = 0.0) -> torch.Tensor:
        """Image ``image`` area-resized to ``size`` = (h, w): float32 (C, h, w), times gain plus bias
        (a network's input normalisation, folded into the one pass over the pixels)."""
        h, w = size
        H, W, o = int(self.heights[image]), int(self.widths[image]), int(self.offsets[image])
        if _use_numba(self.flat):
            out = np.empty((self.flat.shape[0], h, w), dtype=np.float32)
            with numba_follows_torch():
                _resize_nb(self.flat.numpy(), o, H, W, gain, bias, out)
            return torch.from_numpy(out)
        box = torch.tensor([[0.0, 0.0, W, H]], dtype=torch.float64, device=self.device)
        index = torch.tensor([image], device=self.device)
        return self._crops_torch(index, box, (h, w))[0] * gain + bias

    def crops(self, image_index: torch.Tensor, boxes: torch.Tensor, size: int, gain: float = 1.0,
              bias: float = 0.0) -> torch.Tensor:
        """Boxes (N, 4) ``x0, y0, x1, y1`` of images ``image_index`` (N,), each area-resized to
        size x size (black outside the image): float32 (N, C, size, size), times gain plus bias."""
        if _use_numba(self.flat):
            out = np.empty((boxes.shape[0], self.flat.shape[0], size, size), dtype=np.float32)
            if boxes.shape[0]:
                with numba_follows_torch():
                    _crops_nb(self.flat.numpy(), self.offsets.numpy(), self.heights.numpy(), self.widths.numpy(),
                              image_index.numpy(), boxes.to(torch.float64).contiguous().numpy(), size, gain, bias,
                              out)
            return torch.from_numpy(out)
        return self._crops_torch(image_index, boxes, (size, size)) * gain + bias

    def _crops_torch(self, image_index, boxes, size: tuple[int, int]) -> torch.Tensor:
        """The same, in torch ops on any device (also the tests' oracle for the numba kernels)."""
        boxes = boxes.to(torch.float64)
        (h, w), dev = size, boxes.device
        ty = torch.linspace(0, 1, h + 1, dtype=torch.float64, device=dev)
        tx = torch.linspace(0, 1, w + 1, dtype=torch.float64, device=dev)
        heights, widths = self.heights[image_index], self.widths[image_index]
        iy, fy = _cells(boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * ty, heights[:, None].double())
        ix, fx = _cells(boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * tx, widths[:, None].double())
        s = _sample(self.flat, self.offsets[image_index], widths + 1, iy, fy, ix, fx)
        cells = s.diff(dim=-1).diff(dim=-2)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (h * w)).clamp(min=1e-12)
        return (cells / area[None, :, None, None]).to(torch.float32).permute(1, 0, 2, 3).contiguous()
