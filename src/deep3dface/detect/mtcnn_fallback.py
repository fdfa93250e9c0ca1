"""MTCNN's fallback pass (ours, not the reference's): turned, bordered views of photos where the
reference cascade finds nothing, and the checks that keep it from inventing faces.

Why.  The reference cascade misses faces that are strongly rolled (> ~35 deg), in near profile, or
so large that the frame cuts them (AFLW2000-3D dev: 17 of 500).  Only for the images where the
first pass finds nothing, the cascade runs once more on all *views* of those images in one batch:
each view is the photo turned by an angle (0 included) and placed on a black canvas with a border
(P-Net's windows cannot reach past the image edge; the border lets a face cut by the frame sit
inside a window, as the crops of the later stages are padded black anyway), with somewhat lower
thresholds.  Boxes and points are mapped back to the photo and the views' faces merged by votes.

Keeping it honest.  Lower thresholds on seven views examine many more windows than the first pass,
so the pass also finds "faces" in hands, fences and hair.  ``min_face_fraction``: the pass looks only
for faces of at least that fraction of the photo's shorter side, by dropping the finest levels of
the reference's pyramid (the other levels, and so the larger faces, stay exactly as they were).
Why: the faces the first pass misses for roll, profile or framing are the photo's subject, not a
small face in the background, while most windows, and so most chances of a false face, are at the
fine levels.  It also makes the pass several times cheaper.
``max_face_fraction``: a face box (brow to chin) nearly as large as the photo leaves no room for the
head around it, so no whole face is shown; the border is there for faces cut by an edge, not for
faces larger than the photo (AFLW2000-3D's annotated faces span 31-63 % of the photo's side; the
pass's one box above 0.9 of it, image00731, covers the photo and misses the face).  Measured on the AFLW2000-3D dev photos
(benchmarks/detect_accuracy.py): with 0.1, wrong top faces among the photos only this pass finds
drop from 2 to 0 and it finds one face more; see the README of the benchmark numbers.

Where no face can be kept, nothing runs: a photo whose shorter side is below ``min_face_size`` /
``max_face_fraction`` (22 px by default) has no face size both sought and kept, so it gets no views
(a random 2000 x 20 image spent 4.8 s on seven 3000 x 1020 views, mostly black border, to find
nothing it could have kept; now 0.02 s, through ``Reconstructor.reconstruct``, on 2 busy cores).

Long, narrow photos (longer side above ``max_aspect`` x the shorter) are cut into overlapping
``segments`` of that shape, and each segment gets the views a photo gets.  Why: a view's canvas
grows with the square of the photo's longer side (the border is a fraction of it, and a turned
strip's canvas is its diagonal's square) while the faces kept grow only with the shorter side: a
random 4000 x 40 image made 125 M pixels of views and 91 M of P-Net input (28 s) for faces of
20-36 px; in 25 segments, 10 M and 7 M (1.3 s).  Segments overlap by more than the largest face kept, and each keeps only the faces whose box centre lies in its own part of
the overlap (half-way), so every face the pass may keep lies whole in the one segment that keeps
it, once.  Photos within ``max_aspect`` (every usual photo format, and the benchmark's background
strips, up to 4.5) are one segment: their views, and faces, are exactly what they were.

Large photos are shrunk first.  P-Net looks at a view at a scale of at most 12 / (smallest face
sought), R-Net and O-Net at 24- and 48-pixel crops of faces at least that large; yet the views, and
their float64 summed-area tables (resample.py), were made at the photo's full resolution: a random
4000 x 3000 image (a 12-megapixel photo with no face) made 274 M pixels of views and 6.6 GB of
tables to look for faces of at least 300 px (``Reconstructor.reconstruct``: 10.2 GB peak memory,
9.6 GB above what it held before, 43-84 s; 2000 x 1500: 2.5 GB above, 6.6-13 s).  Now a photo whose
smallest face sought is at least twice ``view_face_size`` (40 px) is shrunk by the largest whole
factor that keeps that face at least 40 px (``reduction``: block means, ``shrink``; a shorter side
from 800 px on), its views made from the shrunk photo and its faces scaled back, exactly in corner
coordinates (pixel x of the shrunk photo spans [kx, kx + k] of the photo).  4000 x 3000 -> shrunk by
7, views of a 572 x 429 photo: 1.9 s, 0.76 GB above (MTCNN's first pass alone peaks at 0.5 GB
above); 2000 x 1500 -> by 3: 0.6 s, 0.41 GB above.  The faces of photos below 800 px (AFLW's,
450 px, and the benchmark's strips) are exactly what they were (detect_accuracy.py: byte-identical
--details).  The 17 AFLW photos the first pass misses, upscaled 3 and 4 times (bicubic), now give
the faces of the photo itself: 16 of 17 the same outcome as at 450 px (the 17th, image00497, gets
a wrong face from the first pass at either size), top-face points within a median 0.2 % (x3) and
0.9 % (x4) of the eye distance; at full resolution 12 and 11 of 17 had the outcome of the 450 px
photo (faces found 12 and 15, right ones 10 and 13: such photos are borderline either way),
points a median 20 % and 9 % of the eye distance off.  Upright AFLW photos turned by 90 degrees
(24, |yaw| < 30) and upscaled 4 times: 24 right top faces with either, NME5 11.5 % shrunk, 17.4 %
at full resolution.

Measured and not used: a re-check by O-Net of each face cut out upright (turned by its eye line).
Real faces in near profile score as low there as false ones (AFLW image00460 0.14, image00722
0.24, image00451 0.44; false faces in background strips 0.01-0.53), and five-point agreement
between the two framings does not separate them either; nor does agreement between views (most
real faces the pass finds are found in one view only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from deep3dface.detect.nms import batched_nms, pairwise_overlap
from deep3dface.detect.types import Detection


@dataclass(frozen=True)
class FallbackConfig:
    """The views of the second pass and the checks on its faces (see the module docstring).
    Measured on the AFLW2000-3D dev photos (benchmarks/detect_accuracy.py): each of border,
    rotations and lower thresholds recovers faces the others do not."""

    #: view angles in degrees (a view turned by a shows a face rolled by -a upright); MTCNN
    #: tolerates about +-35 deg of roll, so steps of 30 give every roll up to 105 deg a view where
    #: the face is within 15 deg of upright, and neighbouring views that confirm it
    angles: tuple[float, ...] = (0.0, -30.0, 30.0, -60.0, 60.0, -90.0, 90.0)
    border: float = 0.25                 # black border on each side, fraction of the longer side
    thresholds: tuple[float, float, float] = (0.5, 0.6, 0.6)  # P-, R-, O-Net
    nms: float = 0.3                     # IoU: faces of different views that are one face
    roll_tolerance: float = 25.0         # degrees: two views' faces agree on the face's roll
    min_face_fraction: float = 0.1       # smallest face sought, fraction of the photo's shorter side
    max_face_fraction: float = 0.9       # largest face box kept, fraction of the photo's shorter side
    max_aspect: float = 5.0              # a longer photo is searched in segments of this shape (``segments``)
    #: smallest face sought, in pixels of the views: a photo where it is at least twice this is
    #: shrunk by a whole factor before its views are made (``reduction``)
    view_face_size: float = 40.0

    def __post_init__(self) -> None:
        if not self.max_aspect >= 1:
            raise ValueError(f"max_aspect must be at least 1, got {self.max_aspect}")
        if not self.view_face_size >= 12:
            raise ValueError(f"view_face_size must be at least P-Net's 12 px, got {self.view_face_size}")


@dataclass(frozen=True)
class Segment:
    """A piece of a photo for the fallback's views: pixels [start, stop) along the photo's longer
    side (all of the shorter side), and the part [own_from, own_to) of that side where the centre of
    a face found in it must lie for this segment to keep it."""

    start: int
    stop: int
    own_from: float = -math.inf
    own_to: float = math.inf


def segments(length: int, short: int, cfg: FallbackConfig) -> list[Segment]:
    """A photo's longer side ``length`` cut into overlapping segments of ``max_aspect`` x its shorter
    side ``short`` (one segment, the whole photo, when it is not longer than that).  Consecutive
    segments overlap by more than the largest face kept (``max_face_fraction`` x ``short``) and own
    the faces centred on their side of the overlap's middle, so a kept face centred in a segment's
    own part lies whole in that segment."""
    piece = math.ceil(cfg.max_aspect * short)
    overlap = cfg.max_face_fraction * short + 1  # +1: the starts are rounded down to whole pixels
    if length <= piece or not overlap < piece:
        return [Segment(0, length)]
    count = math.ceil((length - overlap) / (piece - overlap))
    piece = math.ceil(overlap + (length - overlap) / count)  # as short as that many segments allow
    starts = [k * (length - piece) // (count - 1) for k in range(count)]
    cuts = [(later + start + piece) / 2 for start, later in zip(starts, starts[1:])]  # middles of the overlaps
    return [Segment(start, start + piece, lo, hi)
            for start, lo, hi in zip(starts, [-math.inf, *cuts], [*cuts, math.inf])]


def seeks_any_face(image: torch.Tensor, min_face_size: float, cfg: FallbackConfig) -> bool:
    """Whether a face the pass looks for in the (3, H, W) image (at least ``min_face_size`` and
    ``min_face_fraction`` of its shorter side) can also be kept (at most ``max_face_fraction``)."""
    short = min(image.shape[-2:])
    return max(min_face_size, cfg.min_face_fraction * short) <= cfg.max_face_fraction * short


def reduction(min_face: float, cfg: FallbackConfig) -> int:
    """The whole factor by which a photo is shrunk for its views, when the smallest face sought is
    ``min_face`` pixels: the largest that keeps that face at least ``view_face_size`` (1: none)."""
    return max(1, math.floor(min_face / cfg.view_face_size + 1e-9))


def shrink(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The (3, H, W) image shrunk by the whole ``factor``: each output pixel the mean of a factor x
    factor block, the image padded with black to whole blocks at the right and bottom.  Pixel
    (corner) coordinate x of the result is x * factor in the image, exactly."""
    if factor == 1:
        return image
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, -width % factor, 0, -height % factor))
    return F.avg_pool2d(padded[None], factor)[0]


def scaled(faces: list[Detection], factor: int) -> list[Detection]:
    """Faces found in an image shrunk by ``factor`` (``shrink``) -> the image's pixels."""
    if factor == 1:
        return faces
    return [replace(f, box=f.box * factor, landmarks5=f.landmarks5 * factor) for f in faces]


def segment_views(image: torch.Tensor, cfg: FallbackConfig) -> list[tuple[torch.Tensor, torch.Tensor, Segment, int]]:
    """The views of the (3, H, W) image: per segment (``segments``), per angle, the view, the (3, 3)
    float64 matrix mapping its pixels to the photo's, the segment and the angle's index."""
    height, width = image.shape[-2:]
    along_x = width >= height
    out = []
    for segment in segments(max(height, width), min(height, width), cfg):
        piece = image[..., segment.start:segment.stop] if along_x else image[..., segment.start:segment.stop, :]
        shift = torch.eye(3, dtype=torch.float64)
        shift[0 if along_x else 1, 2] = segment.start
        for index, angle in enumerate(cfg.angles):
            view, to_piece = rotated_view(piece, angle, cfg.border)
            out.append((view, shift @ to_piece, segment, index))
    return out


def owned(faces: list[Detection], to_photo: torch.Tensor, segment: Segment, along_x: bool) -> list[Detection]:
    """The faces of a segment's view whose box centre, in the photo, lies in the segment's own part."""
    if segment.own_from == -math.inf and segment.own_to == math.inf:
        return faces
    axis = 0 if along_x else 1
    out = []
    for face in faces:
        centre = to_photo[:2, :2] @ ((face.box[:2] + face.box[2:]).double() / 2) + to_photo[:2, 2]
        if segment.own_from <= float(centre[axis]) < segment.own_to:
            out.append(face)
    return out


def rotated_view(image: torch.Tensor, angle: float, border: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The image (3, H, W) turned by ``angle`` degrees (clockwise on screen: a face rolled by -angle
    becomes upright) on a black canvas that holds all of it plus ``border`` x the longer side on
    each side; bilinear.  Returns the view and the (3, 3) float64 matrix mapping view pixels to
    photo pixels (corner convention both)."""
    height, width = image.shape[-2:]
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    pad = border * max(height, width)
    out_w = math.ceil(abs(cos) * width + abs(sin) * height + 2 * pad - 1e-9)
    out_h = math.ceil(abs(sin) * width + abs(cos) * height + 2 * pad - 1e-9)
    # photo = R^-1 (view - view_centre) + photo_centre, R turning by +angle on screen (y down)
    to_photo = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    to_photo[:2, 2] = torch.tensor([width / 2, height / 2], dtype=torch.float64) - (
        to_photo[:2, :2] @ torch.tensor([out_w / 2, out_h / 2], dtype=torch.float64))
    if angle == 0.0:  # a pure translation by whole pixels: copy, no resampling
        shift_x, shift_y = (out_w - width) // 2, (out_h - height) // 2
        to_photo[:2, 2] = torch.tensor([-shift_x, -shift_y], dtype=torch.float64)
        view = F.pad(image, (shift_x, out_w - width - shift_x, shift_y, out_h - height - shift_y))
        return view, to_photo
    ys = torch.arange(out_h, dtype=torch.float64) + 0.5
    xs = torch.arange(out_w, dtype=torch.float64) + 0.5
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)               # (h, w, 2) view pixels
    photo = centres @ to_photo[:2, :2].T + to_photo[:2, 2]
    grid = photo / torch.tensor([width, height], dtype=torch.float64) * 2 - 1      # align_corners=False
    view = F.grid_sample(image[None], grid[None].to(image), mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]
    return view, to_photo


def view_votes(boxes: torch.Tensor, points: torch.Tensor, scores: torch.Tensor, view: torch.Tensor,
               upright: torch.Tensor, iou: float, roll_tolerance: float,
               image: torch.Tensor | None = None) -> torch.Tensor:
    """Rank the faces found in the views of the fallback pass: photo boxes (N, 4), points (N, 5, 2),
    scores (N,), view (N,) a view id unique across images, upright (N,) cos² of the face's roll in
    its view, image (N,) the photo each comes from (None: one photo).  A face's votes are its score
    times ``upright`` plus the scores of the faces of *other* views of the same photo at the same
    place (IoU > ``iou``) whose eye lines give the same roll in the photo (within ``roll_tolerance``
    degrees).  (Faces of other photos of a batch once voted too, where their boxes overlapped: a
    photo's faces then depended on the batch it came in.)

    Why: O-Net also scores a face turned by 60-90 deg highly (image00311 and 00204 of the AFLW dev
    photos: 0.93 and 0.99), with points then wrong by 30-50 % of the face size; such a view's roll
    agrees with no other view's, while a real face upright in one view is also found, with the same
    roll, in a neighbouring one.  Within such a group the face nearest upright in its view wins: its
    points are the most accurate (MTCNN was trained on upright faces)."""
    eyes = points[:, 1] - points[:, 0]
    roll = torch.atan2(eyes[:, 1], eyes[:, 0])
    turn = torch.remainder(roll[:, None] - roll[None, :] + math.pi, 2 * math.pi) - math.pi
    agree = ((pairwise_overlap(boxes, "iou") > iou) & (turn.abs() < math.radians(roll_tolerance))
             & (view[:, None] != view[None, :]))
    if image is not None:
        agree &= image[:, None] == image[None, :]
    return scores * upright + agree.to(scores.dtype) @ scores


def map_detection(box: torch.Tensor, points: torch.Tensor, to_photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A view's box (4,) and points (5, 2) -> photo pixels.  The points map exactly; a turned box is
    no longer axis-aligned, so the photo box is the square of the view box's size about its mapped
    centre (MTCNN's boxes are near-square; the enclosing box would grow by up to 41 %)."""
    linear, shift = to_photo[:2, :2], to_photo[:2, 2]
    centre = ((box[:2] + box[2:]) / 2) @ linear.T + shift
    half = (box[2:] - box[:2]) / 2
    if abs(float(linear[0, 1])) > 1e-9:  # turned: a square of the mean side
        half = half.mean().expand(2)
    return torch.cat([centre - half, centre + half]), points @ linear.T + shift


#: MTCNN's input normalisation, (v - 127.5) / 128 for v in 0..255, as gain and bias on [0, 1] pixels
NORMALISE = (255.0 / 128.0, -127.5 / 128.0)


def merge_views(view_faces: list[list[Detection]], to_photo: list[torch.Tensor], owner: list[int],
                n_images: int, cfg: FallbackConfig, view_ids: list[int] | None = None) -> list[list[Detection]]:
    """The faces found in the views -> per image, mapped to the photo and merged by votes (most
    first); ``owner`` gives each view's image, ``view_ids`` the view each counts as in the votes
    (default: each its own; the segments of one image at one angle are one view)."""
    boxes, scores, points, image_index, view_index, upright = [], [], [], [], [], []
    view_ids = list(range(len(view_faces))) if view_ids is None else view_ids
    for v, faces, matrix, i in zip(view_ids, view_faces, to_photo, owner):
        for d in faces:
            eyes = d.landmarks5[1] - d.landmarks5[0]
            box, pts = map_detection(d.box.double(), d.landmarks5.double(), matrix)
            boxes.append(box)
            points.append(pts)
            scores.append(d.score)
            image_index.append(i)
            view_index.append(v)
            upright.append(float(eyes[0] / torch.linalg.vector_norm(eyes)) ** 2)  # cos² of roll in view
    out: list[list[Detection]] = [[] for _ in range(n_images)]
    if not boxes:
        return out
    boxes, points = torch.stack(boxes), torch.stack(points)
    scores, image_index = torch.tensor(scores, dtype=torch.float64), torch.tensor(image_index)
    votes = view_votes(boxes, points, scores, torch.tensor(view_index), torch.tensor(upright, dtype=torch.float64),
                       cfg.nms, cfg.roll_tolerance, image_index)
    for k in batched_nms(boxes, votes, image_index, cfg.nms).tolist():  # most votes first
        out[int(image_index[k])].append(Detection(box=boxes[k].float(), score=float(scores[k]),
                                                  landmarks5=points[k].float()))
    return out


def within_size(faces: list[Detection], image: torch.Tensor, cfg: FallbackConfig) -> list[Detection]:
    """The faces whose box's longer side is at most ``max_face_fraction`` of the image's shorter side."""
    limit = cfg.max_face_fraction * min(image.shape[-2:])
    return [f for f in faces if float((f.box[2:] - f.box[:2]).max()) <= limit]
