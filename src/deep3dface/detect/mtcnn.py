"""MTCNN face detection (Zhang et al. 2016): image pyramid -> P-Net -> R-Net -> O-Net, batched.

The cascade reproduces the reference implementations (Zhang's MATLAB code and its ports in
davidsandberg/facenet and facenet-pytorch): same pyramid, thresholds, box
regression, squaring, truncation of boxes to integers before cropping, and the same NMS stages
(torchvision-style IoU, and intersection-over-minimum at the end).  What differs is speed only:
every stage runs on all boxes of all images at once, and crops are area-resampled through summed-
area tables (see resample.py) instead of one OpenCV call per box.

Coordinates.  Inside the cascade boxes follow the reference: ``[x1, y1, x2, y2]`` are 1-based,
inclusive pixel indices (a box covers pixels x1..x2, width x2 - x1 + 1).  In the project's corner
convention (origin at the top-left corner of the top-left pixel) such a box spans
``[x1 - 1, x2] x [y1 - 1, y2]`` and that is exactly the region cropped for R-Net and O-Net.  O-Net's
landmark formula ``p * (x2 - x1 + 1) + x1 - 1`` places a fraction p of that region, so its output is
already in corner coordinates.  Measured without annotations (benchmarks/detect_accuracy.py): a
landmark's x plus its mirror partner's x in the horizontally flipped photo is W + 0.23 ± 0.14 px
over 352 AFLW2000-3D faces (|yaw| < 30°); pixel-centre coordinates would give W - 1.
``_to_corner`` is the one place where the convention changes.

Fallback pass (ours, not the reference's).  The reference cascade misses faces that are strongly
rolled (> ~35 deg), in near profile, or so large that the frame cuts them (AFLW2000-3D dev: 17 of
500).  Only for the images where the first pass finds nothing, ``MTCNNConfig.fallback`` runs the
cascade once more, on all *views* of those images in one batch: each view is the photo turned by
an angle (0 included) and placed on a black canvas with a border (P-Net's windows cannot reach past
the image edge; the border lets a face cut by the frame sit inside a window, as the crops of the
later stages are padded black anyway), with somewhat lower thresholds.  Boxes and points are mapped
back to the photo, the views' faces merged by NMS.  A photo where the first pass finds a face costs
exactly what it did; the result then equals the reference's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deep3dface.detect.mtcnn_nets import ONet, PNet, RNet, pretrained_nets
from deep3dface.detect.nms import batched_nms
from deep3dface.detect.resample import SummedAreaTables
from deep3dface.detect.types import Detection

_STRIDE, _CELL = 2, 12  # P-Net sees a 12x12 window every 2 pixels


@dataclass(frozen=True)
class FallbackConfig:
    """The views of the second pass (see the module docstring).  Measured on the AFLW2000-3D dev
    photos (benchmarks/detect_accuracy.py): each of border, rotations and lower thresholds recovers
    faces the others do not."""

    #: view angles in degrees (a view turned by a shows a face rolled by -a upright); MTCNN
    #: tolerates about +-35 deg of roll, so steps of 30 give every roll up to 105 deg a view where
    #: the face is within 15 deg of upright, and neighbouring views that confirm it
    angles: tuple[float, ...] = (0.0, -30.0, 30.0, -60.0, 60.0, -90.0, 90.0)
    border: float = 0.25                 # black border on each side, fraction of the longer side
    thresholds: tuple[float, float, float] = (0.5, 0.6, 0.6)  # P-, R-, O-Net
    nms: float = 0.3                     # IoU: faces of different views that are one face
    roll_tolerance: float = 25.0         # degrees: two views' faces agree on the face's roll


@dataclass(frozen=True)
class MTCNNConfig:
    """Cascade settings; the defaults are the reference's, plus the fallback pass."""

    min_face_size: float = 20.0          # smallest face (pixels) the pyramid looks for
    scale_factor: float = 0.709          # ratio between pyramid levels
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # face probability for P-, R-, O-Net
    nms_pnet_level: float = 0.5          # IoU, within one pyramid level
    nms_pnet: float = 0.7                # IoU, across levels
    nms_rnet: float = 0.7                # IoU
    nms_onet: float = 0.7                # intersection over the smaller box
    max_faces: int | None = None         # keep the best-scoring faces per image
    #: second pass on the images where the first finds nothing (None: the reference, no second pass)
    fallback: FallbackConfig | None = FallbackConfig()


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which a 12-pixel P-Net window sees faces of min_face_size and larger."""
    m = 12.0 / min_face_size
    scales, minl = [], min(height, width) * m
    while minl >= 12:
        scales.append(m * factor ** len(scales))
        minl *= factor
    return scales


#: MTCNN's input normalisation, (v - 127.5) / 128 for v in 0..255, as gain and bias on [0, 1] pixels
_NORMALISE = (255.0 / 128.0, -127.5 / 128.0)


def _rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Square boxes about their centres, side = the longer side (reference ``rerec``)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + (w - side) * 0.5
    y1 = boxes[:, 1] + (h - side) * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply regression offsets, in units of the inclusive box size (reference ``bbreg``)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def _crop_region(boxes: torch.Tensor) -> torch.Tensor:
    """Integer reference boxes -> the corner-convention region they cover."""
    return boxes - torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=boxes.dtype, device=boxes.device)


def _to_corner(boxes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference output -> corner convention: boxes cover [x1 - 1, x2]; landmarks are already corner."""
    return _crop_region(boxes), points


@dataclass(frozen=True)
class _Candidates:
    """Boxes in flight through the cascade (reference coordinates), one row per box."""

    boxes: torch.Tensor   # (N, 4) float64 x1, y1, x2, y2
    scores: torch.Tensor  # (N,)
    image: torch.Tensor   # (N,) int64 image index

    def __getitem__(self, keep: torch.Tensor) -> "_Candidates":
        return _Candidates(self.boxes[keep], self.scores[keep], self.image[keep])


class MTCNN(nn.Module):
    """Multi-task cascaded face detector: images in, faces with 5 landmarks out.

    ``MTCNN.pretrained()`` loads the ``mtcnn`` package's weights.  Calling the module on a list of
    (3, H, W) images (sizes may differ) or a (B, 3, H, W) tensor, RGB float in [0, 1], returns one
    list of ``Detection`` per image, best score first.  Runs on the module's device.
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, config: MTCNNConfig = MTCNNConfig()) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.config = config

    @classmethod
    def pretrained(cls, config: MTCNNConfig = MTCNNConfig()) -> "MTCNN":
        return cls(*pretrained_nets(), config=config)

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    @torch.inference_mode()
    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> list[list[Detection]]:
        images = [im.to(self.device, torch.float32) for im in images]
        for im in images:
            if im.ndim != 3 or im.shape[0] != 3:
                raise ValueError(f"MTCNN expects RGB images (3, H, W), got {tuple(im.shape)}")
        found = self._cascade(images, self.config.thresholds)
        missing = [i for i, faces in enumerate(found) if not faces]
        if missing and self.config.fallback is not None:
            for i, faces in zip(missing, self._fallback([images[i] for i in missing], self.config.fallback)):
                found[i] = faces
        return found

    def _cascade(self, images: list[torch.Tensor], thresholds: tuple[float, float, float]) -> list[list[Detection]]:
        """The reference cascade on (3, H, W) images with the given thresholds."""
        if not images:
            return []
        tables = SummedAreaTables.from_images(images)
        cand = self._stage_one(tables, thresholds[0])
        cand = self._stage_two(tables, cand, thresholds[1])
        cand, points = self._stage_three(tables, cand, thresholds[2])
        return self._detections(cand, points, len(images))

    def _fallback(self, images: list[torch.Tensor], cfg: FallbackConfig) -> list[list[Detection]]:
        """The second pass: all views of all images in one batch, faces mapped back and merged."""
        views, to_photo, owner = [], [], []
        for i, image in enumerate(images):
            for angle in cfg.angles:
                view, matrix = rotated_view(image, angle, cfg.border)
                views.append(view)
                to_photo.append(matrix)
                owner.append(i)
        boxes, scores, points, image_index, view_index, upright = [], [], [], [], [], []
        for v, (faces, matrix, i) in enumerate(zip(self._cascade(views, cfg.thresholds), to_photo, owner)):
            for d in faces:
                view_index.append(v)
                eyes = d.landmarks5[1] - d.landmarks5[0]
                upright.append(float(eyes[0] / torch.linalg.vector_norm(eyes)) ** 2)  # cos² of roll in view
                box, pts = map_detection(d.box.double(), d.landmarks5.double(), matrix)
                boxes.append(box)
                points.append(pts)
                scores.append(d.score)
                image_index.append(i)
        out: list[list[Detection]] = [[] for _ in images]
        if not boxes:
            return out
        boxes, points = torch.stack(boxes), torch.stack(points)
        scores, image_index = torch.tensor(scores, dtype=torch.float64), torch.tensor(image_index)
        votes = view_votes(boxes, points, scores, torch.tensor(view_index), torch.tensor(upright, dtype=torch.float64),
                           cfg.nms, cfg.roll_tolerance)
        for k in batched_nms(boxes, votes, image_index, cfg.nms).tolist():  # most votes first
            faces = out[int(image_index[k])]
            if self.config.max_faces is None or len(faces) < self.config.max_faces:
                faces.append(Detection(box=boxes[k].float(), score=float(scores[k]), landmarks5=points[k].float()))
        return out

    def detect(self, image: torch.Tensor) -> list[Detection]:
        """Faces in one (3, H, W) image, best first."""
        return self([image])[0]

    # -- stage 1: P-Net on the pyramid ------------------------------------------------------------
    def _stage_one(self, tables: SummedAreaTables, threshold: float) -> _Candidates:
        cfg = self.config
        maps = []  # per pyramid level: (box offsets (4, h, w), face probability (h, w), scale, image)
        for b, (H, W) in enumerate(zip(tables.heights.tolist(), tables.widths.tolist())):
            for scale in pyramid_scales(H, W, cfg.min_face_size, cfg.scale_factor):
                level = tables.resize(b, (math.ceil(H * scale), math.ceil(W * scale)), *_NORMALISE)
                reg, prob = self.pnet(level[None])
                maps.append((reg[0], prob[0, 1], scale, b))
        cand, level, offsets = self._pnet_windows(maps, threshold)
        keep = batched_nms(cand.boxes, cand.scores, level, cfg.nms_pnet_level)     # within each level
        cand, offsets = cand[keep], offsets[keep]
        keep = batched_nms(cand.boxes, cand.scores, cand.image, cfg.nms_pnet)      # across levels
        cand, offsets = cand[keep], offsets[keep]
        # the reference regresses P-Net boxes with the exclusive size x2 - x1 (unlike bbreg)
        size = (cand.boxes[:, 2:] - cand.boxes[:, :2]).repeat(1, 2)
        return _Candidates(_rerec(cand.boxes + offsets * size), cand.scores, cand.image)

    def _pnet_windows(self, maps, threshold: float) -> tuple[_Candidates, torch.Tensor, torch.Tensor]:
        """The windows of all levels whose face probability passes, as reference boxes, with their
        level and box offsets; one pass over all levels' maps rather than a few ops per level."""
        dev = self.device
        if not maps:  # every image smaller than the smallest face
            empty = torch.zeros(0, 4, dtype=torch.float64, device=dev)
            return _Candidates(empty, empty[:, 0].float(), empty[:, 0].long()), empty[:, 0].long(), empty
        widths = torch.tensor([p.shape[1] for _, p, _, _ in maps], device=dev)
        sizes = torch.tensor([p.numel() for _, p, _, _ in maps], device=dev)
        scales = torch.tensor([s for _, _, s, _ in maps], dtype=torch.float64, device=dev)
        images = torch.tensor([b for _, _, _, b in maps], device=dev)
        probs = torch.cat([p.reshape(-1) for _, p, _, _ in maps])
        regs = torch.cat([r.reshape(4, -1) for r, _, _, _ in maps], dim=1)
        index = torch.nonzero(probs >= threshold).squeeze(1)
        level = torch.searchsorted(torch.cumsum(sizes, 0), index, right=True)
        local = index - (torch.cumsum(sizes, 0) - sizes)[level]
        start = torch.stack([local % widths[level], local // widths[level]], dim=1).to(torch.float64) * _STRIDE
        scale = scales[level][:, None]
        boxes = torch.cat([torch.trunc((start + 1) / scale), torch.trunc((start + _CELL) / scale)], dim=1)
        return _Candidates(boxes, probs[index], images[level]), level, regs[:, index].T.to(torch.float64)

    # -- stage 2: R-Net on 24x24 crops ------------------------------------------------------------
    def _stage_two(self, tables: SummedAreaTables, cand: _Candidates, threshold: float) -> _Candidates:
        if cand.boxes.shape[0] == 0:
            return cand
        boxes = torch.trunc(cand.boxes)
        reg, prob = self.rnet(tables.crops(cand.image, _crop_region(boxes), 24, *_NORMALISE))
        score = prob[:, 1]
        ok = score > threshold
        cand = _Candidates(boxes[ok], score[ok], cand.image[ok])
        reg = reg[ok].to(torch.float64)
        keep = batched_nms(cand.boxes, cand.scores, cand.image, self.config.nms_rnet)
        cand = cand[keep]
        return _Candidates(_rerec(_bbreg(cand.boxes, reg[keep])), cand.scores, cand.image)

    # -- stage 3: O-Net on 48x48 crops, landmarks -------------------------------------------------
    def _stage_three(self, tables: SummedAreaTables, cand: _Candidates,
                     threshold: float) -> tuple[_Candidates, torch.Tensor]:
        if cand.boxes.shape[0] == 0:
            return cand, torch.zeros(0, 5, 2, dtype=torch.float64, device=cand.boxes.device)
        boxes = torch.trunc(cand.boxes)
        reg, lm, prob = self.onet(tables.crops(cand.image, _crop_region(boxes), 48, *_NORMALISE))
        score = prob[:, 1]
        ok = score > threshold
        boxes, reg, lm = boxes[ok], reg[ok].to(torch.float64), lm[ok].to(torch.float64)
        cand = _Candidates(boxes, score[ok], cand.image[ok])
        size = boxes[:, 2:] - boxes[:, :2] + 1                      # (N, 2) inclusive w, h
        points = lm.view(-1, 2, 5).transpose(1, 2) * size[:, None, :] + boxes[:, None, :2] - 1
        cand = _Candidates(_bbreg(boxes, reg), cand.scores, cand.image)
        keep = batched_nms(cand.boxes, cand.scores, cand.image, self.config.nms_onet, overlap="min")
        return cand[keep], points[keep]

    def _detections(self, cand: _Candidates, points: torch.Tensor, n_images: int) -> list[list[Detection]]:
        boxes, points = _to_corner(cand.boxes, points)
        boxes, points = boxes.float().cpu(), points.float().cpu()
        scores, image = cand.scores.float().cpu(), cand.image.cpu()
        out: list[list[Detection]] = [[] for _ in range(n_images)]
        for i in torch.argsort(scores, descending=True, stable=True).tolist():
            faces = out[int(image[i])]
            if self.config.max_faces is None or len(faces) < self.config.max_faces:
                faces.append(Detection(box=boxes[i], score=float(scores[i]), landmarks5=points[i]))
        return out


# -- fallback views -------------------------------------------------------------------------------
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
    from deep3dface.detect.nms import pairwise_overlap

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


def prominent_first(faces: list[Detection], width: int, height: int) -> list[Detection]:
    """Faces ordered by prominence, ``area - 2 · |box centre - image centre|²`` (insightface's
    choice of the main face), instead of by score.  For a pipeline that reconstructs one face per
    photo: on the AFLW2000-3D dev photos it picks the annotated face in 3 of the 6 photos where the
    best-scoring face is another one (a small sharp face in the background), and loses none."""
    def prominence(face: Detection) -> float:
        x0, y0, x1, y1 = (float(v) for v in face.box)
        offset = ((x0 + x1) / 2 - width / 2) ** 2 + ((y0 + y1) / 2 - height / 2) ** 2
        return (x1 - x0) * (y1 - y0) - 2.0 * offset

    return sorted(faces, key=prominence, reverse=True)
