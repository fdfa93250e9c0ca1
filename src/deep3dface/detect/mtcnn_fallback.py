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

Measured and not used: a re-check by O-Net of each face cut out upright (turned by its eye line).
Real faces in near profile score as low there as false ones (AFLW image00460 0.14, image00722
0.24, image00451 0.44; false faces in background strips 0.01-0.53), and five-point agreement
between the two framings does not separate them either; nor does agreement between views (most
real faces the pass finds are found in one view only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
               upright: torch.Tensor, iou: float, roll_tolerance: float) -> torch.Tensor:
    """Rank the faces found in the views of the fallback pass: photo boxes (N, 4), points (N, 5, 2),
    scores (N,), view (N,) a view id unique across images, upright (N,) cos² of the face's roll in
    its view.  A face's votes are its score times ``upright`` plus the scores of the faces of
    *other* views at the same place (IoU > ``iou``) whose eye lines give the same roll in the photo
    (within ``roll_tolerance`` degrees).

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
                n_images: int, cfg: FallbackConfig) -> list[list[Detection]]:
    """The faces found in the views -> per image, mapped to the photo and merged by votes (most
    first); views are numbered across images, ``owner`` gives each view's image."""
    boxes, scores, points, image_index, view_index, upright = [], [], [], [], [], []
    for v, (faces, matrix, i) in enumerate(zip(view_faces, to_photo, owner)):
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
                       cfg.nms, cfg.roll_tolerance)
    for k in batched_nms(boxes, votes, image_index, cfg.nms).tolist():  # most votes first
        out[int(image_index[k])].append(Detection(box=boxes[k].float(), score=float(scores[k]),
                                                  landmarks5=points[k].float()))
    return out


def within_size(faces: list[Detection], image: torch.Tensor, cfg: FallbackConfig) -> list[Detection]:
    """The faces whose box's longer side is at most ``max_face_fraction`` of the image's shorter side."""
    limit = cfg.max_face_fraction * min(image.shape[-2:])
    return [f for f in faces if float((f.box[2:] - f.box[:2]).max()) <= limit]
