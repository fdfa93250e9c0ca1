"""Deep3D's face alignment: 5 landmarks -> scale and shift -> a 224x224 crop, and its Alignment.

This reproduces ``align_img`` of Deep3DFaceRecon_pytorch (util/preprocess.py: ``POS`` and
``resize_n_crop_img``) number for number and pixel for pixel:

1. POS: least squares for an affine camera taking the 3D template ``LM3D_STD`` to the 5 points;
   ``s = 102 / mean(|row 1|, |row 2|)`` and t = the camera's translation;
2. resize the whole photo with Pillow's BICUBIC to ``w = int32(W s), h = int32(H s)``;
3. crop the box ``left = int32(w/2 - 112 + (tx - W/2) s)``, ``up = int32(h/2 - 112 + (H/2 - ty) s)``
   (int32 truncates toward zero; it does not floor), black outside the resized photo.

Conventions.  The public API uses the project's pixels (origin at the top-left corner of the top-
left pixel, y down) for photo and crop alike.  The reference measures y *up* with pixel centres at
integers (``y_up = H - 1 - row``); ``_to_reference`` converts, here only.

Two maps from photo to crop, and why ``Alignment.matrix`` is the first:

* **the pixels' map** (``matrix``): Pillow's resize sends output pixel centre i + 0.5 to input
  (i + 0.5) W / w, so in corner coordinates the resize is exactly a scale by w/W (and h/H), and the
  crop a shift by (left, up).  This is what the crop image shows: a fitted face mapped back through
  ``inverse`` lands on the photo's pixels, and the photo camera K_photo = A^-1 K_crop is exact.
* **the reference's landmark formula** (``reference_matrix``): ``lm5_aligned = (p - t + (W/2, H/2)) s
  - (w/2 - 112, h/2 - 112)`` uses the untruncated scale s and crop offset, in centre coordinates.
  It disagrees with the crop's pixels by up to 1.7 px (0.7 px on average in y) on the 25
  conformance photos: s != w/W after truncation, the crop box is truncated but the formula's
  offset is not, and the half-pixel shift is applied at scale s.  It is kept to reproduce the
  reference's numbers (``lm5_aligned``, Deep3D's ``trans_params``), not for geometry.

``LM3D_STD`` comes from the reference's ``BFM/similarity_Lm3D_all.mat`` through ``load_lm3d``: the
means of the 68-point template's eye corners (1-based #37/#40, #43/#46), the nose tip #31 and the
mouth corners #49, #55, re-centred; float32 values as the reference loads them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from deep3dface.io.images import ImageSource, read_image_uint8, to_uint8

CROP_SIZE = 224
RESCALE = 102.0  # the reference's ``rescale_factor``: POS scale -> crop pixels

#: The reference's 5-point 3D template (left eye, right eye, nose tip, left and right mouth corner;
#: "left" = image left), model units, y up.  From BFM/similarity_Lm3D_all.mat via load_lm3d.
LM3D_STD = np.array([
    [-0.31148657, 0.29036078, 0.13377953],
    [0.30979887, 0.28972036, 0.13179526],
    [0.0032534988, -0.046179324, 0.55244243],
    [-0.25216928, -0.38133916, 0.22405732],
    [0.2484662, -0.38128236, 0.22235769],
], dtype=np.float32)


# -- the reference's frame (y up, pixel centres at integers) -------------------------------------
def _to_reference(points: np.ndarray, height: int) -> np.ndarray:
    """Corner-origin, y-down pixels -> the reference's centre-origin, y-up pixels."""
    return np.stack([points[..., 0] - 0.5, height - 0.5 - points[..., 1]], axis=-1)


def pos(points_ref: np.ndarray, template: np.ndarray = LM3D_STD) -> tuple[np.ndarray, float]:
    """The reference's POS: (t (2,), POS scale) of the affine camera taking ``template`` (5, 3)
    onto ``points_ref`` (5, 2), in the reference's frame."""
    n = template.shape[0]
    A = np.zeros((2 * n, 8))
    A[0::2, 0:3] = template
    A[0::2, 3] = 1
    A[1::2, 4:7] = template
    A[1::2, 7] = 1
    k = np.linalg.lstsq(A, np.asarray(points_ref, dtype=np.float64).reshape(2 * n), rcond=None)[0]
    scale = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    return np.array([k[3], k[7]]), float(scale)


@dataclass(frozen=True, eq=False)
class Alignment:
    """Where a 224x224 crop sits in its photo.

    matrix:       (3, 3) float64: photo pixel -> crop pixel, homogeneous, corner convention, exact
                  for the crop's pixels (scale w/W, h/H, then minus the crop box's corner)
    crop_size:    224
    scale:        s, the reference's scale (photo -> crop, before truncation)
    trans_params: (5,) float64 ``[W, H, s, tx, ty]`` as the reference returns them (t in its frame)
    resized_size: (w, h) the photo was resized to;  crop_box: (left, up, right, below) in it
    """

    matrix: torch.Tensor
    scale: float
    trans_params: torch.Tensor
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    crop_size: int = CROP_SIZE

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.trans_params[0]), int(self.trans_params[1])

    @property
    def inverse(self) -> torch.Tensor:
        """(3, 3) float64: crop pixel -> photo pixel."""
        return torch.linalg.inv(self.matrix)

    @property
    def reference_matrix(self) -> torch.Tensor:
        """(3, 3) float64: the reference's landmark formula (scale s, untruncated offset) in corner
        y-down pixels; maps photo landmarks to Deep3D's ``lm5_aligned`` (see the module notes)."""
        W, H, s, tx, ty = (float(v) for v in self.trans_params)
        w, h = self.resized_size
        half = self.crop_size / 2
        # reference: x' = (x - tx + W/2) s - (w/2 - half), y'_up = (y_up - ty + H/2) s - (h/2 - half)
        ox = (W / 2 - tx) * s - (w / 2 - half)
        oy = (H / 2 - ty) * s - (h / 2 - half)
        # with x = X - 0.5, y_up = H - 0.5 - Y, X' = x' + 0.5, Y' = crop - 0.5 - y'_up
        return torch.tensor([[s, 0.0, ox + 0.5 - 0.5 * s],
                             [0.0, s, self.crop_size - 0.5 - oy - (H - 0.5) * s],
                             [0.0, 0.0, 1.0]], dtype=torch.float64)

    @staticmethod
    def stack(alignments: "list[Alignment]") -> torch.Tensor:
        """(B, 3, 3) matrices of several alignments, e.g. for ``Camera.for_photo``."""
        return torch.stack([a.matrix for a in alignments])

    def to_crop(self, points):
        """Photo pixels (..., 2) -> crop pixels; numpy in, numpy out; torch in, torch out."""
        return apply_matrix(self.matrix, points)

    def to_photo(self, points):
        """Crop pixels (..., 2) -> photo pixels."""
        return apply_matrix(self.inverse, points)


def apply_matrix(matrix: torch.Tensor, points):
    """A (3, 3) affine pixel map (last row 0, 0, 1) applied to points (..., 2); numpy in, numpy out."""
    as_numpy = not isinstance(points, torch.Tensor)
    p = torch.as_tensor(np.asarray(points, dtype=np.float64) if as_numpy else points)
    m = matrix.to(dtype=p.dtype if p.is_floating_point() else torch.float64, device=p.device)
    p = p.to(m.dtype)
    out = p @ m[:2, :2].T + m[:2, 2]  # affine: the last row is (0, 0, 1)
    return out.numpy() if as_numpy else out


def alignment_for(landmarks5, image_size: tuple[int, int], crop_size: int = CROP_SIZE) -> Alignment:
    """The Alignment for 5 landmarks (5, 2) (corner y-down pixels) in a photo of (W, H) pixels."""
    W, H = image_size
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2) or not np.isfinite(lm).all():
        raise ValueError(f"alignment needs 5 finite landmarks (5, 2), got shape {lm.shape}")
    t, pos_scale = pos(_to_reference(lm, H))
    s = RESCALE / pos_scale
    # the reference's int32 casts, with its float64 arithmetic
    w, h = int(np.int32(W * s)), int(np.int32(H * s))
    left = int(np.int32(w / 2 - crop_size / 2 + float((t[0] - W / 2) * s)))
    up = int(np.int32(h / 2 - crop_size / 2 + float((H / 2 - t[1]) * s)))
    matrix = torch.tensor([[w / W, 0.0, -left], [0.0, h / H, -up], [0.0, 0.0, 1.0]], dtype=torch.float64)
    trans = torch.tensor([W, H, s, t[0], t[1]], dtype=torch.float64)
    return Alignment(matrix, s, trans, (w, h), (left, up, left + crop_size, up + crop_size), crop_size)


#: Above this many pixels the resized photo is not built: only the crop's part of it is resampled
#: (Pillow's ``box``), which differs from the reference by a few grey levels on some pixels.  A small
#: face in a large photo (20 px between the eyes in 12 MP) would otherwise resize to ~120 MP.
MAX_RESIZED_PIXELS = 40_000_000


def crop_image(image: Image.Image, alignment: Alignment) -> Image.Image:
    """The reference's resize-then-crop (Pillow BICUBIC, black outside), pixel for pixel."""
    (w, h), box = alignment.resized_size, alignment.crop_box
    if w * h <= MAX_RESIZED_PIXELS:
        return image.resize((w, h), resample=Image.BICUBIC).crop(box)
    W, H = image.size
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
    out = Image.new("RGB", (box[2] - box[0], box[3] - box[1]))
    if x1 > x0 and y1 > y0:
        source = (x0 * W / w, y0 * H / h, x1 * W / w, y1 * H / h)  # the same region, in the photo
        out.paste(image.resize((x1 - x0, y1 - y0), Image.BICUBIC, box=source), (x0 - box[0], y0 - box[1]))
    return out


def align(image: ImageSource | np.ndarray | torch.Tensor, landmarks5):
    """Crop a face as Deep3D does.

    image:      a photo: (3, H, W) float tensor in [0, 1], (H, W, 3) uint8 array, PIL image or file
    landmarks5: (5, 2) in the photo, corner y-down pixels, order of ``detect.types.LANDMARKS5``
    returns     (crop, alignment, landmarks5 in the crop): the crop is a (3, 224, 224) float32 tensor
                for a tensor input, else a (224, 224, 3) uint8 array
    """
    as_tensor = isinstance(image, torch.Tensor)
    pil = _to_pil(image)
    alignment = alignment_for(landmarks5, pil.size)
    crop = np.asarray(crop_image(pil, alignment), dtype=np.uint8)
    lm_crop = alignment.to_crop(np.asarray(landmarks5, dtype=np.float64))
    if as_tensor:
        return torch.from_numpy(crop.transpose(2, 0, 1).copy()).float() / 255.0, alignment, torch.from_numpy(lm_crop)
    return crop, alignment, lm_crop


def align_batch(images, landmarks5):
    """``align`` over a list of photos and their (5, 2) landmarks: (crops stacked, alignments, (B, 5, 2))."""
    results = [align(image, lm) for image, lm in zip(images, landmarks5, strict=True)]
    crops, alignments, points = zip(*results)
    stack = torch.stack if isinstance(crops[0], torch.Tensor) else np.stack
    return stack(crops), list(alignments), stack(points)


def _to_pil(image) -> Image.Image:
    if isinstance(image, torch.Tensor):
        return Image.fromarray(to_uint8(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return Image.fromarray(image)
    return Image.fromarray(read_image_uint8(image))
