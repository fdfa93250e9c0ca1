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

Fallback pass (ours, not the reference's): only for the images where the first pass finds nothing,
``MTCNNConfig.fallback`` runs the cascade again on turned, bordered views, with lower thresholds, for
faces within a plausible range of sizes for the photo's subject (mtcnn_fallback.py).  A photo where the first pass finds a face costs
exactly what it did; its faces then equal the reference's (up to their order).

Order of the faces (ours): most prominent first by default (``MTCNNConfig.rank_by``, see
``prominent_first``), not best score first as the reference: the score saturates near 1 for any
clear face, so among clear faces it cannot tell the photo's subject from a bystander.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from deep3dface.detect.mtcnn_fallback import NORMALISE as _NORMALISE
from deep3dface.detect.mtcnn_fallback import (FallbackConfig, merge_views, owned, reduction, scaled, seeks_any_face,
                                              segment_views, shrink, within_size)
from deep3dface.detect.mtcnn_nets import ONet, PNet, RNet, pretrained_nets
from deep3dface.detect.nms import batched_nms
from deep3dface.detect.resample import SummedAreaTables
from deep3dface.detect.types import Detection

_STRIDE, _CELL = 2, 12  # P-Net sees a 12x12 window every 2 pixels


@dataclass(frozen=True)
class MTCNNConfig:
    """Cascade settings; the defaults are the reference's, plus the fallback pass and the order."""

    min_face_size: float = 20.0          # smallest face (pixels) the pyramid looks for
    scale_factor: float = 0.709          # ratio between pyramid levels
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # face probability for P-, R-, O-Net
    nms_pnet_level: float = 0.5          # IoU, within one pyramid level
    nms_pnet: float = 0.7                # IoU, across levels
    nms_rnet: float = 0.7                # IoU
    nms_onet: float = 0.7                # intersection over the smaller box
    max_faces: int | None = None         # keep the first faces per image, in the order of rank_by
    #: second pass on the images where the first finds nothing (None: the reference, no second pass)
    fallback: FallbackConfig | None = FallbackConfig()
    #: "prominence": largest, most central face first (``prominent_first``); "score": the reference
    rank_by: str = "prominence"

    def __post_init__(self) -> None:
        if self.rank_by not in RANKINGS:
            raise ValueError(f"rank_by must be one of {RANKINGS}, got {self.rank_by!r}")


RANKINGS = ("prominence", "score")


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which a 12-pixel P-Net window sees faces of min_face_size and larger."""
    m = 12.0 / min_face_size
    scales, minl = [], min(height, width) * m
    while minl >= 12:
        scales.append(m * factor ** len(scales))
        minl *= factor
    return scales


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
        if self.config.rank_by == "prominence":
            found = [prominent_first(faces, im.shape[-1], im.shape[-2]) for faces, im in zip(found, images)]
        if self.config.max_faces is not None:
            found = [faces[:self.config.max_faces] for faces in found]
        return found

    def _cascade(self, images: list[torch.Tensor], thresholds: tuple[float, float, float],
                 min_face_sizes: list[float] | None = None) -> list[list[Detection]]:
        """The reference cascade on (3, H, W) images with the given thresholds, all faces by score;
        ``min_face_sizes`` per image (default: the config's)."""
        if not images:
            return []
        if min_face_sizes is None:
            min_face_sizes = [self.config.min_face_size] * len(images)
        tables = SummedAreaTables.from_images(images)
        cand = self._stage_one(tables, thresholds[0], min_face_sizes)
        cand = self._stage_two(tables, cand, thresholds[1])
        cand, points = self._stage_three(tables, cand, thresholds[2])
        return self._detections(cand, points, len(images))

    def _fallback(self, images: list[torch.Tensor], cfg: FallbackConfig) -> list[list[Detection]]:
        """The second pass (mtcnn_fallback.py): all views of all images in one batch, looking for
        faces of ``min_face_fraction`` to ``max_face_fraction`` of each photo's shorter side; faces
        mapped back and merged.  An image where no face sought could be kept gets no views; a long,
        narrow one gets the views of each of its segments (``segment_views``).  A photo where the
        smallest face sought is larger than needed is shrunk first (``reduction``): views, faces and
        merging are in the shrunk photo's pixels, the faces scaled back at the end."""
        views, to_photo, owner, min_sizes, view_ids, ownership = [], [], [], [], [], []
        factors = [1] * len(images)
        for i, image in enumerate(images):
            if not seeks_any_face(image, self.config.min_face_size, cfg):
                continue
            min_size = max(self.config.min_face_size, cfg.min_face_fraction * min(image.shape[-2:]))
            factors[i] = reduction(min_size, cfg)
            small = shrink(image, factors[i])
            along_x = small.shape[-1] >= small.shape[-2]
            for view, matrix, segment, angle_index in segment_views(small, cfg):
                views.append(view)
                to_photo.append(matrix)
                owner.append(i)
                min_sizes.append(min_size / factors[i])
                view_ids.append(i * len(cfg.angles) + angle_index)  # a segment's view is its angle's view
                ownership.append((segment, along_x))
        found = [owned(faces, matrix, *own) for faces, matrix, own in
                 zip(self._cascade(views, cfg.thresholds, min_sizes), to_photo, ownership)]
        merged = merge_views(found, to_photo, owner, len(images), cfg, view_ids)
        return [within_size(scaled(faces, factor), image, cfg) for faces, image, factor in zip(merged, images, factors)]

    def detect(self, image: torch.Tensor) -> list[Detection]:
        """Faces in one (3, H, W) image, best first."""
        return self([image])[0]

    # -- stage 1: P-Net on the pyramid ------------------------------------------------------------
    def _stage_one(self, tables: SummedAreaTables, threshold: float, min_face_sizes: list[float]) -> _Candidates:
        cfg = self.config
        maps = []  # per pyramid level: (box offsets (4, h, w), face probability (h, w), scale, image)
        for b, (H, W) in enumerate(zip(tables.heights.tolist(), tables.widths.tolist())):
            # a larger smallest face drops the finest levels; the others stay the reference's
            for scale in pyramid_scales(H, W, cfg.min_face_size, cfg.scale_factor):
                if scale * min_face_sizes[b] > _CELL * (1 + 1e-9):
                    continue
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
            out[int(image[i])].append(Detection(box=boxes[i], score=float(scores[i]), landmarks5=points[i]))
        return out


# -- order of the faces ------------------------------------------------------------------------
#: a face smaller than this fraction of the photo's largest face is never ranked before a larger one
MINOR_FACE = 0.25


def prominent_first(faces: list[Detection], width: int, height: int) -> list[Detection]:
    """Faces ordered by prominence, ``area - 2 · |box centre - image centre|²`` (insightface's
    choice of the main face), instead of by score; the detector's default order.  On the AFLW2000-3D
    dev photos it picks the annotated face in 3 of the 4 photos where the first pass's best-scoring
    face is another one (a bystander's, scored 1.0 like the subject's; the fourth annotates a head
    seen from behind), and loses none.  A face less than ``MINOR_FACE`` of the largest face's size
    (square root of the box area) comes after all larger ones whatever its place: the centre term
    alone let a 20-pixel false detection on a tie outrank a 600-pixel face high in a portrait."""
    if not faces:
        return []

    def size(face: Detection) -> float:
        x0, y0, x1, y1 = (float(v) for v in face.box)
        return math.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))

    def prominence(face: Detection) -> float:
        x0, y0, x1, y1 = (float(v) for v in face.box)
        offset = ((x0 + x1) / 2 - width / 2) ** 2 + ((y0 + y1) / 2 - height / 2) ** 2
        return (x1 - x0) * (y1 - y0) - 2.0 * offset

    largest = max(size(face) for face in faces)
    return sorted(faces, key=lambda face: (size(face) >= MINOR_FACE * largest, prominence(face)), reverse=True)
